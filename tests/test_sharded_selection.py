"""Selection over sharded scores equals the one-process selection on the full tensors.

Ranks are threads (tests/thread_ranks.py), so that many layouts, tie patterns and band sizes run in one
process; tests/test_sharded.py runs the same code over real gloo process groups.
"""

import pytest
import torch

from lightning_synflow.distributed import selection as sharded_selection
from lightning_synflow.selection.topk import select
from lightning_synflow.distributed.selection import select_sharded
from lightning_synflow.distributed.sharding import Block, _runs
from thread_ranks import ThreadCollectives, run_ranks


def rows_of(size, dim, world, rank):
    """The indices along the sharded dimension that rank ``rank`` holds: ``torch.chunk``'s piece, or for a
    strided layout (``("strided", dim)``) ``_StridedShard(dim, split_factor=2)``'s, two runs of rows."""
    if isinstance(dim, tuple):
        from torch.distributed.tensor.placement_types import _StridedShard

        return _StridedShard(0, split_factor=2)._split_tensor(torch.arange(size), world, with_padding=False)[0][rank]
    pieces = list(torch.arange(size).chunk(world))
    return pieces[rank] if rank < len(pieces) else torch.arange(0)


def shard(t, dim, world, rank):
    """Rank ``rank``'s piece along ``dim`` (None: replicated, rank 0 owns) and its Block."""
    if dim is None:
        return t.clone(), Block(tuple(t.shape), tuple(((0, s),) for s in t.shape), owner=rank == 0)
    axis = dim[1] if isinstance(dim, tuple) else dim
    rows = rows_of(t.shape[axis], dim, world, rank)
    index = [((0, s),) for s in t.shape]
    index[axis] = _runs(rows)
    piece = t.index_select(axis, rows).contiguous()
    return piece, Block(tuple(t.shape), tuple(index), owner=True)


LAYOUTS = {  # tensor name -> (full shape, sharded dim, ("strided", dim), or None for replicated)
    "a": ((7, 5), 0),
    "b": ((6, 9), 1),
    "c": ((3, 4, 5), None),
    "d": ((2, 11), 0),  # with 3 ranks the last chunk of 2 rows is empty
    "e": ((4, 6, 2, 3), 1),
    "f": ((3, 10, 2), ("strided", 1)),  # pieces of two runs each: rank 0 of 2 holds rows {0, 1, 2, 5, 6, 7}
}


def full_scores(kind, seed):
    g = torch.Generator().manual_seed(seed)
    scores = {}
    for name, (shape, _) in LAYOUTS.items():
        s = torch.rand(shape, generator=g)
        if kind == "ties":  # few distinct values: ties across tensors and within them
            s = (s * 3).floor()
        elif kind == "zeros":  # most scores tied at zero
            s = torch.where(s < 0.8, torch.zeros_like(s), s)
        scores[name] = s
    return scores


def run_sharded(scores, budget, world_size, candidates=None):

    def on_rank(rank, collectives):
        local, blocks, cands = {}, {}, None if candidates is None else {}
        for name, (_, dim) in LAYOUTS.items():
            local[name], blocks[name] = shard(scores[name], dim, world_size, rank)
            if candidates is not None:
                cands[name] = shard(candidates[name], dim, world_size, rank)[0]
        return select_sharded(local, budget, blocks, collectives, cands)

    return run_ranks(on_rank, world_size)


def assemble(results, name, world_size):
    shape, dim = LAYOUTS[name]
    if dim is None:
        pieces = [r[name] for r in results]
        assert all(torch.equal(p, pieces[0]) for p in pieces), "replicas disagree"
        return pieces[0]
    axis = dim[1] if isinstance(dim, tuple) else dim
    full = torch.zeros(shape, dtype=results[0][name].dtype)
    for rank, r in enumerate(results):
        full.index_copy_(axis, rows_of(shape[axis], dim, world_size, rank), r[name])
    return full


