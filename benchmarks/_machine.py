"""What every benchmark reports about where it ran, how it reads a call's own peak memory (Linux), and how
it runs a measurement in a fresh process."""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import platform
import resource
import subprocess
from pathlib import Path
from typing import Any, Optional


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


def minor_faults() -> int:
    """Page faults this process has taken so far that needed no disk: fresh pages the kernel zeroed."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _malloc_tuning() -> list[str]:
    return [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_")]


def allocator_settings() -> str:
    """The glibc malloc tuning set in the environment (``MALLOC_*``), or "default allocator"."""
    return " ".join(_malloc_tuning()) or "default allocator"


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


def release_free_memory() -> bool:
    """Hand the C heap's free pages back to the kernel (glibc ``malloc_trim``), so that a measurement that
    follows starts from a heap holding only live data; False where there is no glibc, or where ``MALLOC_*``
    tuning is set: such a heap is left as tuned (trimming one tuned by ``MALLOC_TOP_PAD_`` made every later
    SynFlow round fault its pages in again)."""
    if _malloc_tuning():
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").malloc_trim(0))
    except (OSError, AttributeError):
        return False


class PeakMemory:
    """Peak RSS growth of a block: ``with PeakMemory() as mem: ...; mem.mb``. Uses VmHWM reset at entry
    (the block's own high-water mark); elsewhere the lifetime ``ru_maxrss`` (``method`` says which).
    ``code_mb`` is the growth of file-backed pages (mostly library code run for the first time), which
    counts in RSS but not in what the block allocates."""

    def __enter__(self) -> "PeakMemory":
        self.before_kb = rss_kb()
        self.file_kb = status_kb("RssFile")
        self.method = "VmHWM reset before the call" if reset_peak() else "lifetime ru_maxrss"
        return self

    def __exit__(self, *exc: object) -> None:
        peak = status_kb("VmHWM") if self.method.startswith("VmHWM") else None
        if peak is None:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        self.mb = max(0, peak - self.before_kb) / 1024
        file_kb = status_kb("RssFile")
        self.code_mb = None if file_kb is None or self.file_kb is None else (file_kb - self.file_kb) / 1024


def run_json_child(
    cmd: list[str], threads: int, timeout: Optional[float] = None, env: Optional[dict[str, str]] = None
) -> dict[str, Any]:
    """Run ``cmd`` (a benchmark re-invoking itself) with ``threads`` OpenMP/MKL threads (and ``env`` on top of
    this process's environment) and return the last JSON line it printed, or ``{"error": ...}`` with the reason
    (exit status and last stderr line, or the timeout)."""
    env = dict(os.environ, **(env or {}), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail}"}
    return json.loads(lines[-1])


def add_pruning_run_arguments(
    parser: argparse.ArgumentParser, models: list[str], methods: list[str], quick: str, **model_choices: Any
) -> None:
    """The options every SynFlow timing script shares: what to prune, how, how often, and where the rows go."""
    parser.add_argument("--models", nargs="+", default=models, **model_choices)
    parser.add_argument("--methods", nargs="+", default=methods, choices=methods)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument("--compression", type=float, default=100.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="fresh runs per row; the table shows medians (min-max)")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw rows to this file")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    parser.add_argument("--masks-out", default=None, help=argparse.SUPPRESS)


def check_pruning_run_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with a usage error naming the option and the value when a shared option is out of range."""
    for name in ("threads", "iterations", "repeat"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not (math.isfinite(args.compression) and args.compression >= 1):
        parser.error(f"--compression must be a finite number >= 1, got {args.compression}")


def report(table: str, rows: list[dict[str, Any]], json_path: Optional[Path]) -> int:
    """Print the table, write the raw rows if asked, and return the exit status: 1 if any row failed."""
    print(table)
    if json_path is not None:
        json_path.write_text(json.dumps(rows, indent=1))
    return 1 if any("error" in r for r in rows) else 0
