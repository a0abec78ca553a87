import inspect
import json
import math

import pytest
import torch
from torch import nn

from lightning_synflow import compute_masks
from lightning_synflow.analysis import CriticalRun, critical_compression, default_grid, max_compression_log10


def _magnitude_trap():
    """Layer A: |w| = 1..1000; layer B: 25 weights of 900.5. B's best weight ranks 101st globally, so
    magnitude pruning empties B once fewer than 101 weights are kept: no collapse iff
    round(1025 * 10^-x) >= 101, i.e. x <= log10(1025 / 100.5)."""
    net = nn.Sequential(nn.Linear(40, 25, bias=False), nn.Linear(25, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.arange(1, 1001, dtype=torch.float32).view(25, 40))
        net[1].weight.fill_(900.5)
    return net, math.log10(1025 / 100.5)


@pytest.mark.parametrize("search", ["bisect", "grid", "full"])
def test_finds_analytic_collapse_of_magnitude_trap(search):
    net, x_star = _magnitude_trap()
    step = 0.01
    res = critical_compression(net, "magnitude", step=step, search=search)
    assert res.log10 == pytest.approx(math.floor(x_star / step) * step)
    grid = default_grid(max_compression_log10(net), step)
    assert res.grid == tuple(grid)
    assert res.exact_log10 == pytest.approx(x_star)  # off-grid, from the ranks
    n = len(res.runs[0].points)
    if search == "bisect":
        assert n <= math.ceil(math.log2(len(grid) + 1))
    elif search == "full":
        assert n == len(grid)
    for p in res.runs[0].points:  # per-tensor densities at every evaluated x, as compute_masks gives them
        masks = compute_masks(net, "magnitude", compression=10**p.log10)
        assert p.kept == {k: int(m.sum()) for k, m in masks.items()}
        assert p.is_collapsed == (p.log10 > x_star)
        assert p.collapsed == (["1.weight"] if p.log10 > x_star else [])


def _synflow_trap():
    """Linear(100 -> 10) -> Linear(10 -> 1), constant weights. SynFlow gives every first-layer weight
    R/1000 and every second-layer weight R/10, so one-shot SynFlow empties the first layer once at most
    10 weights are kept: no collapse iff round(1010 * 10^-x) >= 11, i.e. x <= log10(1010 / 10.5)."""
    net = nn.Sequential(nn.Linear(100, 10, bias=False), nn.Linear(10, 1, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(0.3)
        net[1].weight.fill_(2.0)
    return net, math.log10(1010 / 10.5)


def test_one_shot_synflow_collapses_where_predicted_and_iterative_reaches_the_maximum():
    net, x_star = _synflow_trap()
    x = torch.zeros(1, 100)
    one_shot = critical_compression(net, "synflow", iterations=1, step=0.01, example_input=x)
    assert one_shot.log10 == pytest.approx(math.floor(x_star * 100) / 100)
    assert one_shot.exact_log10 == pytest.approx(x_star)
    assert one_shot.max_log10 == pytest.approx(math.log10(1010 / 2))
    iterative = critical_compression(net, "synflow", iterations=100, step=0.01, example_input=x)
    assert iterative.exact_log10 is None
    assert iterative.log10 == pytest.approx(math.floor(iterative.max_log10 * 100) / 100)  # 2.70: no collapse at all
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    critical_compression(net, "synflow", iterations=2, grid=[1.0, 2.0], example_input=x, search="full")
    assert all(torch.equal(p, before[n]) for n, p in net.named_parameters())  # the model is not changed


def test_factory_seeds_several_scorers_and_serialisation():
    make = lambda: nn.Sequential(nn.Linear(30, 20), nn.ReLU(), nn.Linear(20, 3))  # noqa: E731
    out = critical_compression(make, ["random", "magnitude"], seeds=[0, 1, 2], step=0.25, search="full")
    assert set(out) == {"random", "magnitude"}
    res = out["random"]
    assert [r.seed for r in res.runs] == [0, 1, 2]
    assert res.log10 == pytest.approx(sum(r.log10 for r in res.runs) / 3)
    # the smallest tensor has 60 weights: random pruning cannot keep it alive much beyond 10^1.8
    assert 0.5 <= res.log10 <= math.log10(660 / 1) and res.max_log10 == pytest.approx(math.log10(660 / 2))
    again = critical_compression(make, "random", seeds=[0, 1, 2], step=0.25, search="full")
    assert again.log10_per_run == res.log10_per_run  # seeded: reproducible
    for r in res.runs:  # the grid answer is the exact one rounded down to the grid
        assert r.log10 == pytest.approx(math.floor(r.exact_log10 / 0.25 + 1e-9) * 0.25)
    run = res.runs[1]
    assert CriticalRun.from_dict(json.loads(json.dumps(run.to_dict()))) == run
    rows = res.rows()
    assert {r["tensor"] for r in rows} == {"0.weight", "2.weight"} and all(0 <= r["density"] <= 1 for r in rows)
    metrics = res.as_metrics()
    assert metrics["critical_compression/random/log10"] == res.log10
    assert "synflow" in str(critical_compression(make(), "synflow", example_input=torch.zeros(1, 30), iterations=3, grid=[1.0]))


def test_ignored_tensors_do_not_count_as_collapse():
    net, x_star = _magnitude_trap()
    res = critical_compression(net, "magnitude", step=0.25, search="full", ignore=["1.*"])
    assert res.log10 == pytest.approx(math.floor(res.max_log10 * 4) / 4)  # only layer B ever empties
    top = res.runs[0].points[-1]
    assert top.kept["1.weight"] == 0 and not top.is_collapsed and top.collapsed == []


def test_bad_arguments():
    net, _ = _magnitude_trap()
    with pytest.raises(ValueError, match="search"):
        critical_compression(net, "magnitude", search="nope")
    with pytest.raises(ValueError, match="scorer"):
        critical_compression(net, [])


def test_other_keywords_are_compute_masks_options_passed_through():
    """Options critical.py does not name reach compute_masks; one the one-shot shortcut does not reproduce
    (``invert``) makes every point a compute_masks call, so the masks are exactly compute_masks's."""
    net, _ = _magnitude_trap()
    res = critical_compression(net, "magnitude", step=0.25, search="full", invert=True, progress=False)
    assert res.exact_log10 is None  # the ranks of the plain scores say nothing about inverted masks
    for p in res.runs[0].points:
        masks = compute_masks(net, "magnitude", compression=10**p.log10, invert=True)
        assert p.kept == {k: int(m.sum()) for k, m in masks.items()}
    # inverted, B's 900.5s rank after 900 of A's weights: B is empty already at x = 0.25 (576 kept)
    assert res.log10 == 0.0 and res.runs[0].points[0].collapsed == ["1.weight"]


def test_keywords_compute_masks_does_not_take_are_rejected_before_any_work():
    calls = []

    def make():
        calls.append(1)
        return nn.Linear(4, 2)

    with pytest.raises(TypeError, match="iteration"):
        critical_compression(make, "magnitude", iteration=3)  # a typo, not silently ignored by the one-shot path
    with pytest.raises(TypeError, match="compression"):
        critical_compression(make, "magnitude", compression=10)  # the sweep sets it
    assert not calls


def test_own_keywords_do_not_shadow_compute_masks_options():
    """``**pruning`` shares critical_compression's keyword namespace with compute_masks: a compute_masks
    option named like one of critical_compression's own could not be passed through."""
    own = set(inspect.signature(critical_compression).parameters) - {"model", "scorer", "pruning"}
    assert not own & set(inspect.signature(compute_masks).parameters)


@pytest.mark.parametrize("scorer", ["erk", "uniform"])
def test_one_shot_shortcut_allocates_like_compute_masks(scorer):
    """Scorers that prescribe per-tensor counts get them at every x, as from compute_masks (the shortcut
    once ranked their random scores globally, reporting collapse that compute_masks never produces)."""
    net, _ = _magnitude_trap()
    res = critical_compression(net, scorer, seeds=[0], step=0.25, search="full")
    assert res.exact_log10 is None
    for p in res.runs[0].points:
        torch.manual_seed(0)
        masks = compute_masks(net, scorer, compression=10**p.log10)
        assert p.kept == {k: int(m.sum()) for k, m in masks.items()}


def test_a_dataloader_factory_is_called_per_seed_and_scorer_after_seeding():
    make = lambda: nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))  # noqa: E731
    drawn = []

    def loader():
        drawn.append(torch.rand(()).item())  # torch's global generator, just reseeded
        return [(torch.randn(4, 6), torch.randint(0, 3, (4,)))]

    critical_compression(make, ["snip", "grasp"], seeds=[0, 1], grid=[0.5], dataloader=loader)
    torch.manual_seed(0)
    first = torch.rand(()).item()
    torch.manual_seed(1)
    second = torch.rand(()).item()
    assert drawn == [first, first, second, second]


@pytest.mark.parametrize("distribution", ["uniform", "erk", {"0.*": 0.5}])
def test_a_distribution_reaches_the_one_shot_selection(distribution):
    """``distribution`` is a compute_masks option like any other: the one-shot shortcut shares the kept
    weights out as compute_masks does, and reports no exact exponent (that one is for a global ranking)."""
    net, _ = _magnitude_trap()
    res = critical_compression(net, "magnitude", step=0.25, search="full", distribution=distribution)
    assert res.exact_log10 is None
    for p in res.runs[0].points:
        masks = compute_masks(net, "magnitude", compression=10**p.log10, distribution=distribution)
        assert p.kept == {k: int(m.sum()) for k, m in masks.items()}
