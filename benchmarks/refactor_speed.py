"""SynFlow and SNIP ``compute_masks`` time for two checkouts of this repository, in one run (issue 25: the
redesign must be no slower).

    python benchmarks/refactor_speed.py --before /path/to/old --after /path/to/new [--repeat 3] [--quick]

Each measurement is a fresh process with ``PYTHONPATH`` set to the checkout (its ``lightning_synflow/`` is
checked to be the one imported), started cold: no ``MALLOC_*`` allocator tuning is passed on; thread count
from ``OMP_NUM_THREADS`` (set it). Processes alternate before/after, ``--repeat`` times each, so drift of the
machine hits both alike. In each process:

- **SynFlow**: ``compute_masks(model, "synflow", sparsity=0.99, iterations=100)`` with an all-ones
  ``1x3x32x32`` example input;
- **SNIP**: ``compute_masks(model, "snip", sparsity=0.99)`` on one batch of 256 random ``3x32x32`` inputs
  with labels of 10 classes;

on ``vgg16_bn`` (10 classes) from ``lightning_synflow.models``, seeded, fresh for each call. ``first`` is the
first call of the process (library code and kernels loaded on the way); ``steady`` is a second call in the
same process on a fresh model (``--no-steady`` skips it). The table gives the median and min over the
processes; ``masks`` says whether every process of both checkouts produced the same masks (digest).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

SCORERS = ("synflow", "snip")


def _child(scorer: str, rounds: int, steady: bool) -> dict:
    import torch

    import lightning_synflow
    from lightning_synflow import compute_masks
    from lightning_synflow.models import get_model

    def once(seed: int) -> tuple[float, str]:
        torch.manual_seed(seed)
        model = get_model("vgg16_bn", num_classes=10)
        if scorer == "synflow":
            kwargs = {"iterations": rounds, "example_input": torch.ones(1, 3, 32, 32)}
        else:
            batch = (torch.randn(256, 3, 32, 32), torch.randint(0, 10, (256,)))
            kwargs = {"dataloader": [batch]}
        start = time.perf_counter()
        masks = compute_masks(model, scorer, sparsity=0.99, **kwargs)
        seconds = time.perf_counter() - start
        digest = hashlib.sha256()
        for name in sorted(masks):
            digest.update(name.encode())
            digest.update(masks[name].to(torch.uint8).contiguous().numpy().tobytes())
        return seconds, digest.hexdigest()[:16]

    first, digest = once(0)
    result = {"first": first, "digest": digest, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "package": str(Path(lightning_synflow.__file__).resolve().parent)}
    if steady:
        result["steady"], _ = once(0)
    return result


def _run(checkout: Path, scorer: str, rounds: int, steady: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["PYTHONPATH"] = str(checkout)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", scorer, "--rounds", str(rounds)]
    proc = subprocess.run(command + ([] if steady else ["--no-steady"]), env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{scorer} in {checkout} failed:\n{proc.stderr}")
    result = json.loads(proc.stdout.splitlines()[-1])
    if Path(result["package"]) != (checkout / "lightning_synflow").resolve():
        raise SystemExit(f"{checkout}: the child imported {result['package']}, not the checkout's package")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, help="checkout before the change (holds lightning_synflow/)")
    parser.add_argument("--after", type=Path, help="checkout after the change (holds lightning_synflow/)")
    parser.add_argument("--repeat", type=int, default=3, help="processes per scorer and checkout (default 3)")
    parser.add_argument("--rounds", type=int, default=100, help="SynFlow rounds (default 100)")
    parser.add_argument("--scorers", nargs="+", choices=SCORERS, default=list(SCORERS))
    parser.add_argument("--no-steady", dest="steady", action="store_false", help="time the first call only")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 process each, 5 SynFlow rounds")
    parser.add_argument("--child", choices=SCORERS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.rounds, args.steady)))
        return 0
    for name in ("before", "after"):
        path = getattr(args, name)
        if path is None or not (path / "lightning_synflow" / "__init__.py").is_file():
            parser.error(f"--{name} must be a checkout holding lightning_synflow/, got {path}")
    if args.repeat < 1:
        parser.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.quick:
        args.repeat, args.rounds = 1, 5

    versions = {"before": args.before.resolve(), "after": args.after.resolve()}
    results: dict[tuple[str, str], list[dict]] = {}
    for scorer in args.scorers:
        for _ in range(args.repeat):
            for version, checkout in versions.items():
                results.setdefault((scorer, version), []).append(_run(checkout, scorer, args.rounds, args.steady))

    some = next(iter(results.values()))[0]
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"torch {some['torch']}, {some['threads']} CPU threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}),"
          f" {platform.processor() or platform.machine()}, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for version, checkout in versions.items():
        print(f"{version}: {checkout}")
    print(f"vgg16_bn, sparsity 0.99; SynFlow {args.rounds} rounds on 1x3x32x32 ones; SNIP 1 batch of 256; "
          f"{args.repeat} fresh processes each, alternating before/after; seconds per compute_masks call\n")
    print("| scorer | version | first median | first min | steady median | steady min | masks |")
    print("|---|---|---|---|---|---|---|")
    for scorer in args.scorers:
        digests = {r["digest"] for v in versions for r in results[(scorer, v)]}
        for version in versions:
            rows = results[(scorer, version)]
            cells = [f"{f(r['first'] for r in rows):.3f}" for f in (statistics.median, min)]
            cells += [f"{f(r['steady'] for r in rows):.3f}" if args.steady else "-" for f in (statistics.median, min)]
            same = "same in all" if len(digests) == 1 else "DIFFER"
            print(f"| {scorer} | {version} | {' | '.join(cells)} | {same} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
