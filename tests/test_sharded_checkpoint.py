"""Bit-packing of masks for checkpoints, on plain tensors (tests/test_sharded_fit.py saves and resumes sharded
ones over real process groups)."""

import pytest
import torch
from torch import nn

from lightning_synflow.distributed.checkpoint import (
    from_full_packed,
    full_packed,
    load_masks_beside,
    pack,
    packing_dim,
    save_masks_beside,
    unpack,
)


@pytest.mark.parametrize("shape", [(5,), (7, 13), (16, 8), (3, 4, 5, 6)])
def test_packing_is_one_bit_per_weight_along_the_last_dimension_and_lossless(shape):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) < 0.3
    packed = pack(mask)
    assert packing_dim(mask) == len(shape) - 1
    assert packed.dtype == torch.uint8
    assert tuple(packed.shape) == (*shape[:-1], (shape[-1] + 7) // 8)
    assert torch.equal(unpack(packed, mask), mask)


def test_full_checkpoint_masks_come_back_as_they_were():
    model = nn.Sequential(nn.Linear(9, 4), nn.ReLU(), nn.Linear(4, 3))
    masks = {"0.weight": torch.rand(4, 9) < 0.5, "2.weight": torch.rand(3, 4) < 0.5}
    entries = full_packed(masks)
    assert {n: e["shape"] for n, e in entries.items()} == {"0.weight": (4, 9), "2.weight": (3, 4)}
    back = from_full_packed(model, entries)
    assert all(torch.equal(back[n], masks[n]) for n in masks)


def test_full_checkpoint_masks_that_do_not_fit_the_model_are_refused():
    model = nn.Sequential(nn.Linear(9, 4))
    with pytest.raises(ValueError, match=r"the checkpoint's masks name tensors that Sequential does not have: \['1.weight'\]"):
        from_full_packed(model, full_packed({"1.weight": torch.ones(4, 9, dtype=torch.bool)}))
    with pytest.raises(ValueError, match=r"mask '0.weight' has shape \(4, 8\) but the parameter has shape \(4, 9\)"):
        from_full_packed(model, full_packed({"0.weight": torch.ones(4, 8, dtype=torch.bool)}))


@pytest.mark.filterwarnings("ignore:torch.distributed is disabled")
def test_masks_beside_a_checkpoint_of_another_model_are_refused_with_their_shapes(tmp_path):
    masks = {"0.weight": torch.rand(4, 9) < 0.5}
    save_masks_beside(masks, tmp_path)  # one process: no process group needed
    back = load_masks_beside(nn.Sequential(nn.Linear(9, 4)), ["0.weight"], tmp_path)
    assert torch.equal(back["0.weight"], masks["0.weight"])
    with pytest.raises(ValueError, match=r"the checkpoint's mask '0.weight' is stored as torch.uint8 of shape \(4, 2\),"
                                         r" which packs no mask of the parameter's shape \(4, 8\): the checkpoint is of"
                                         r" another model"):
        load_masks_beside(nn.Sequential(nn.Linear(8, 4)), ["0.weight"], tmp_path)
