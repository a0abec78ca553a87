import pytest
import torch

from lightning_synflow.selection.alive import COMPACT_BELOW, AliveSet
from lightning_synflow.distributions import get_distribution
from lightning_synflow.selection.topk import select_masks

pytestmark = pytest.mark.usefixtures("ranking_branch")  # NumPy and torch branches alike

SHAPES = {"a": (40, 30), "b": (500,), "c": (8, 3, 3, 3)}


def _budget(density, distribution="global", shapes=SHAPES):
    return get_distribution(distribution).budget(shapes, density, None)


def _scores(g, ties=False):
    if ties:  # a coarse grid: many exact ties, broken by position
        return {n: torch.randint(0, 20, s, generator=g).float() for n, s in SHAPES.items()}
    return {n: torch.rand(s, generator=g) for n, s in SHAPES.items()}


@pytest.mark.parametrize("distribution", ["global", "uniform", "erk"])
@pytest.mark.parametrize("ties", [False, True])
def test_rounds_narrow_exactly_as_a_fresh_selection_among_the_living(distribution, ties):
    """Round after round (through the switch to index bookkeeping), the masks equal a stateless selection
    among the weights alive before the round, and `pruned` lists exactly the weights that died."""
    g = torch.Generator().manual_seed(0)
    alive = AliveSet({n: torch.ones(s, dtype=torch.bool) for n, s in SHAPES.items()})
    expected = {n: m.clone() for n, m in alive.masks.items()}
    total = sum(m.numel() for m in expected.values())
    for t in range(1, 21):
        density = 0.01 ** (t / 20)
        scores = _scores(g, ties)
        before = {n: m.clone() for n, m in alive.masks.items()}
        expected = select_masks(scores, density, distribution=distribution, candidates=expected)
        alive.update(scores, get_distribution(distribution).budget(SHAPES, density, alive.alive_counts()))
        for n in SHAPES:
            assert torch.equal(alive.masks[n], expected[n]), (t, n)
            died = (before[n] & ~expected[n]).view(-1).nonzero().squeeze(1)
            if alive.pruned is not None or distribution == "global":  # None: a tensor lost most of its weights
                assert torch.equal(alive.pruned[n].sort().values, died)
        assert alive.counts == [int(m.sum()) for m in expected.values()]
    assert alive.index is not None and alive.kept <= COMPACT_BELOW * total  # the index bookkeeping was exercised
    for n, idx in zip(SHAPES, alive.index):
        assert torch.equal(idx.long(), alive.masks[n].view(-1).nonzero().squeeze(1))


def test_a_large_one_shot_step_keeps_the_highest_and_asks_scorers_to_reread_the_masks():
    g = torch.Generator().manual_seed(1)
    scores = _scores(g)
    alive = AliveSet({n: torch.ones(s, dtype=torch.bool) for n, s in SHAPES.items()})
    alive.update(scores, _budget(0.05))
    assert all(torch.equal(alive.masks[n], m) for n, m in select_masks(scores, 0.05).items())
    assert alive.pruned is None


def test_given_masks_are_copied_unless_handed_over_and_release_empties_the_scores():
    masks = {n: torch.ones(s, dtype=torch.bool) for n, s in SHAPES.items()}
    scores = _scores(torch.Generator().manual_seed(2))
    AliveSet(masks).update(scores, _budget(0.5), release=True)
    assert all(m.all() for m in masks.values()) and scores == {}
    AliveSet(masks, copy=False).update(_scores(torch.Generator().manual_seed(2)), _budget(0.5))
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * sum(m.numel() for m in masks.values()))


def test_a_tensor_left_with_nothing_is_emptied():
    alive = AliveSet({"a": torch.ones(10, dtype=torch.bool), "b": torch.ones(1000, dtype=torch.bool)})
    alive.update({"a": torch.rand(10), "b": torch.rand(1000)}, {"a": 0, "b": 20})
    assert not alive.masks["a"].any() and int(alive.masks["b"].sum()) == 20 and alive.counts == [0, 20]


def test_budgets_without_a_count_and_impossible_counts_are_rejected():
    alive = AliveSet({"a": torch.tensor([True, False, False, False]), "b": torch.ones(3, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"the budget has no count for \['b'\]"):
        alive.update({"a": torch.rand(4), "b": torch.rand(3)}, {"a": 1})
    with pytest.raises(ValueError, match="cannot keep 2 of 1 candidate weights"):
        alive.update({"a": torch.rand(4), "b": torch.rand(3)}, {"a": 2, "b": 3})


def test_scores_of_just_the_living_weights_rank_as_the_full_tensors():
    """Once positions are listed, a scorer may return only the living weights' scores (in that order)."""
    g = torch.Generator().manual_seed(3)
    full, compact = (AliveSet({n: torch.ones(s, dtype=torch.bool) for n, s in SHAPES.items()}) for _ in range(2))
    first = _scores(g)
    full.update(dict(first), _budget(0.1))
    compact.update(dict(first), _budget(0.1))
    assert full.positions is not None and compact.positions is not None
    for density in (0.09, 0.08, 0.06):
        scores = _scores(g, ties=True)
        living = {n: scores[n].reshape(-1)[at.long()] for n, at in compact.positions.items()}
        full.update(scores, _budget(density))
        compact.update(living, _budget(density))
        assert all(torch.equal(full.masks[n], compact.masks[n]) for n in SHAPES)
        assert all(torch.equal(full.pruned[n], compact.pruned[n]) for n in SHAPES)


def test_iterative_synflow_keeps_what_a_naive_loop_with_a_full_sort_keeps():
    """Pruning end to end on either branch (scoring, narrowing, the switch to listed positions, tensors large
    enough for the sampled brackets) keeps the weights of a deep-copying loop that ranks by a stable sort."""
    from lightning_synflow import compute_masks, models, select_prunable
    from synflow_reference import reference_masks

    torch.manual_seed(0)
    net = models.resnet20()
    ours = compute_masks(net, "synflow", compression=100, iterations=20, example_input=torch.ones(1, 3, 32, 32))
    names = select_prunable(net)
    ref = reference_masks(net, names, 0.01, 20, (3, 32, 32), torch.float32)
    assert all(torch.equal(ours[n], ref[n]) for n in names)
