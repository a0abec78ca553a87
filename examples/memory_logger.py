"""A Lightning logger that keeps metrics in memory, for scripts that read them back (demo, sweep)."""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch.loggers import Logger


class MemoryLogger(Logger):
    """Keeps the last value of every logged metric (the pruning time among them) in a dict."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[str, float] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        self.metrics.update({k: float(v) for k, v in metrics.items()})

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass
