import pytest
import torch
from torch import nn

from lightning_synflow import BoundMasks, apply_masks, check_masks


def random_masks(model, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) < p for n, w in model.named_parameters() if n.endswith("weight") and w.dim() > 1}


def test_apply_masks_zeroes_exactly_the_pruned_weights_and_nothing_else(tiny_cnn):
    before = {n: p.detach().clone() for n, p in tiny_cnn.named_parameters()}
    masks = random_masks(tiny_cnn)
    apply_masks(tiny_cnn, masks)
    for n, p in tiny_cnn.named_parameters():
        if n in masks:
            assert (p[~masks[n]] == 0).all()
            assert torch.equal(p[masks[n]], before[n][masks[n]])
        else:
            assert torch.equal(p, before[n])


@pytest.mark.parametrize(("masks", "error", "match"), [
    ({"nope.weight": torch.ones(1, dtype=torch.bool)}, ValueError, r"masks name tensors that TinyCNN does not have: \['nope.weight'\]"),
    ({"fc.weight": torch.ones(3, 3, dtype=torch.bool)}, ValueError, r"mask 'fc.weight' has shape \(3, 3\) but the parameter has shape \(4, 16\)"),
    ({"fc.weight": torch.ones(4, 16)}, TypeError, r"mask 'fc.weight' must be a bool tensor, got torch.float32"),
])
def test_bad_masks_are_rejected_before_anything_changes(tiny_cnn, masks, error, match):
    good = random_masks(tiny_cnn)
    before = {n: p.detach().clone() for n, p in tiny_cnn.named_parameters()}
    with pytest.raises(error, match=match):
        apply_masks(tiny_cnn, {**good, **masks})
    assert all(torch.equal(p, before[n]) for n, p in tiny_cnn.named_parameters())


def test_bound_masks_mask_gradients_and_measure_density_from_the_weights(tiny_cnn, image_batch):
    masks = random_masks(tiny_cnn)
    bound = BoundMasks(tiny_cnn, masks)
    bound.apply_()
    tiny_cnn(image_batch).sum().backward()
    bound.mask_grads_()
    params = dict(tiny_cnn.named_parameters())
    for n, m in masks.items():
        assert (params[n].grad[~m] == 0).all()
        assert (params[n].grad[m] != 0).any()
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    assert bound.measured_density() == pytest.approx(kept / total)


def test_check_masks_returns_the_parameters_in_mask_order(tiny_cnn):
    masks = random_masks(tiny_cnn)
    params = check_masks(tiny_cnn, masks)
    assert list(params) == list(masks)
    assert all(isinstance(p, nn.Parameter) for p in params.values())