@pytest.fixture(params=["small bands", "default"])
def limits(request, monkeypatch):
    if request.param == "small bands":  # force sampling, narrowing, pivots and tie bisection on these sizes
        monkeypatch.setattr(sharded_selection, "EXCHANGE_LIMIT", 8)
        monkeypatch.setattr(sharded_selection, "SAMPLE_SIZE", 16)
    return request.param


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("kind", ["distinct", "ties", "zeros"])
@pytest.mark.parametrize("density", [0.03, 0.5, 0.97])
def test_global_selection_equals_one_process(limits, world_size, kind, density):
    scores = full_scores(kind, seed=world_size)
    total = sum(s.numel() for s in scores.values())
    k = round(density * total)
    expected = select(scores, k)
    results = run_sharded(scores, k, world_size)
    for name in LAYOUTS:
        assert torch.equal(assemble(results, name, world_size), expected[name]), name
    assert sum(int(assemble(results, n, world_size).sum()) for n in LAYOUTS) == k


@pytest.mark.parametrize("kind", ["distinct", "zeros"])
def test_candidates_and_per_tensor_budgets_equal_one_process(limits, kind):
    scores = full_scores(kind, seed=5)
    g = torch.Generator().manual_seed(9)
    candidates = {n: torch.rand(s.shape, generator=g) < 0.6 for n, s in scores.items()}
    budget = {n: int(c.sum()) // 3 for n, c in candidates.items()}
    expected = select(scores, budget, candidates)
    results = run_sharded(scores, budget, 2, candidates)
    for name in LAYOUTS:
        got = assemble(results, name, 2)
        assert torch.equal(got, expected[name]), name
        assert int(got.sum()) == budget[name]
        assert not (got & ~candidates[name]).any()


def test_keep_all_and_keep_none():
    scores = full_scores("distinct", seed=1)
    total = sum(s.numel() for s in scores.values())
    results = run_sharded(scores, total, 2)
    assert all(bool(assemble(results, n, 2).all()) for n in LAYOUTS)
    results = run_sharded(scores, 0, 2)
    assert not any(bool(assemble(results, n, 2).any()) for n in LAYOUTS)


def test_more_than_there_are_is_an_error():
    scores = full_scores("distinct", seed=1)
    total = sum(s.numel() for s in scores.values())
    with pytest.raises(ValueError, match=f"cannot keep {total + 1} of {total} candidate weights"):
        run_sharded(scores, total + 1, 2)


def test_a_large_tie_block_is_resolved_with_counts_not_gathered(monkeypatch):
    monkeypatch.setattr(sharded_selection, "EXCHANGE_LIMIT", 8)
    gathered = []
    real = ThreadCollectives.gather
    monkeypatch.setattr(ThreadCollectives, "gather", lambda self, t: gathered.append(t.numel()) or real(self, t))
    scores = {n: torch.zeros(shape) for n, (shape, _) in LAYOUTS.items()}  # every score ties
    total = sum(s.numel() for s in scores.values())
    expected = select(scores, total // 2)
    results = run_sharded(scores, total // 2, 2)
    for name in LAYOUTS:
        assert torch.equal(assemble(results, name, 2), expected[name]), name
    # One sample shows the band is one tied value; no weights are exchanged, only counts go round.
    assert len(gathered) == 2  # the sample, once per rank
    assert sum(gathered) <= total


@pytest.mark.parametrize("dim", [1, ("strided", 1)])
def test_block_positions_follow_the_full_tensor(dim):
    full = torch.arange(6 * 9).view(6, 9)
    for rank in range(2):
        piece, block = shard(full, dim, 2, rank)
        local = torch.arange(piece.numel())
        assert torch.equal(block.global_positions(local), piece.reshape(-1))
        for position in range(full.numel() + 1):
            expected = int((piece.reshape(-1) < position).sum())
            assert block.first_at_or_after(position) == expected
