import math
import random

import pytest
import torch

from lightning_synflow import PruneAtInit, available_scorers, compute_masks, select_prunable
from lightning_synflow.distributions import (
    ERK,
    LayerDensities,
    Uniform,
    erk_densities,
    get_distribution,
    kept_counts,
    proportional_fill,
    uniform_densities,
)
from lightning_synflow.schedules import num_kept

# A 2x2 Linear (raw ERK weight (2+2)/4 = 1), a 10x10 Linear (20/100 = 0.2), a 20x10x3x3 conv (36/1800 = 0.02).
SHAPES = {"small": (2, 2), "fc": (10, 10), "conv": (20, 10, 3, 3)}
SIZES = {"small": 4, "fc": 100, "conv": 1800}
N = 1904


def test_erk_by_hand_one_tensor_capped():
    # Target 0.1 * 1904 = 190.4 kept. Unconstrained: eps = 190.4 / (4*1 + 100*0.2 + 1800*0.02) = 190.4/60
    # = 3.17, which puts "small" at 3.17 > 1: dense. Re-solved over the rest: eps = (190.4 - 4) / (20 + 36).
    d = erk_densities(SHAPES, 0.1)
    eps = 186.4 / 56
    assert d["small"] == 1.0
    assert d["fc"] == pytest.approx(eps * 0.2, rel=1e-12)  # 0.66571...
    assert d["conv"] == pytest.approx(eps * 0.02, rel=1e-12)  # 0.066571...
    assert sum(d[n] * SIZES[n] for n in SHAPES) == pytest.approx(190.4, rel=1e-12)


def test_erk_by_hand_capping_cascades():
    # Target 290 kept. Round 1: eps = 290/60 = 4.83: small (4.83) capped, fc at 0.967 not yet. Round 2:
    # eps = (290 - 4)/56 = 5.107: now fc (1.02) exceeds 1 too. Round 3: eps = (290 - 104)/36, conv = 186/1800.
    d = erk_densities(SHAPES, 290 / N)
    assert d == {"small": 1.0, "fc": 1.0, "conv": pytest.approx(186 / 1800, rel=1e-12)}


def test_erk_ratios_follow_sum_over_product_and_power_scale():
    shapes = {"a": (64, 3, 3, 3), "b": (128, 64, 3, 3), "c": (10, 128)}
    d = erk_densities(shapes, 0.01)
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    assert d["b"] / d["c"] == pytest.approx(raw["b"] / raw["c"], rel=1e-12)
    assert d["a"] / d["c"] == pytest.approx(raw["a"] / raw["c"], rel=1e-12)
    half = erk_densities(shapes, 0.01, power_scale=0.5)
    assert half["b"] / half["c"] == pytest.approx((raw["b"] / raw["c"]) ** 0.5, rel=1e-12)
    assert erk_densities(shapes, 0.01, power_scale=0) == pytest.approx({n: 0.01 for n in shapes})


def test_full_density_and_uniform():
    assert erk_densities(SHAPES, 1.0) == {n: 1.0 for n in SHAPES}
    assert uniform_densities(SHAPES, 0.25) == {n: 0.25 for n in SHAPES}


@pytest.mark.parametrize("fn", [erk_densities, uniform_densities])
@pytest.mark.parametrize(("shapes", "density", "match"), [
    (SHAPES, 0.0, r"`density` must be a number in \(0, 1\]"),
    (SHAPES, 1.5, r"`density` must be a number in \(0, 1\]"),
    (SHAPES, True, r"`density` must be a number in \(0, 1\]"),
    ({}, 0.5, r"`shapes` is empty"),
    ({"x": (3, 0)}, 0.5, r"`shapes\['x'\]` must be a non-empty sequence of positive ints, got \(3, 0\)"),
    ({"x": ()}, 0.5, r"`shapes\['x'\]` must be a non-empty sequence"),
])
def test_bad_arguments(fn, shapes, density, match):
    with pytest.raises(ValueError, match=match):
        fn(shapes, density)


