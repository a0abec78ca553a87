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
run and only re-selected at each ``x``: the same masks ``compute_masks(..., iterations=1)`` gives, at the
cost of one scoring pass for the whole sweep (a compute_masks option this shortcut does not reproduce,
such as ``invert``, sends every point through compute_masks instead). For those that keep the globally
highest scores the exact off-grid exponent is also reported (``exact_log10``, from the rank of each
tensor's best weight; see :func:`exact_one_shot_log10`).
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from lightning_synflow.distributions import Global
from lightning_synflow.parameters import select_prunable
from lightning_synflow.plan import resolve_distribution
from lightning_synflow.pruning import compute_masks, compute_scores
from lightning_synflow.scorers.base import Scorer, get_scorer
from lightning_synflow.selection.topk import select

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
        """The compression ratio ``10^log10``."""
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
        """Whether some tensor (``ignore`` patterns excepted) has no weight left."""
        return bool(self.collapsed)

    @property
    def min_kept(self) -> int:
        """Fewest weights any tensor keeps."""
        return min(self.kept.values())

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (see :meth:`from_dict`)."""
        return {"log10": self.log10, "kept": dict(self.kept), "total": dict(self.total), "seconds": self.seconds,
                "ignore": list(self.ignore)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "SweepPoint":
        """The point :meth:`to_dict` wrote."""
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
        """The critical compression ratio ``10^log10``."""
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
        """The run :meth:`to_dict` wrote."""
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
        """Each run's critical exponent, in run order."""
        return [r.log10 for r in self.runs]

    @property
    def exact_log10(self) -> Optional[float]:
        """Mean over runs of the exact off-grid exponent (one-shot global pruning only, else ``None``)."""
        vals = [r.exact_log10 for r in self.runs]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)

    @property
    def compression(self) -> float:
        """The critical compression ratio ``10^log10`` (of the mean exponent)."""
        return 10.0**self.log10

    @property
    def max_log10(self) -> float:
        """log10 of the maximum possible compression: N / (number of prunable tensors)."""
        return self.runs[0].max_log10

    @property
    def seconds(self) -> float:
        """Wall-clock seconds of all runs together."""
        return sum(r.seconds for r in self.runs)

    def as_metrics(self, prefix: str = "critical_compression") -> dict[str, float]:
        """The mean exponent, the maximum and each run's exponent, flat, for a logger."""
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


#: compute_masks options that the sweep sets itself, at each grid point.
_SET_BY_SWEEP = frozenset({"sparsity", "compression"})
#: compute_masks options that only shape scoring: the one-shot path hands them to compute_scores, which
#: scores exactly as compute_masks's first (for one-shot pruning, only) round does.
_SCORING_OPTIONS = frozenset(inspect.signature(compute_scores).parameters) - {"model", "scorer", "masks"}
#: Every option the one-shot path reproduces. ``iterations`` is 1 there, ``schedule`` and ``progress`` do
#: nothing in one round and ``distribution`` (or ``scope``) goes to :func:`_select_one_shot`; any other
#: option (``masks``, ``invert``, ``shuffle``, options added to compute_masks later) sends every point
#: through compute_masks.
_ONE_SHOT_OPTIONS = _SCORING_OPTIONS | {"iterations", "schedule", "distribution", "scope", "progress"}


@dataclass(frozen=True)
class _Sweep:
    """What the runs on one model share, apart from the pruning options: the exponents to search, the
    search strategy, which tensors may empty without counting as collapse, and where to report."""

    grid: tuple[float, ...]
    search: str
    ignore: tuple[str, ...]
    log: Optional[Callable[[str], None]]


def _check_pruning(pruning: Mapping[str, Any]) -> None:
    """Reject before any work a keyword that compute_masks does not take, or one the sweep sets itself
    (the one-shot path never calls compute_masks, so it would not complain)."""
    unknown = sorted(set(pruning) - set(inspect.signature(compute_masks).parameters))
    if unknown:
        raise TypeError(
            f"critical_compression() got unexpected keyword arguments {unknown} (not options of compute_masks)"
        )
    own = sorted(set(pruning) & _SET_BY_SWEEP)
    if own:
        raise TypeError(f"critical_compression() sets {own} itself at every grid point; do not pass them")


def _prunable(model: nn.Module, parameters: Optional[Sequence[str]]) -> list[str]:
    return select_prunable(model) if parameters is None else list(parameters)


def _seed_list(model: ModelOrFactory, seeds: Optional[Sequence[int]]) -> list[Optional[int]]:
    """The seeds as given; by default one run, seeded 0 for a factory and left unseeded for a model."""
    if seeds is None:
        return [None] if isinstance(model, nn.Module) else [0]
    seed_list: list[Optional[int]] = list(seeds)
    if not seed_list:
        raise ValueError("`seeds` is empty")
    return seed_list


