"""Critical compression: the largest compression 10^x at which a pruning method leaves no tensor empty.

A tensor left with zero weights ("layer collapse", Tanaka et al. 2020, Sec. 3) disconnects a network
without a skip connection around it. :func:`critical_compression` prunes a model at compressions
``10^x`` for ``x`` on a grid (the SynFlow paper's Fig. 1 uses steps of 0.25) and reports the largest
``x`` without a collapsed tensor, with the per-tensor densities at every ``x`` it evaluated.

Search strategies (``search=``):

* ``"full"``: every grid point (what a curve needs; the cost is one pruning run per point).
* ``"grid"``: ascending, stopping at the first collapse.
* ``"bisect"`` (default): bisection over the grid, ``ceil(log2(len(grid) + 1))`` pruning runs. It assumes
  collapse is monotone in ``x`` (once collapsed, collapsed at every larger ``x``). That holds exactly
  for one-shot global pruning (the masks are nested) and is what the paper's Fig. 1 reports for the
  iterative methods; where it fails, bisection returns *a* collapse boundary, not necessarily the
  largest one, so use ``"full"`` to check a surprising result.

One-shot scorers (``iterations == 1``: magnitude, random, SNIP, GraSP in the paper) are scored once per
run and only re-ranked at each ``x``: the same masks ``compute_masks(..., iterations=1)`` gives, at the
cost of one scoring pass for the whole sweep. For them (global scope) the exact off-grid exponent is also
reported (``exact_log10``, from the rank of each tensor's best weight; see :func:`exact_one_shot_log10`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from lightning_synflow.parameters import select_prunable
from lightning_synflow.pruning import compute_masks, compute_scores
from lightning_synflow.ranking import Scope, select_masks
from lightning_synflow.schedules import Schedule
from lightning_synflow.scorers.base import ExampleInput, Scorer, get_scorer

SEARCHES: tuple[str, ...] = ("bisect", "grid", "full")

#: The SynFlow paper's grid resolution for Fig. 1 (compression 10^0, 10^0.25, ...).
DEFAULT_STEP = 0.25

ModelOrFactory = Union[nn.Module, Callable[[], nn.Module]]


@dataclass(frozen=True)
class SweepPoint:
    """The masks' outcome at one compression ``10^log10``."""

    log10: float
    kept: dict[str, int]
    total: dict[str, int]
    seconds: float = 0.0

    @property
    def compression(self) -> float:
        return 10.0**self.log10

    @property
    def densities(self) -> dict[str, float]:
        """Per-tensor fraction kept."""
        return {n: self.kept[n] / self.total[n] for n in self.kept}

    ignore: tuple[str, ...] = ()

    @property
    def collapsed(self) -> list[str]:
        """Names of the tensors with no weight left (those matching ``ignore`` patterns excepted)."""
        return [n for n, k in self.kept.items() if k == 0 and not any(fnmatchcase(n, p) for p in self.ignore)]

    @property
    def is_collapsed(self) -> bool:
        return bool(self.collapsed)

    @property
    def min_kept(self) -> int:
        return min(self.kept.values())

    def to_dict(self) -> dict[str, Any]:
        return {"log10": self.log10, "kept": dict(self.kept), "total": dict(self.total), "seconds": self.seconds,
                "ignore": list(self.ignore)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SweepPoint":
        return cls(float(d["log10"]), dict(d["kept"]), dict(d["total"]), float(d.get("seconds", 0.0)),
                   tuple(d.get("ignore", ())))


@dataclass(frozen=True)
class CriticalRun:
    """One sweep: one model (one seed) and one scorer."""

    scorer: str
    seed: Optional[int]
    log10: float
    max_log10: float
    points: tuple[SweepPoint, ...]
    seconds: float = 0.0
    #: One-shot global pruning only: the exact (off-grid) critical exponent, the largest x whose
    #: ``round(N * 10^-x)`` kept weights still include one of every tensor. ``None`` otherwise.
    exact_log10: Optional[float] = None

    @property
    def compression(self) -> float:
        return 10.0**self.log10

    def point(self, log10: float) -> SweepPoint:
        """The evaluated point nearest ``log10``."""
        return min(self.points, key=lambda p: abs(p.log10 - log10))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :meth:`from_dict`)."""
        return {
            "scorer": self.scorer,
            "seed": self.seed,
            "log10": self.log10,
            "max_log10": self.max_log10,
            "seconds": self.seconds,
            "exact_log10": self.exact_log10,
            "points": [p.to_dict() for p in self.points],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CriticalRun":
        return cls(
            d["scorer"], d.get("seed"), float(d["log10"]), float(d["max_log10"]),
            tuple(SweepPoint.from_dict(p) for p in d["points"]), float(d.get("seconds", 0.0)),
            None if d.get("exact_log10") is None else float(d["exact_log10"]),
        )


@dataclass(frozen=True)
class CriticalCompressionResult:
    """Critical compression of one scorer over one or more runs (seeds).

    ``log10`` is the critical exponent x (mean over runs, as in the paper's Fig. 1); ``runs`` hold each
    seed's exponent and the per-tensor densities at every ``x`` evaluated.
    """

    scorer: str
    runs: tuple[CriticalRun, ...]
    grid: tuple[float, ...]
    search: str
    names: tuple[str, ...] = field(default=())

    @property
    def log10(self) -> float:
        """Critical exponent x: mean over runs of the largest evaluated x with no collapsed tensor."""
        return sum(r.log10 for r in self.runs) / len(self.runs)

    @property
    def log10_per_run(self) -> list[float]:
        return [r.log10 for r in self.runs]

    @property
    def exact_log10(self) -> Optional[float]:
        """Mean over runs of the exact off-grid exponent (one-shot global pruning only, else ``None``)."""
        vals = [r.exact_log10 for r in self.runs]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    @property
    def compression(self) -> float:
        return 10.0**self.log10

    @property
    def max_log10(self) -> float:
        """log10 of the maximum possible compression: N / (number of prunable tensors)."""
        return self.runs[0].max_log10

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.runs)

    def as_metrics(self, prefix: str = "critical_compression") -> dict[str, float]:
        out = {f"{prefix}/{self.scorer}/log10": self.log10, f"{prefix}/max_log10": self.max_log10}
        if self.exact_log10 is not None:
            out[f"{prefix}/{self.scorer}/exact_log10"] = self.exact_log10
        for i, r in enumerate(self.runs):
            out[f"{prefix}/{self.scorer}/log10_run{i if r.seed is None else r.seed}"] = r.log10
        return out

    def rows(self) -> list[dict[str, Any]]:
        """Long-format rows (scorer, seed, x, tensor, kept, total, density, collapsed) for a CSV."""
        rows = []
        for r in self.runs:
            for p in sorted(r.points, key=lambda p: p.log10):
                for n in p.kept:
                    rows.append(
                        {
                            "scorer": self.scorer,
                            "seed": "" if r.seed is None else r.seed,
                            "log10": round(p.log10, 6),
                            "tensor": n,
                            "kept": p.kept[n],
                            "total": p.total[n],
                            "density": p.kept[n] / p.total[n],
                            "point_collapsed": int(p.is_collapsed),
                            "critical_log10": r.log10,
                        }
                    )
        return rows

    def __str__(self) -> str:
        runs = ", ".join(f"{x:.2f}" for x in self.log10_per_run)
        return (
            f"{self.scorer}: critical compression 10^{self.log10:.2f} (runs: {runs}; "
            f"max possible 10^{self.max_log10:.2f}; search={self.search}, {self.seconds:.0f} s)"
        )


def default_grid(max_log10: float, step: float = DEFAULT_STEP) -> list[float]:
    """Multiples of ``step`` in ``(0, max_log10]`` (the paper's Fig. 1 grid for ``step=0.25``)."""
    n = int(math.floor(max_log10 / step + 1e-9))
    return [round(i * step, 10) for i in range(1, n + 1)]


def max_compression_log10(model: nn.Module, parameters: Optional[Sequence[str]] = None) -> float:
    """log10 of N / L: one weight left in each of the L prunable tensors."""
    names = select_prunable(model) if parameters is None else list(parameters)
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in names)
    return math.log10(total / len(names))


def exact_one_shot_log10(scores: Mapping[str, Tensor], ignore: Sequence[str] = ()) -> float:
    """Exact critical exponent of one-shot global pruning with these scores.

    Ranking all weights as :func:`~lightning_synflow.select_masks` does (descending score, ties to the
    earlier tensor and lower index), tensor ``l`` survives in the top ``k`` iff ``k >= r_l``, the rank of
    its best weight. With ``k* = max_l r_l`` (tensors matching ``ignore`` excluded), no tensor is empty iff
    ``round(N * 10^-x) >= k*``, i.e. ``x <= log10(N / (k* - 0.5))``.
    """
    names = list(scores)
    flat = torch.cat([scores[n].detach().reshape(-1).double() for n in names])
    order = torch.sort(flat, descending=True, stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, flat.numel() + 1, device=order.device)
    k_star, start = 1, 0
    for n in names:
        size = scores[n].numel()
        if size and not any(fnmatchcase(n, p) for p in ignore):
            k_star = max(k_star, int(ranks[start : start + size].min()))
        start += size
    return math.log10(flat.numel() / (k_star - 0.5))


def _search_order(n: int, search: str, evaluate: Callable[[int], bool]) -> int:
    """Index of the largest non-collapsed grid point (``-1`` if none) under ``search``.

    ``evaluate(i)`` prunes at grid point ``i`` and returns True if a tensor collapsed.
    """
    if search == "full":
        ok = [i for i in range(n) if not evaluate(i)]
        return max(ok) if ok else -1
    if search == "grid":
        best = -1
        for i in range(n):
            if evaluate(i):
                break
            best = i
        return best
    lo, hi = -1, n  # invariant: lo not collapsed (or virtual), hi collapsed (or virtual)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if evaluate(mid):
            hi = mid
        else:
            lo = mid
    return lo


def _one_run(
    model: nn.Module,
    scorer: Scorer,
    grid: Sequence[float],
    *,
    search: str,
    seed: Optional[int],
    iterations: Optional[int],
    schedule: Schedule,
    scope: Scope,
    example_input: Optional[ExampleInput],
    dataloader: Optional[Iterable[Any]],
    parameters: Optional[Sequence[str]],
    progress: bool,
    log: Optional[Callable[[str], None]],
    ignore: tuple[str, ...] = (),
) -> CriticalRun:
    start = time.perf_counter()
    names = select_prunable(model) if parameters is None else list(parameters)
    params = dict(model.named_parameters())
    totals = {n: params[n].numel() for n in names}
    max_log10 = math.log10(sum(totals.values()) / len(names))
    T = scorer.default_iterations if iterations is None else iterations
    one_shot_scores: Optional[dict[str, Tensor]] = None
    if T == 1:
        one_shot_scores = compute_scores(
            model, scorer, example_input=example_input, dataloader=dataloader, parameters=names
        )
        all_kept = {n: torch.ones_like(s, dtype=torch.bool) for n, s in one_shot_scores.items()}
    points: dict[int, SweepPoint] = {}

    def evaluate(i: int) -> bool:
        t0 = time.perf_counter()
        x = grid[i]
        if one_shot_scores is not None:
            masks = select_masks(one_shot_scores, 10.0**-x, scope=scope, candidates=all_kept if scorer.monotone else None)
        else:
            masks = compute_masks(
                model,
                scorer,
                compression=10.0**x,
                iterations=T,
                schedule=schedule,
                scope=scope,
                example_input=example_input,
                dataloader=dataloader,
                parameters=names,
                progress=progress,
            )
        p = SweepPoint(x, {n: int(m.sum()) for n, m in masks.items()}, dict(totals), time.perf_counter() - t0, ignore)
        points[i] = p
        if log is not None:
            state = f"COLLAPSED ({len(p.collapsed)} tensors)" if p.is_collapsed else f"ok (min kept {p.min_kept})"
            log(f"[{scorer.name or type(scorer).__name__} seed={seed}] x={x:.2f}: {state} in {p.seconds:.1f} s")
        return p.is_collapsed

    best = _search_order(len(grid), search, evaluate)
    crit = grid[best] if best >= 0 else 0.0
    ordered = tuple(points[i] for i in sorted(points))
    exact = None
    if one_shot_scores is not None and scope == "global" and scorer.monotone:
        exact = min(exact_one_shot_log10(one_shot_scores, ignore), max_log10)
    return CriticalRun(
        scorer.name or type(scorer).__name__, seed, crit, max_log10, ordered, time.perf_counter() - start, exact
    )


def critical_compression(
    model: ModelOrFactory,
    scorer: Union[str, Scorer, Sequence[Union[str, Scorer]]] = "synflow",
    *,
    seeds: Optional[Sequence[int]] = None,
    grid: Optional[Sequence[float]] = None,
    step: float = DEFAULT_STEP,
    search: str = "bisect",
    iterations: Optional[int] = None,
    schedule: Schedule = "exponential",
    scope: Scope = "global",
    example_input: Optional[ExampleInput] = None,
    dataloader: Optional[Union[Iterable[Any], Callable[[], Iterable[Any]]]] = None,
    parameters: Optional[Sequence[str]] = None,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    ignore: Sequence[str] = (),
) -> Union[CriticalCompressionResult, dict[str, CriticalCompressionResult]]:
    """Sweep compression ``10^x`` and find the largest ``x`` at which no prunable tensor is emptied.

    Args:
        model: A model, or a factory ``() -> nn.Module`` called once per seed after
            ``torch.manual_seed(seed)`` (a fresh initialisation per seed). The model is not changed.
        scorer: A registered name / :class:`~lightning_synflow.Scorer`, or a list of them.
        seeds: Seeds for the factory (default ``[0]``). With a model instance, each seed only reseeds
            torch's global generator before pruning (it matters for ``"random"``).
        grid: The exponents x to consider, ascending; default :func:`default_grid` (multiples of ``step``
            up to the maximum possible compression N / L).
        search: ``"bisect"`` (default), ``"grid"`` (ascending, stop at first collapse) or ``"full"``; see the
            module docstring.
        iterations: Pruning rounds per point; default the scorer's (100 for SynFlow, 1 for the others).
        dataloader: Batches for data-driven scorers, or a zero-argument callable returning them (called
            per seed, after seeding).
        log: Called with one line per evaluated point (e.g. ``print``).
        ignore: Glob patterns of tensors whose emptying does not count as collapse, e.g. tensors with a
            skip connection around them (``"*shortcut*"``, or a residual branch): that is the user's call.
            They are still pruned and reported in the densities.

        Other arguments as in :func:`~lightning_synflow.compute_masks`.

    Returns:
        A :class:`CriticalCompressionResult` for one scorer (its ``log10`` is x, averaged over seeds), or
        ``{scorer name: result}`` when ``scorer`` is a list.
    """
    if search not in SEARCHES:
        raise ValueError(f"`search` must be one of {SEARCHES}, got {search!r}")
    scorers = [scorer] if isinstance(scorer, (str, Scorer)) else list(scorer)
    if not scorers:
        raise ValueError("give at least one scorer")
    seed_list: list[Optional[int]] = list(seeds) if seeds is not None else ([0] if not isinstance(model, nn.Module) else [None])
    if not seed_list:
        raise ValueError("`seeds` is empty")
    results: dict[str, list[CriticalRun]] = {}
    grids: dict[str, tuple[float, ...]] = {}
    names_seen: tuple[str, ...] = ()
    for seed in seed_list:
        if isinstance(model, nn.Module):
            net = model
        else:
            if seed is not None:
                torch.manual_seed(seed)
            net = model()
        names_seen = tuple(select_prunable(net) if parameters is None else parameters)
        g = sorted(float(x) for x in (grid if grid is not None else default_grid(max_compression_log10(net, parameters), step)))
        if not g:
            raise ValueError("the compression grid is empty")
        for sc in scorers:
            s = get_scorer(sc)
            key = s.name or type(s).__name__
            if seed is not None:
                torch.manual_seed(seed)
            loader = dataloader() if callable(dataloader) else dataloader
            run = _one_run(
                net, s, g, search=search, seed=seed, iterations=iterations, schedule=schedule, scope=scope,
                example_input=example_input, dataloader=loader, parameters=parameters, progress=progress, log=log,
                ignore=tuple(ignore),
            )
            results.setdefault(key, []).append(run)
            grids[key] = tuple(g)
    out = {k: CriticalCompressionResult(k, tuple(v), grids[k], search, names_seen) for k, v in results.items()}
    if isinstance(scorer, (str, Scorer)):
        return next(iter(out.values()))
    return out
