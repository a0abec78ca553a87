"""Which Trainer strategies the callback runs under, checked before any work is done.

Pruning reads and writes whole parameter tensors on every rank: one device, or DDP (also spawned, as in
notebooks). Sharded strategies hold parameters as shards or flattened views (FSDP, DeepSpeed, model
parallelism), where that fails deep inside; XLA is untested.
"""

from __future__ import annotations

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy, Strategy
from lightning.pytorch.strategies import SingleDeviceXLAStrategy, XLAStrategy

SUPPORTED = "a single device, or DDP (strategy='ddp', 'ddp_spawn', 'ddp_notebook', 'ddp_find_unused_parameters_true')"


def check_strategy(strategy: Strategy) -> None:
    """Raise if ``strategy`` is one the callback cannot prune under, naming it and what is supported."""
    supported = isinstance(strategy, (SingleDeviceStrategy, DDPStrategy)) and not isinstance(
        strategy, (DeepSpeedStrategy, XLAStrategy, SingleDeviceXLAStrategy)
    )
    if not supported:
        raise ValueError(f"PruneAtInit does not support strategy {type(strategy).__name__}: it runs on {SUPPORTED}")