def _model_for(model: ModelOrFactory, seed: Optional[int]) -> nn.Module:
    """The model itself, or a fresh initialisation from the factory under ``torch.manual_seed(seed)``."""
    if isinstance(model, nn.Module):
        return model
    if seed is not None:
        torch.manual_seed(seed)
    return model()


def _grid_for(
    net: nn.Module, grid: Optional[Sequence[float]], step: float, parameters: Optional[Sequence[str]]
) -> tuple[float, ...]:
    """``grid`` sorted, or multiples of ``step`` up to this model's maximum compression."""
    g = grid if grid is not None else default_grid(max_compression_log10(net, parameters), step)
    out = tuple(sorted(float(x) for x in g))
    if not out:
        raise ValueError("the compression grid is empty")
    return out


def _for_run(pruning: Mapping[str, Any]) -> dict[str, Any]:
    """The pruning options of one run: a ``dataloader`` factory is called now (after seeding), so that
    every run draws its own batches."""
    loader = pruning.get("dataloader")
    return {**pruning, "dataloader": loader()} if callable(loader) else dict(pruning)


def _one_shot_scores(model: nn.Module, scorer: Scorer, pruning: Mapping[str, Any]) -> Optional[dict[str, Tensor]]:
    """The scores of one-round pruning, for re-selection at every x; ``None`` when the run has more
    rounds or an option that only compute_masks applies (see ``_ONE_SHOT_OPTIONS``)."""
    iterations = pruning.get("iterations")
    if (scorer.default_iterations if iterations is None else iterations) != 1 or not set(pruning) <= _ONE_SHOT_OPTIONS:
        return None
    return compute_scores(model, scorer, **{k: v for k, v in pruning.items() if k in _SCORING_OPTIONS})


def _select_one_shot(
    scorer: Scorer, scores: Mapping[str, Tensor], density: float, pruning: Mapping[str, Any]
) -> dict[str, Tensor]:
    """The masks ``compute_masks(..., iterations=1)`` gives from these scores at ``density``.

    This module's only use of the selection API, and with :func:`_exact_one_shot` the only code that reads a
    selection option (``distribution``, the deprecated ``scope``): change it here when that API changes. The
    distribution is resolved as compute_masks resolves it, so scorers with their own (ERK, uniform) get their
    per-tensor counts rather than a global ranking of their random scores.
    """
    layers = resolve_distribution(scorer, pruning.get("distribution"), pruning.get("scope"), density)
    shapes = {n: tuple(s.shape) for n, s in scores.items()}
    alive = {n: s.numel() for n, s in scores.items()} if scorer.monotone else None  # all alive: one round
    return select(scores, layers.budget(shapes, density, alive))


def _exact_one_shot(
    scorer: Scorer, scores: Mapping[str, Tensor], pruning: Mapping[str, Any], ignore: Sequence[str]
) -> Optional[float]:
    """:func:`exact_one_shot_log10` where it describes :func:`_select_one_shot`: one global ranking of the
    highest scores of a monotone scorer; ``None`` otherwise."""
    layers = resolve_distribution(scorer, pruning.get("distribution"), pruning.get("scope"), 1.0)
    if not isinstance(layers, Global) or not scorer.monotone:
        return None
    return exact_one_shot_log10(scores, ignore)


def _log_point(sweep: _Sweep, label: str, seed: Optional[int], p: SweepPoint) -> None:
    if sweep.log is not None:
        state = f"COLLAPSED ({len(p.collapsed)} tensors)" if p.is_collapsed else f"ok (min kept {p.min_kept})"
        sweep.log(f"[{label} seed={seed}] x={p.log10:.2f}: {state} in {p.seconds:.1f} s")


