import copy

import pytest
import torch
from torch import nn

from lightning_synflow import (
    Magnitude,
    Scorer,
    SynFlow,
    available_scorers,
    compute_masks,
    compute_scores,
    num_kept,
    register_scorer,
)

pytestmark = pytest.mark.usefixtures("ranking_branch")  # every test through the NumPy and the torch ranking


class Spy(Scorer):
    """Wraps a scorer and records the masks it was asked to score on."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = []
        self.needs_input = inner.needs_input
        self.default_iterations = inner.default_iterations

    def score(self, model, masks, context):
        self.seen.append({n: m.clone() for n, m in masks.items()})
        return self.inner.score(model, masks, context)


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def total(masks):
    return sum(m.numel() for m in masks.values())


@pytest.mark.parametrize("scorer", ["synflow", "magnitude", "random"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99, 0.999])
def test_global_distribution_keeps_exactly_round_d_n(tiny_cnn, image_batch, scorer, sparsity):
    masks = compute_masks(tiny_cnn, scorer, sparsity=sparsity, iterations=4, example_input=image_batch)
    assert list(masks) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert all(m.dtype == torch.bool for m in masks.values())
    assert kept(masks) == num_kept(1 - sparsity, total(masks))


@pytest.mark.parametrize("scorer", ["synflow", "magnitude", "random"])
def test_uniform_distribution_keeps_exactly_round_d_n_per_tensor(tiny_cnn, image_batch, scorer):
    masks = compute_masks(tiny_cnn, scorer, compression=10, distribution="uniform", iterations=3, example_input=image_batch)
    assert {n: int(m.sum()) for n, m in masks.items()} == {n: num_kept(0.1, m.numel()) for n, m in masks.items()}


@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_iterations_follow_the_schedule_and_are_monotone(tiny_cnn, image_batch, schedule):
    spy = Spy(SynFlow())
    final = compute_masks(tiny_cnn, spy, sparsity=0.99, iterations=10, schedule=schedule, example_input=image_batch)
    n = total(final)
    seen = [*spy.seen, final]
    assert len(spy.seen) == 10
    assert kept(seen[0]) == n
    for t in range(1, 11):
        d = 0.01 ** (t / 10) if schedule == "exponential" else 0.01 + 0.99 * (10 - t) / 10
        assert kept(seen[t]) == num_kept(d, n)
        assert all(not (seen[t][k] & ~seen[t - 1][k]).any() for k in final)  # a pruned weight never returns


@pytest.mark.parametrize(("scorer", "expected"), [("synflow", 100), ("magnitude", 1), ("random", 1)])
def test_default_iterations(tiny_cnn, image_batch, scorer, expected):
    from lightning_synflow import get_scorer

    spy = Spy(get_scorer(scorer))
    compute_masks(tiny_cnn, spy, sparsity=0.9, example_input=image_batch)
    assert len(spy.seen) == expected


def test_extreme_compression_keeps_exactly_k_where_the_reference_rule_empties_the_network():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 50, bias=False), nn.ReLU(), nn.Linear(50, 50, bias=False), nn.ReLU(), nn.Linear(50, 2, bias=False))
    n = 20 * 50 + 50 * 50 + 50 * 2
    masks = compute_masks(net, "synflow", compression=n / 3, iterations=100, example_input=torch.ones(1, 20))
    assert kept(masks) == 3
    assert [int(m.sum()) for m in masks.values()] == [1, 1, 1]  # one path survives: maximal compression


def test_magnitude_keeps_the_largest_weights():
    net = nn.Linear(4, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[0.1, -3.0, 2.0, -0.5]]))
    assert compute_masks(net, "magnitude", sparsity=0.5)["weight"].tolist() == [[False, True, True, False]]


def test_random_is_reproducible_by_seed_and_by_the_global_generator(tiny_cnn):
    from lightning_synflow import Random

    x, y = (compute_masks(tiny_cnn, Random(seed=3), sparsity=0.9) for _ in range(2))
    assert all(torch.equal(x[n], y[n]) for n in x)
    torch.manual_seed(5)
    a = compute_masks(tiny_cnn, "random", sparsity=0.9)
    torch.manual_seed(5)
    b = compute_masks(tiny_cnn, "random", sparsity=0.9)
    c = compute_masks(tiny_cnn, "random", sparsity=0.9)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert not all(torch.equal(a[n], c[n]) for n in a)


def test_compute_masks_does_not_change_the_model(tiny_cnn, image_batch):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    compute_masks(tiny_cnn, "synflow", sparsity=0.9, iterations=5, example_input=image_batch)
    assert all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())


def test_parameters_and_initial_masks_choose_what_is_pruned(tiny_cnn, image_batch):
    masks = compute_masks(tiny_cnn, "magnitude", sparsity=0.5, parameters=["conv2.weight"])
    assert list(masks) == ["conv2.weight"] and kept(masks) == 576
    more = compute_masks(tiny_cnn, "magnitude", sparsity=0.75, masks=masks)
    assert kept(more) == 288 and not (more["conv2.weight"] & ~masks["conv2.weight"]).any()


class Forbidden(Scorer):
    needs_input = False

    def score(self, model, masks, context):
        raise AssertionError("scoring must not start on bad input")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"sparsity": 1.0}, ValueError, r"`sparsity` must be a number in \[0, 1\).*got 1.0"),
    ({"sparsity": 0.5, "compression": 2}, ValueError, "exactly one of"),
    ({}, ValueError, "exactly one of"),
    ({"sparsity": 0.5, "iterations": 0}, ValueError, r"`iterations` must be a positive integer, got 0"),
    ({"sparsity": 0.5, "schedule": "cosine"}, ValueError, r"`schedule` must be one of"),
    ({"sparsity": 0.5, "distribution": "local"}, ValueError, r"`distribution` must be one of \['global', 'uniform', 'erk'\].*got 'local'"),
    ({"sparsity": 0.9999}, ValueError, r"sparsity 0.9999.* keeps 0 of the 1432 prunable weights"),
    ({"sparsity": 0.5, "parameters": ["nope"]}, ValueError, r"`parameters` names tensors that TinyCNN does not have: \['nope'\]"),
    ({"sparsity": 0.5, "parameters": []}, ValueError, r"no prunable parameters found in TinyCNN"),
])
def test_bad_input_fails_before_any_scoring(tiny_cnn, kwargs, error, match):
    with pytest.raises(error, match=match):
        compute_masks(tiny_cnn, Forbidden(), **kwargs)


def test_unknown_scorer_lists_the_valid_names(tiny_cnn):
    with pytest.raises(ValueError, match=r"`scorer` must be one of \[.*\] or a lightning_synflow.Scorer instance, got 'synflw'") as err:
        compute_masks(tiny_cnn, "synflw", sparsity=0.5)
    assert all(repr(name) in str(err.value) for name in available_scorers())


def test_model_without_prunable_layers_is_an_error():
    with pytest.raises(ValueError, match=r"no prunable parameters found in Sequential"):
        compute_scores(nn.Sequential(nn.BatchNorm1d(3)), "magnitude")


def test_a_users_scorer_by_instance_and_by_registered_name(tiny_cnn, ranking_branch):
    name = f"test_first_weights_{ranking_branch}"  # registered once per run of this test

    @register_scorer(name)
    class FirstWeights(Scorer):
        def score(self, model, masks, context):
            return {n: -torch.arange(m.numel(), dtype=torch.float32).view(m.shape) for n, m in masks.items()}

    assert name in available_scorers()
    by_name = compute_masks(tiny_cnn, name, sparsity=0.5, distribution="uniform")
    by_instance = compute_masks(tiny_cnn, FirstWeights(), sparsity=0.5, distribution="uniform")
    assert all(torch.equal(by_name[n], by_instance[n]) for n in by_name)
    assert by_name["fc.weight"].flatten()[:32].all() and not by_name["fc.weight"].flatten()[32:].any()
    with pytest.raises(ValueError, match="a scorer named 'synflow' is already registered"):
        register_scorer("synflow")(FirstWeights)


def test_scorer_must_score_every_tensor(tiny_cnn):
    class Partial(Scorer):
        def score(self, model, masks, context):
            return {"fc.weight": torch.ones(4, 16)}

    with pytest.raises(ValueError, match=r"returned no scores for \['conv1.weight', 'conv2.weight'\]"):
        compute_masks(tiny_cnn, Partial(), sparsity=0.5)


@pytest.mark.parametrize("scorer", available_scorers())
def test_a_channels_last_model_gets_the_masks_of_its_contiguous_twin(tiny_cnn, scorer):
    data = [(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(i)), torch.tensor([0, 1, 2, 3])) for i in range(2)]
    kwargs = dict(sparsity=0.9, iterations=3, example_input=torch.zeros(1, 3, 8, 8), dataloader=data, num_batches=2)
    twin = copy.deepcopy(tiny_cnn).to(memory_format=torch.channels_last)
    assert not twin.conv1.weight.is_contiguous()
    torch.manual_seed(0)
    expected = compute_masks(tiny_cnn, scorer, **kwargs)
    torch.manual_seed(0)
    masks = compute_masks(twin, scorer, **kwargs)
    assert all(torch.equal(masks[n], m) for n, m in expected.items())
    continued = compute_masks(twin, scorer, masks={n: m.to(memory_format=torch.channels_last) if m.dim() == 4 else m
                                                   for n, m in masks.items()}, **{**kwargs, "sparsity": 0.95})
    assert sum(int(m.sum()) for m in continued.values()) == num_kept(0.05, sum(m.numel() for m in masks.values()))
