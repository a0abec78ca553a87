"""Broadcasts of masks and weights as tensors: in this process the packing and the no-op cases; between two
gloo processes (this file re-run as a script: a process group started inside pytest would outlive the test)
that every rank ends with rank zero's values, in place, with keys, shapes, dtypes and layouts kept."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_synflow.distributed import collectives
from lightning_synflow.selection import topk
from lightning_synflow.distributed.collectives import _chunks, _flat, _pack_into, _unpack_into, broadcast_masks, broadcast_tensors_


def masks_of(rank):
    """Masks that differ between ranks: sizes off the byte boundary, empty, channels-last, and a float mask."""
    g = torch.Generator().manual_seed(rank)
    return {
        "odd": torch.rand(3, 7, generator=g) < 0.5,
        "empty": torch.zeros(0, 4, dtype=torch.bool),
        "channels_last": (torch.rand(4, 3, 5, 5, generator=g) < 0.3).to(memory_format=torch.channels_last),
        "long": torch.rand(1001, generator=g) < 0.1,
        "float": (torch.rand(5, 5, generator=g) < 0.5).float(),
    }


def tensors_of(rank):
    """Weights that differ between ranks, of every kind the model may hold."""
    g = torch.Generator().manual_seed(10 + rank)
    return [
        nn.Parameter(torch.randn(6, 5, generator=g)),
        torch.randn(4, 3, 2, 2, generator=g).to(memory_format=torch.channels_last),
        torch.randn(33, generator=g, dtype=torch.float64),
        torch.randn(7, generator=g).bfloat16(),
        torch.randint(0, 1 << 40, (9,), generator=g),
        torch.tensor(rank + 0.5),
    ]


# ---------------------------------------------------------------- in this process


@pytest.mark.parametrize("block", [collectives._BLOCK, 16])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1001])
def test_packing_puts_eight_weights_in_a_byte_and_unpacks_exactly(ranking_branch, monkeypatch, n, block):
    monkeypatch.setattr(collectives, "_BLOCK", block)  # 16: many blocks, the last one short
    if ranking_branch == "numpy":  # the packed bytes have NumPy's path too
        assert topk.as_numpy(torch.zeros(2, dtype=torch.uint8)) is not None
    bits = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.4
    packed = torch.full(((n + 7) // 8,), 255, dtype=torch.uint8)
    _pack_into(bits, packed)
    want = [sum(int(b) << k for k, b in enumerate(bits[i : i + 8].tolist())) for i in range(0, n, 8)]
    assert packed.tolist() == want
    out = torch.ones(n, dtype=torch.bool)
    _unpack_into(packed, out)
    assert torch.equal(out, bits)


def test_chunks_cover_every_item_in_order_within_the_limit():
    sizes = [5, 0, 17, 3, 40]
    chunks = list(_chunks(sizes, 8))
    assert all(sum(stop - start for _, start, stop in c) <= 8 for c in chunks)
    pieces = [p for c in chunks for p in c]
    for i, size in enumerate(sizes):
        mine = [(start, stop) for j, start, stop in pieces if j == i]
        assert [x for start, stop in mine for x in range(start, stop)] == list(range(size))


def test_flat_views_dense_tensors_in_memory_order_and_refuses_gapped_ones():
    t = torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last)
    flat = _flat(t)
    assert flat.data_ptr() == t.data_ptr() and flat.numel() == t.numel()
    flat.zero_()
    assert not t.any()
    with pytest.raises(ValueError, match="only dense tensors"):
        _flat(torch.zeros(4, 6)[:, ::2])


def test_without_a_process_group_nothing_is_sent_or_changed():
    masks, tensors = masks_of(0), tensors_of(0)
    before = [t.clone() for t in tensors]
    assert broadcast_masks(masks) is masks and all(torch.equal(m, masks_of(0)[n]) for n, m in masks.items())
    broadcast_tensors_(tensors)
    assert all(torch.equal(a, b) for a, b in zip(tensors, before))
    with pytest.raises(ValueError, match="`chunk_bytes` must be a positive integer, got 0"):
        broadcast_tensors_(tensors, chunk_bytes=0)


# ---------------------------------------------------------------- two gloo processes


def worker(rank, store, out):
    """One rank: every case through both CPU branches, with the default buffer and a 3-byte one (pieces of
    every tensor in separate broadcasts); then a group of one, which must leave everything as it was."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    as_numpy = topk.as_numpy
    results = {}
    for branch in ("numpy", "torch"):
        topk.as_numpy = as_numpy if branch == "numpy" else (lambda t: None)
        for chunk in (collectives.CHUNK_BYTES, 3):
            masks, tensors = masks_of(rank), tensors_of(rank)
            pointers = [m.data_ptr() for m in masks.values()] + [t.data_ptr() for t in tensors]
            got = broadcast_masks(masks, chunk_bytes=chunk)
            broadcast_tensors_(tensors, chunk_bytes=chunk)
            in_place = pointers == [m.data_ptr() for m in masks.values()] + [t.data_ptr() for t in tensors]
            layouts = [t.is_contiguous(memory_format=torch.channels_last) for t in [*masks.values(), *tensors]]
            results[branch, chunk] = {"masks": got, "tensors": [t.detach() for t in tensors], "same_dict": got is masks,
                                      "in_place": in_place, "layouts": layouts}
    topk.as_numpy = as_numpy
    alone = [dist.new_group([0]), dist.new_group([1])]
    masks, tensors = masks_of(rank), tensors_of(rank)
    broadcast_masks(masks, src=rank, group=alone[rank])
    broadcast_tensors_(tensors, src=rank, group=alone[rank])
    results["alone"] = {"masks": masks, "tensors": [t.detach() for t in tensors]}
    torch.save(results, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("collectives")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    procs = [
        subprocess.Popen([sys.executable, __file__, str(rank), str(out / "store"), str(out)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for rank in (0, 1)
    ]
    try:
        errors = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(e[-3000:] for e in errors)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in (0, 1)]


CASES = [(branch, chunk) for branch in ("numpy", "torch") for chunk in (collectives.CHUNK_BYTES, 3)]


@pytest.mark.parametrize("case", CASES, ids=[f"{b}-{'default' if c > 3 else '3-byte'}-buffer" for b, c in CASES])
def test_every_rank_ends_with_rank_zeros_masks_and_weights_in_place(ranks, case):
    want_masks, want_tensors = masks_of(0), tensors_of(0)
    assert not torch.equal(masks_of(1)["long"], want_masks["long"])  # the ranks did start apart
    for result in (r[case] for r in ranks):
        assert result["same_dict"] and result["in_place"]
        assert list(result["masks"]) == list(want_masks)
        for name, want in want_masks.items():
            got = result["masks"][name]
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want), name
        for got, want in zip(result["tensors"], want_tensors):
            assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
        assert result["layouts"][2] and result["layouts"][len(want_masks) + 1]  # channels-last stays so


def test_a_group_of_one_sends_nothing(ranks):
    for rank, result in enumerate(r["alone"] for r in ranks):
        assert all(torch.equal(result["masks"][n], m) for n, m in masks_of(rank).items())
        assert all(torch.equal(a, b) for a, b in zip(result["tensors"], tensors_of(rank)))


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