def test_bad_power_scale():
    with pytest.raises(ValueError, match=r"`power_scale` must be a finite number >= 0, got -1"):
        erk_densities(SHAPES, 0.5, power_scale=-1)


def test_kept_counts_by_hand_largest_remainder():
    # Ideal counts 4, 66.571, 119.829 (sum 190.4 -> 190 kept): floors 4 + 66 + 119 = 189, the one extra
    # weight goes to the largest fractional part (conv, .829).
    assert kept_counts(SIZES, erk_densities(SHAPES, 0.1), 190) == {"small": 4, "fc": 66, "conv": 120}
    # Equal fractional parts: the earlier tensor first.
    assert kept_counts({"a": 10, "b": 10, "c": 10}, {"a": 0.25, "b": 0.25, "c": 0.25}, 8) == {"a": 3, "b": 3, "c": 2}
    # Default total: round(sum of ideals).
    assert kept_counts({"a": 10, "b": 10}, {"a": 0.26, "b": 0.26}) == {"a": 3, "b": 2}


def test_kept_counts_exact_and_within_one_of_the_ideal_on_random_cases():
    rng = random.Random(0)
    for _ in range(300):
        shapes = {f"t{i}": tuple(rng.randint(1, 40) for _ in range(rng.choice([2, 4]))) for i in range(rng.randint(1, 8))}
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        n_total = sum(sizes.values())
        density = rng.choice([rng.uniform(0.5 / n_total, 1.0), 10 ** rng.uniform(-4, 0)])
        density = min(max(density, 1e-9), 1.0)
        for dens in (erk_densities(shapes, density), uniform_densities(shapes, density)):
            counts = kept_counts(sizes, dens, num_kept(density, n_total))
            assert sum(counts.values()) == num_kept(density, n_total)
            for n in shapes:
                assert 0 <= counts[n] <= sizes[n]
                assert math.floor(dens[n] * sizes[n] + 1e-9) <= counts[n] <= math.ceil(dens[n] * sizes[n] - 1e-9)


def test_kept_counts_caps_at_what_is_available_and_shares_the_rest():
    sizes = {"a": 100, "b": 100, "c": 300}
    dens = {"a": 0.5, "b": 0.5, "c": 0.5}
    counts = kept_counts(sizes, dens, 250, available={"a": 10, "b": 100, "c": 300})
    # a keeps its 10; the other 40 of its share go to b and c in proportion 50:150.
    assert counts == {"a": 10, "b": 60, "c": 180}
    with pytest.raises(ValueError, match="cannot keep 250 weights: only 200 are available"):
        kept_counts(sizes, dens, 250, available={"a": 0, "b": 0, "c": 200})
    with pytest.raises(ValueError, match=r"`densities` has no density for \['c'\]"):
        kept_counts(sizes, {"a": 0.5, "b": 0.5}, 10)


def test_proportional_fill():
    assert proportional_fill([1, 1, 2], [10, 10, 10], 8) == [2, 2, 4]
    assert proportional_fill([1, 1, 8], [10, 10, 3], 13) == pytest.approx([5, 5, 3])
    assert proportional_fill([0, 0], [1, 3], 2) == pytest.approx([0.5, 1.5])


# ---------------------------------------------------------------- distributions as the pipeline's budget axis


class HalfOfFirst(LayerDensities):
    """A user's own distribution: the first tensor at half the global density, the rest at the global one."""

    def densities(self, shapes, density):
        first = next(iter(shapes))
        return {n: density / 2 if n == first else density for n in shapes}


def _expected_counts(model, distribution, density):
    """Final per-tensor counts from the definitions, independently of the Distribution classes."""
    names = select_prunable(model)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n in names}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    if distribution == "uniform":
        return {n: num_kept(density, s) for n, s in sizes.items()}
    if distribution == "erk":
        return kept_counts(sizes, erk_densities(shapes, density), num_kept(density, sum(sizes.values())))
    if distribution == "mapping":
        return {n: num_kept(0.5 if n.startswith("fc.") else density, s) for n, s in sizes.items()}
    if distribution == "user":
        return {n: num_kept(density / 2 if i == 0 else density, s) for i, (n, s) in enumerate(sizes.items())}
    raise AssertionError(distribution)


