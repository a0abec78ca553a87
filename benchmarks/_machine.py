"""What every benchmark reports about where it ran, and how it reads a call's own peak memory (Linux)."""

from __future__ import annotations

import os
import platform
import resource
from typing import Optional


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def status_kb(field: str) -> Optional[int]:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``), or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) to the current RSS (Linux >= 4.0); False if unavailable."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_kb() -> int:
    rss = status_kb("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class PeakMemory:
    """Peak RSS growth of a block: ``with PeakMemory() as mem: ...; mem.mb``. Uses VmHWM reset at entry
    (the block's own high-water mark); elsewhere the lifetime ``ru_maxrss`` (``method`` says which)."""

    def __enter__(self) -> "PeakMemory":
        self.before_kb = rss_kb()
        self.method = "VmHWM reset before the call" if reset_peak() else "lifetime ru_maxrss"
        return self

    def __exit__(self, *exc: object) -> None:
        peak = status_kb("VmHWM") if self.method.startswith("VmHWM") else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mb = max(0, peak - self.before_kb) / 1024
