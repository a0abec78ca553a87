import pytest
import torch
from torch import nn

from lightning_synflow import compute_masks
from lightning_synflow.analysis import jacobian_singular_values, singular_value_stats

from conftest import TinyCNN


def _explicit(model, inputs):
    """Reference: torch.autograd.functional.jacobian per example, then an SVD."""
    model.eval()
    rows = []
    for x in inputs:
        j = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).reshape(-1), x)
        rows.append(torch.linalg.svdvals(j.reshape(-1, x.numel())))
    return torch.stack(rows)


@pytest.mark.parametrize(
    "make, shape",
    [
        (lambda: nn.Sequential(nn.Linear(7, 11), nn.Tanh(), nn.Linear(11, 4)), (7,)),  # out < in: reverse mode
        (lambda: nn.Sequential(nn.Linear(3, 9), nn.ReLU(), nn.Linear(9, 6)), (3,)),  # out > in: forward mode
        (TinyCNN, (3, 6, 6)),  # conv + BatchNorm (eval mode) + pooling
    ],
)
def test_singular_values_match_explicit_jacobian(make, shape):
    torch.manual_seed(0)
    model = make()
    model.train()
    inputs = torch.randn(4, *shape)
    sv = jacobian_singular_values(model, inputs)
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert all(p.grad is None for p in model.parameters())
    ref = _explicit(model, inputs)
    assert sv.shape == ref.shape == (4, min(ref.shape[1], inputs[0].numel()))
    torch.testing.assert_close(sv, ref, rtol=1e-5, atol=1e-6)
    for mode in ("rev", "fwd"):
        torch.testing.assert_close(jacobian_singular_values(model, inputs, mode=mode), ref, rtol=1e-5, atol=1e-6)
    chunked = jacobian_singular_values(model, inputs, mode="rev", chunk_size=2, example_chunk=3)
    torch.testing.assert_close(chunked, ref, rtol=1e-5, atol=1e-6)


def test_masks_are_applied_on_the_fly_and_stats():
    torch.manual_seed(0)
    model = TinyCNN()
    masks = compute_masks(model, "random", sparsity=0.7)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    inputs = torch.randn(3, 3, 6, 6)
    sv = jacobian_singular_values(model, inputs, masks=masks)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # model not written to
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in masks:
                p.mul_(masks[n])
    torch.testing.assert_close(sv, _explicit(model, inputs), rtol=1e-5, atol=1e-6)
    stats = singular_value_stats(sv)
    assert stats.count == sv.numel()
    assert stats.min == pytest.approx(float(sv.min())) and stats.max == pytest.approx(float(sv.max()))
    assert stats.mean == pytest.approx(float(sv.double().mean()))
    assert set(stats.as_metrics()) == {"jacobian_sv/mean", "jacobian_sv/std", "jacobian_sv/min", "jacobian_sv/max"}