DISTRIBUTIONS = {"uniform": "uniform", "erk": "erk", "mapping": {"fc.*": 0.5}, "user": HalfOfFirst()}
RANKERS = [s for s in available_scorers() if s not in ("erk", "uniform")]


@pytest.mark.parametrize("distribution", ["global", *DISTRIBUTIONS])
@pytest.mark.parametrize("scorer", RANKERS)
def test_every_scorer_in_every_distribution_keeps_exact_counts(tiny_cnn, image_batch, scorer, distribution):
    """Three rounds of each scorer, its ranking within the distribution's budget: the exact counts of the
    definition, per tensor (one total for "global"); pruned weights of monotone scorers never return."""
    torch.manual_seed(0)
    batches = [(torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))) for _ in range(2)]
    spec = DISTRIBUTIONS.get(distribution, distribution)
    masks = compute_masks(tiny_cnn, scorer, sparsity=0.9, iterations=3, distribution=spec, example_input=image_batch,
                          dataloader=batches, num_batches=2)
    counts = {n: int(m.sum()) for n, m in masks.items()}
    if distribution == "global":
        assert sum(counts.values()) == num_kept(0.1, sum(m.numel() for m in masks.values()))
    else:
        assert counts == _expected_counts(tiny_cnn, distribution, 0.1)


@pytest.mark.parametrize("distribution", [*DISTRIBUTIONS])
def test_each_round_follows_the_distribution(tiny_cnn, image_batch, distribution):
    """Every round of an iterative run is the distribution's budget at that round's density (the schedule's
    d^(t/T); a mapped tensor bound for D is at D^(t/T) on it), not only the last round."""
    counts = []

    from lightning_synflow.scorers import Magnitude

    class Recording(Magnitude):
        def score(self, model, masks, context):
            counts.append({n: int(m.sum()) for n, m in masks.items()})
            return super().score(model, masks, context)

    spec = DISTRIBUTIONS[distribution]
    final = compute_masks(tiny_cnn, Recording(), sparsity=0.9, iterations=4, distribution=spec)
    counts = counts[1:] + [{n: int(m.sum()) for n, m in final.items()}]
    for t, got in enumerate(counts, start=1):
        d = 0.1 ** (t / 4)
        if distribution == "mapping":  # fc bound for 0.5: at 0.5^(t/4); the rest at the global d
            expected = _expected_counts(tiny_cnn, "uniform", d)
            expected["fc.weight"] = num_kept(0.5 ** (t / 4), 64)
        else:
            expected = _expected_counts(tiny_cnn, distribution, d)
        assert got == expected, t


def test_random_in_a_distribution_is_the_named_baseline(tiny_cnn):
    """The scorer names "erk" and "uniform" are random scores in those distributions."""
    from lightning_synflow import ERKRandom as ERKScorer, Random, UniformRandom as UniformScorer

    for named, distribution in ((ERKScorer(seed=3), ERK()), (UniformScorer(seed=3), Uniform(exact_total=True))):
        a = compute_masks(tiny_cnn, named, sparsity=0.8, iterations=2)
        b = compute_masks(tiny_cnn, Random(seed=3), sparsity=0.8, iterations=2, distribution=distribution)
        assert all(torch.equal(a[n], b[n]) for n in a)


def test_uniform_rounds_per_tensor_or_to_an_exact_total():
    shapes = {"a": (3,), "b": (3,), "c": (3,)}  # 0.3 * 3 = 0.9 each, 2.7 in all
    assert Uniform().budget(shapes, 0.3, None) == {"a": 1, "b": 1, "c": 1}
    assert Uniform(exact_total=True).budget(shapes, 0.3, None) == {"a": 1, "b": 1, "c": 1}
    shapes = {"a": (10,), "b": (10,), "c": (10,)}  # 0.14 * 10 = 1.4 each, 4.2 in all
    assert Uniform().budget(shapes, 0.14, None) == {"a": 1, "b": 1, "c": 1}
    assert Uniform(exact_total=True).budget(shapes, 0.14, None) == {"a": 2, "b": 1, "c": 1}
    assert Uniform().budget(shapes, 0.5, {"a": 2, "b": 10, "c": 10}) == {"a": 2, "b": 5, "c": 5}  # capped at the living


