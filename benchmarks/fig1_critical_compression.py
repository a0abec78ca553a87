"""Reproduce the SynFlow paper's Fig. 1 critical compressions: VGG-16-bn with a CIFAR-100 head, at init.

Paper (Tanaka et al. 2020, mean of 3 seeds, grid step 0.25 in log10): random 10^3.33, magnitude 10^2.75,
SNIP 10^3.58, GraSP 10^3.58, SynFlow 10^5.92; maximum possible 10^6.02.

Scorers: the data-free ones (synflow with 100 iterations, magnitude, random; one-shot for the last two,
as in the paper) and every registered data-driven scorer among ``snip``, ``grasp`` when the package has
them. CIFAR-100 is not available offline, so data-driven scorers get an OFFLINE STAND-IN for data:
standard Gaussian images and uniformly random labels (``--data-batches`` x ``--batch-size``). Their
numbers are therefore not the paper's SNIP/GraSP setting; say so wherever they are quoted.

Each (scorer, seed) run is appended to ``<out>/fig1_runs.json`` as soon as it finishes, so runs can be
split over several invocations (e.g. the cheap scorers first, SynFlow seeds one at a time). The table
(``fig1_summary.csv``, ``fig1_table.md``), the long-format per-tensor densities (``fig1_densities.csv``)
and the figures (``fig1_critical_compression.png``, ``fig1_sweep_<scorer>.png``) are rebuilt from that file after every run;
``--plot-only`` only rebuilds them.

    OMP_NUM_THREADS=1 python benchmarks/fig1_critical_compression.py --scorers magnitude random --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/fig1_critical_compression.py --scorers synflow --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import torch

from lightning_synflow import available_scorers
from lightning_synflow.analysis.critical import CriticalCompressionResult, CriticalRun, critical_compression, default_grid
from lightning_synflow.models import vgg16_bn

PAPER = {"random": 3.33, "magnitude": 2.75, "snip": 3.58, "grasp": 3.58, "synflow": 5.92}
PAPER_MAX = 6.02
DATA_FREE = ("synflow", "magnitude", "random")
DATA_DRIVEN = ("snip", "grasp")
NUM_CLASSES = 100


def gaussian_batches(batches: int, batch_size: int, seed: int):
    """Offline stand-in for CIFAR-100 batches: N(0, 1) images, uniform random labels."""
    g = torch.Generator().manual_seed(10_000 + seed)
    return [
        (torch.randn(batch_size, 3, 32, 32, generator=g), torch.randint(0, NUM_CLASSES, (batch_size,), generator=g))
        for _ in range(batches)
    ]


def load_runs(path: Path) -> list[CriticalRun]:
    if not path.exists():
        return []
    return [CriticalRun.from_dict(d) for d in json.loads(path.read_text())]


def save_run(path: Path, run: CriticalRun, meta: dict) -> None:
    """Replace the (scorer, seed) entry of the JSON file, keeping the others (with their metadata) as they are."""
    raw = json.loads(path.read_text()) if path.exists() else []
    data = [d for d in raw if not (d["scorer"] == run.scorer and d.get("seed") == run.seed)]
    data.append({**run.to_dict(), **meta})
    path.write_text(json.dumps(data, indent=1))


def rebuild(out: Path) -> None:
    runs = load_runs(out / "fig1_runs.json")
    if not runs:
        return
    by: dict[str, list[CriticalRun]] = {}
    for r in runs:
        by.setdefault(r.scorer, []).append(r)
    grid = tuple(default_grid(runs[0].max_log10))
    raw = json.loads((out / "fig1_runs.json").read_text())
    searches: dict[str, set] = {}
    for d in raw:
        searches.setdefault(d["scorer"], set()).add(d.get("search", "bisect"))
    results = {
        k: CriticalCompressionResult(k, tuple(sorted(v, key=lambda r: r.seed)), grid, "+".join(sorted(searches[k])))
        for k, v in by.items()
    }
    order = [s for s in ("random", "magnitude", "snip", "grasp", "synflow") if s in results] + [
        s for s in results if s not in PAPER
    ]
    with open(out / "fig1_summary.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scorer", "seeds", "search", "critical_log10_per_seed", "critical_log10_mean", "exact_log10_mean",
                    "paper_log10", "max_log10", "seconds"])
        for k in order:
            r = results[k]
            w.writerow([k, " ".join(str(x.seed) for x in r.runs), r.search, " ".join(f"{x:.2f}" for x in r.log10_per_run),
                        f"{r.log10:.3f}", "" if r.exact_log10 is None else f"{r.exact_log10:.3f}", PAPER.get(k, ""),
                        f"{r.max_log10:.3f}", f"{r.seconds:.0f}"])
    with open(out / "fig1_densities.csv", "w", newline="") as f:
        rows = [row for k in order for row in results[k].rows()]
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [
        "| method | seeds | search | ours: critical x per seed | ours: mean | exact x (one-shot, off-grid) | paper | CPU time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k in order:
        r = results[k]
        note = " (stand-in data)" if k in DATA_DRIVEN else ""
        lines.append(
            f"| {k}{note} | {len(r.runs)} | {r.search} ({sum(len(x.points) for x in r.runs)} points) | "
            f"{', '.join(f'{x:.2f}' for x in r.log10_per_run)} | 10^{r.log10:.2f} | "
            + (f"{', '.join(f'{x.exact_log10:.3f}' for x in r.runs)} (mean {r.exact_log10:.2f})" if r.exact_log10 is not None else "-")
            + f" | {'10^%.2f' % PAPER[k] if k in PAPER else '-'} | {r.seconds:.0f} s |"
        )
    lines.append(f"| max possible (N / L) | | | | 10^{runs[0].max_log10:.2f} | | 10^{PAPER_MAX:.2f} | |")
    (out / "fig1_table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        from lightning_synflow.analysis.figures import plot_critical_compression, plot_sweep_densities, save_figure
    except ImportError as e:  # matplotlib missing
        print(f"no figure: {e}", file=sys.stderr)
        return
    stand_in = [k for k in order if k in DATA_DRIVEN]
    title = "VGG-16-bn, CIFAR-100 head, at init" + (
        f" ({', '.join(stand_in)}: Gaussian images + random labels as offline stand-in data)" if stand_in else ""
    )
    fig = plot_critical_compression([results[k] for k in order], reference=PAPER, title=title)
    save_figure(fig, out / "fig1_critical_compression.png")
    for k in order:  # per-layer densities along the sweep, first seed
        save_figure(plot_sweep_densities(results[k].runs[0]), out / f"fig1_sweep_{k}.png")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    registered = [s for s in DATA_DRIVEN if s in available_scorers()]
    ap.add_argument("--scorers", nargs="+", default=list(DATA_FREE) + registered)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--search", default="bisect", choices=["bisect", "grid", "full"])
    ap.add_argument("--step", type=float, default=0.25)
    ap.add_argument("--iterations", type=int, default=None, help="pruning rounds (default: the scorer's: 100 synflow, 1 others)")
    ap.add_argument("--data-batches", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path("docs/figures"))
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        rebuild(args.out)
        return
    unknown = [s for s in args.scorers if s not in available_scorers()]
    if unknown:
        ap.error(f"unknown scorers {unknown}; registered: {available_scorers()}")
    print(f"threads={torch.get_num_threads()} scorers={args.scorers} seeds={args.seeds} search={args.search}", flush=True)
    for seed in args.seeds:
        for name in args.scorers:
            data = None
            if name not in DATA_FREE:
                data = gaussian_batches(args.data_batches, args.batch_size, seed)
            t0 = time.perf_counter()
            res = critical_compression(
                lambda: vgg16_bn(num_classes=NUM_CLASSES),
                name,
                seeds=[seed],
                step=args.step,
                search=args.search,
                iterations=args.iterations,
                example_input=torch.zeros(1, 3, 32, 32),
                dataloader=data,
                log=lambda s: print(s, flush=True),
            )
            run = res.runs[0]
            meta = {"search": args.search, "iterations": args.iterations, "threads": torch.get_num_threads(),
                    "data": "gaussian+random labels (offline stand-in)" if data is not None else "none"}
            save_run(args.out / "fig1_runs.json", run, meta)
            print(f"{name} seed {seed}: critical 10^{run.log10:.2f} in {time.perf_counter() - t0:.0f} s", flush=True)
            try:
                rebuild(args.out)
            except Exception as e:  # never lose the remaining runs to a plotting problem
                print(f"rebuild failed: {e!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
