import math

import pytest

from lightning_synflow import density_schedule, num_kept, resolve_density


@pytest.mark.parametrize(("kwargs", "density"), [
    ({"sparsity": 0.99}, 0.01),
    ({"sparsity": 0}, 1.0),
    ({"compression": 100}, 0.01),
    ({"compression": 1}, 1.0),
    ({"compression": 10 ** 2.5}, 10 ** -2.5),
])
def test_resolve_density(kwargs, density):
    assert resolve_density(**kwargs) == pytest.approx(density, rel=1e-12)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, r"exactly one of `sparsity`.*sparsity=None, compression=None"),
    ({"sparsity": 0.5, "compression": 2}, r"exactly one of .*sparsity=0.5, compression=2"),
    ({"sparsity": 1.0}, r"`sparsity` must be a number in \[0, 1\).*got 1.0"),
    ({"sparsity": -0.1}, r"`sparsity`.*got -0.1"),
    ({"sparsity": "0.9"}, r"`sparsity`.*got '0.9'"),
    ({"sparsity": True}, r"`sparsity`.*got True"),
    ({"compression": 0.5}, r"`compression` must be a finite number >= 1.*got 0.5"),
    ({"compression": math.inf}, r"`compression`.*got inf"),
    ({"compression": math.nan}, r"`compression`.*got nan"),
])
def test_resolve_density_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_density(**kwargs)


def test_exponential_schedule_removes_a_constant_fraction_and_ends_exactly_on_target():
    d = 0.01
    steps = density_schedule(d, 100)
    assert len(steps) == 100
    assert steps[-1] == d
    ratios = [b / a for a, b in zip([1.0, *steps], steps)]
    assert all(r == pytest.approx(d ** 0.01, rel=1e-12) for r in ratios)


def test_linear_schedule():
    assert density_schedule(0.2, 4, "linear") == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert density_schedule(0.2, 4, "linear")[-1] == 0.2


def test_single_iteration_is_one_shot():
    assert density_schedule(0.05, 1) == [0.05]


@pytest.mark.parametrize(("args", "match"), [
    ((0.1, 0), r"`iterations` must be a positive integer, got 0"),
    ((0.1, 2.5), r"`iterations`.*got 2.5"),
    ((0.1, True), r"`iterations`.*got True"),
    ((0.1, 10, "cosine"), r"`schedule` must be one of \('exponential', 'linear'\), got 'cosine'"),
    ((0.0, 10), r"final density must be in \(0, 1\]"),
])
def test_schedule_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        density_schedule(*args)


def test_num_kept_rounds_half_up_and_never_exceeds_total():
    assert num_kept(0.5, 3) == 2
    assert num_kept(0.01, 150) == 2
    assert num_kept(0.01, 149) == 1
    assert num_kept(1.0, 7) == 7
    assert num_kept(0.1 * 3, 10) == 3  # 0.30000000000000004 * 10 must not become 4
