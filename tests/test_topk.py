import pytest
import torch

from lightning_synflow import num_kept, select_masks, top_k_mask

pytestmark = pytest.mark.usefixtures("ranking_branch")  # NumPy and torch branches alike


def brute_force_top_k(scores: torch.Tensor, k: int, candidates=None) -> torch.Tensor:
    """Independent reference: sort by (-score, index) and keep the first k candidates."""
    flat = scores.flatten().tolist()
    cand = [True] * len(flat) if candidates is None else candidates.flatten().tolist()
    order = sorted((i for i in range(len(flat)) if cand[i]), key=lambda i: (-flat[i], i))
    keep = torch.zeros(len(flat), dtype=torch.bool)
    keep[order[:k]] = True
    return keep.view_as(scores)


@pytest.mark.parametrize("k", [0, 1, 7, 50, 93, 99, 100])
def test_top_k_matches_brute_force_with_many_ties(k):
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 5, (10, 10), generator=g).double()
    assert torch.equal(top_k_mask(scores, k), brute_force_top_k(scores, k))
    assert int(top_k_mask(scores, k).sum()) == k


@pytest.mark.parametrize("k", [0, 3, 30, 59])
def test_top_k_only_keeps_candidates(k):
    g = torch.Generator().manual_seed(k)
    scores = torch.randint(0, 3, (120,), generator=g).float()
    cand = torch.rand(120, generator=g) < 0.5
    k = min(k, int(cand.sum()))
    keep = top_k_mask(scores, k, cand)
    assert torch.equal(keep, brute_force_top_k(scores, k, cand))
    assert not (keep & ~cand).any()


def test_all_zero_scores_still_keep_exactly_k_rather_than_emptying_the_network():
    # The reference code prunes every score <= the k-th value: with ties at zero nothing survives.
    scores = torch.zeros(1000)
    scores[:3] = 1.0
    keep = top_k_mask(scores, 10)
    assert int(keep.sum()) == 10
    assert keep[:10].all()


def test_top_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="cannot keep 5 of 4 candidate weights"):
        top_k_mask(torch.ones(4), 5)


def test_global_distribution_ranks_across_tensors_with_exact_total():
    scores = {"a": torch.arange(6.0).view(2, 3), "b": torch.arange(10.0, 14.0)}
    masks = select_masks(scores, 0.5)
    assert sum(int(m.sum()) for m in masks.values()) == num_kept(0.5, 10) == 5
    assert masks["b"].all() and int(masks["a"].sum()) == 1 and masks["a"][1, 2]
    assert masks["a"].shape == (2, 3)


def test_global_ties_go_to_the_earlier_tensor():
    masks = select_masks({"a": torch.ones(4), "b": torch.ones(4)}, 0.5)
    assert masks["a"].all() and not masks["b"].any()


def test_uniform_distribution_keeps_each_tensor_at_the_density():
    g = torch.Generator().manual_seed(0)
    scores = {"a": torch.rand(100, generator=g), "b": torch.rand(7, 3, generator=g), "c": torch.rand(5, generator=g)}
    masks = select_masks(scores, 0.3, distribution="uniform")
    assert {n: int(m.sum()) for n, m in masks.items()} == {"a": 30, "b": 6, "c": 2}


def test_candidates_restrict_the_ranking_per_tensor():
    scores = {"a": torch.tensor([5.0, 4.0, 3.0, 2.0])}
    cand = {"a": torch.tensor([False, True, True, True])}
    assert select_masks(scores, 0.5, candidates=cand)["a"].tolist() == [False, True, True, False]


def test_unknown_distribution_is_rejected():
    with pytest.raises(ValueError, match=r"`distribution` must be one of \['global', 'uniform', 'erk'\].*got 'local'"):
        select_masks({"a": torch.ones(2)}, 0.5, distribution="local")


def sorted_top_k(scores, k, candidates):
    """Reference over several tensors: a stable descending sort of the concatenated candidates."""
    flat = torch.cat([s.reshape(-1) for s in scores])
    cand = torch.cat([c.reshape(-1) for c in candidates])
    where = cand.nonzero().squeeze(1)
    order = torch.sort(flat[where], descending=True, stable=True).indices
    keep = torch.zeros_like(cand)
    keep[where[order[:k]]] = True
    return list(keep.split([s.numel() for s in scores]))


@pytest.mark.parametrize("fraction", [0.0, 1e-5, 0.01, 0.3, 0.5, 0.7, 0.955, 0.999, 1.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_top_k_over_large_tensors_equals_a_full_sort(fraction, dtype):
    # Large enough that the selection brackets from a sample instead of ranking every candidate; scores with
    # many ties (a coarse grid) and dead candidates, as in late rounds of iterative pruning. NumPy compares
    # and lists the CPU dtypes it has; bfloat16 takes torch's own path.
    from lightning_synflow.selection.topk import top_k_masks

    g = torch.Generator().manual_seed(7)
    scores = [(torch.randint(0, 2000, shape, generator=g).float() / 7).to(dtype) for shape in [(300, 400), (50_000,), (30, 3, 3, 100)]]
    scores[1][:5000] = 0.0  # a block of exact ties at zero
    cands = [torch.rand(s.shape, generator=g) < 0.6 for s in scores]
    k = round(fraction * sum(int(c.sum()) for c in cands))
    masks = top_k_masks(scores, k, cands)
    for got, want, s in zip(masks, sorted_top_k(scores, k, cands), scores):
        assert got.shape == s.shape and torch.equal(got.reshape(-1), want)
    assert sum(int(m.sum()) for m in masks) == k


def test_positions_and_selection_equal_torchs_own():
    from lightning_synflow.selection.topk import compress, true_positions

    g = torch.Generator().manual_seed(0)
    mask = torch.rand(30, 1001, generator=g) < 0.3
    got = true_positions(mask)
    assert got.dtype == torch.int32 and torch.equal(got.long(), mask.reshape(-1).nonzero().squeeze(1))
    assert true_positions(torch.zeros(0, dtype=torch.bool)).numel() == 0
    keep = mask.reshape(-1)
    # int32 takes NumPy's path and bfloat16 torch's; both against torch's boolean indexing, another kernel
    for values in (torch.arange(keep.numel(), dtype=torch.int32), torch.rand(keep.numel(), generator=g).bfloat16()):
        assert torch.equal(compress(values, keep), values[keep])


def test_selection_leaves_the_global_random_state_alone():
    from lightning_synflow.selection.topk import top_k_masks

    torch.manual_seed(3)
    before = torch.get_rng_state()
    top_k_masks([torch.rand(200_000, generator=torch.Generator().manual_seed(1))], 150_000)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("lowest", [True, False])
@pytest.mark.parametrize("m", [1, 40, 9_000, 150_000, 299_999, 300_000])
def test_kth_extreme_narrowed_by_samples_equals_a_sort(lowest, m):
    # Large enough that brackets from a sample narrow the values before ranking (ties on a coarse grid, a block
    # of zeros); m = 1 has no inner bracket and all-equal values cannot be narrowed, so both rank directly.
    from lightning_synflow.selection.topk import _kth_extreme

    g = torch.Generator().manual_seed(m)
    flat = torch.randint(0, 20_000, (300_000,), generator=g).float()
    flat[:30_000] = 0.0
    want = flat.sort(descending=not lowest).values[m - 1]
    assert _kth_extreme(flat, m, lowest) == want
    assert _kth_extreme(torch.full((300_000,), 3.0), m, lowest) == 3.0