def _one_run(
    model: nn.Module, scorer: Scorer, seed: Optional[int], sweep: _Sweep, pruning: Mapping[str, Any]
) -> CriticalRun:
    """Search ``sweep.grid`` for the largest x at which ``scorer`` prunes ``model`` to ``10^x`` without an
    empty tensor; ``pruning`` holds the compute_masks options of this run."""
    start = time.perf_counter()
    names = _prunable(model, pruning.get("parameters"))
    pruning = {**pruning, "parameters": names}
    params = dict(model.named_parameters())
    totals = {n: params[n].numel() for n in names}
    max_log10 = math.log10(sum(totals.values()) / len(names))
    label = scorer.name or type(scorer).__name__
    scores = _one_shot_scores(model, scorer, pruning)
    points: dict[int, SweepPoint] = {}

    def evaluate(i: int) -> bool:
        t0, x = time.perf_counter(), sweep.grid[i]
        if scores is not None:
            masks = _select_one_shot(scorer, scores, 10.0**-x, pruning)
        else:
            masks = compute_masks(model, scorer, compression=10.0**x, **pruning)
        kept = {n: int(m.sum()) for n, m in masks.items()}
        points[i] = p = SweepPoint(x, kept, dict(totals), time.perf_counter() - t0, sweep.ignore)
        _log_point(sweep, label, seed, p)
        return p.is_collapsed

    best = _search_order(len(sweep.grid), sweep.search, evaluate)
    exact = None if scores is None else _exact_one_shot(scorer, scores, pruning, sweep.ignore)
    return CriticalRun(
        label, seed, sweep.grid[best] if best >= 0 else 0.0, max_log10, tuple(points[i] for i in sorted(points)),
        time.perf_counter() - start, None if exact is None else min(exact, max_log10),
    )


def critical_compression(
    model: ModelOrFactory,
    scorer: Union[str, Scorer, Sequence[Union[str, Scorer]]] = "synflow",
    *,
    seeds: Optional[Sequence[int]] = None,
    grid: Optional[Sequence[float]] = None,
    step: float = DEFAULT_STEP,
    search: str = "bisect",
    ignore: Sequence[str] = (),
    log: Optional[Callable[[str], None]] = None,
    **pruning: Any,
) -> Union[CriticalCompressionResult, dict[str, CriticalCompressionResult]]:
    """Sweep compression ``10^x`` and find the largest ``x`` at which no prunable tensor is emptied.

    Args:
        model: A model, or a factory ``() -> nn.Module`` called once per seed after
            ``torch.manual_seed(seed)`` (a fresh initialisation per seed). The model is not changed.
        scorer: A registered name / :class:`~lightning_synflow.Scorer`, or a list of them.
        seeds: Seeds for the factory (default ``[0]``). With a model instance, each seed only reseeds
            torch's global generator before pruning (it matters for ``"random"``).
        grid: The exponents x to consider; default :func:`default_grid` (multiples of ``step`` up to the
            maximum possible compression N / L).
        search: ``"bisect"`` (default), ``"grid"`` (ascending, stop at first collapse) or ``"full"``; see the
            module docstring.
        ignore: Glob patterns of tensors whose emptying does not count as collapse, e.g. tensors with a
            skip connection around them (``"*shortcut*"``, or a residual branch): that is the user's call.
            They are still pruned and reported in the densities.
        log: Called with one line per evaluated point (e.g. ``print``).
        **pruning: Keyword arguments of :func:`~lightning_synflow.compute_masks`, used at every point:
            ``iterations`` (default the scorer's: 100 for SynFlow, 1 for the others), ``schedule``,
            ``distribution``, ``example_input``, ``dataloader``, ``parameters``, ``progress``, ... (all but
            ``sparsity`` and ``compression``, which the sweep sets). ``dataloader`` may also be a
            zero-argument callable returning the batches, called per seed and scorer after seeding.
            Options compute_masks gains later pass through unchanged; one the one-shot path does not
            reproduce makes every point a compute_masks call (slower, same masks).

    Returns:
        A :class:`CriticalCompressionResult` for one scorer (its ``log10`` is x, averaged over seeds), or
        ``{scorer name: result}`` when ``scorer`` is a list.
    """
    if search not in SEARCHES:
        raise ValueError(f"`search` must be one of {SEARCHES}, got {search!r}")
    _check_pruning(pruning)
    scorers = [scorer] if isinstance(scorer, (str, Scorer)) else list(scorer)
    if not scorers:
        raise ValueError("give at least one scorer")
    runs: dict[str, list[CriticalRun]] = {}
    grids: dict[str, tuple[float, ...]] = {}
    names: tuple[str, ...] = ()
    for seed in _seed_list(model, seeds):
        net = _model_for(model, seed)
        names = tuple(_prunable(net, pruning.get("parameters")))
        sweep = _Sweep(_grid_for(net, grid, step, pruning.get("parameters")), search, tuple(ignore), log)
        for sc in scorers:
            s = get_scorer(sc)
            if seed is not None:
                torch.manual_seed(seed)
            run = _one_run(net, s, seed, sweep, _for_run(pruning))
            runs.setdefault(run.scorer, []).append(run)
            grids[run.scorer] = sweep.grid
    out = {k: CriticalCompressionResult(k, tuple(v), grids[k], search, names) for k, v in runs.items()}
    if isinstance(scorer, (str, Scorer)):
        return next(iter(out.values()))
    return out
