import math
import random

import pytest

from lightning_synflow.distributions import erk_densities, kept_counts, proportional_fill, uniform_densities
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