def test_density_map_first_match_wins_and_unnamed_tensors_follow_the_global_density():
    shapes = {"conv1.weight": (8, 3, 3, 3), "conv2.weight": (16, 8, 3, 3), "fc.weight": (4, 16)}
    dist = get_distribution({"conv1.*": 1.0, "conv*": 0.25}, final_density=0.1)
    assert dist.budget(shapes, 0.1, None) == {"conv1.weight": 216, "conv2.weight": 288, "fc.weight": 6}
    assert dist.budget(shapes, 0.1**0.5, None)["conv2.weight"] == num_kept(0.5, 1152)  # halfway in log-density


@pytest.mark.parametrize(("spec", "match"), [
    ("local", r"`distribution` must be one of \['global', 'uniform', 'erk'\], .*got 'local'"),
    ({"fc.*": 0.0}, r"densities in \(0, 1\]; not allowed: \{'fc.\*': 0.0\}"),
    ({"fc.*": 1.5}, r"not allowed: \{'fc.\*': 1.5\}"),
    ({"fc.*": "half"}, r"not allowed: \{'fc.\*': 'half'\}"),
    ({"head.*": 0.5}, r"patterns \['head.\*'\] match no prunable tensor; the tensors are \['conv1.weight', 'conv2.weight', 'fc.weight'\]"),
    (lambda shapes, d: {"fc.weight": 2.0}, r"gave densities outside \[0, 1\] or none for \{'conv1.weight': None, 'conv2.weight': None, 'fc.weight': 2.0\}"),
])
def test_bad_distributions_are_refused_before_any_scoring(tiny_cnn, spec, match):
    before = {n: p.clone() for n, p in tiny_cnn.named_parameters()}
    with pytest.raises(ValueError, match=match):
        compute_masks(tiny_cnn, "magnitude", sparsity=0.5, distribution=spec)
    assert all(torch.equal(p, before[n]) for n, p in tiny_cnn.named_parameters())


def test_a_baseline_with_its_own_distribution_takes_no_other(tiny_cnn):
    with pytest.raises(ValueError, match=r"scorer 'erk' is random pruning in its own distribution ERK\(power_scale=1.0\);"
                                         r" for random scores in distribution='uniform' use scorer='random'"):
        compute_masks(tiny_cnn, "erk", sparsity=0.5, distribution="uniform")
    with pytest.raises(ValueError, match=r"scorer 'uniform' is random pruning"):
        PruneAtInit("uniform", sparsity=0.5, distribution="erk")


def test_scope_is_a_deprecated_alias(tiny_cnn):
    with pytest.warns(DeprecationWarning, match=r"write distribution='uniform' instead of scope='layerwise'"):
        old = compute_masks(tiny_cnn, "magnitude", sparsity=0.7, scope="layerwise")
    new = compute_masks(tiny_cnn, "magnitude", sparsity=0.7, distribution="uniform")
    assert all(torch.equal(old[n], new[n]) for n in old)
    with pytest.warns(DeprecationWarning, match=r"write distribution='uniform' instead of scope='layerwise'"):
        PruneAtInit("magnitude", sparsity=0.7, scope="layerwise")
    with pytest.raises(ValueError, match=r"`scope` must be one of \['global', 'layerwise'\], got 'local'"):
        compute_masks(tiny_cnn, "magnitude", sparsity=0.7, scope="local")
    with pytest.raises(ValueError, match=r"give `distribution` or the deprecated `scope`, not both"), pytest.warns(DeprecationWarning):
        compute_masks(tiny_cnn, "magnitude", sparsity=0.7, scope="global", distribution="erk")
