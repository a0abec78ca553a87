import pytest
import torch
from torch import nn

from lightning_synflow import compute_masks
from lightning_synflow.analysis import approximate_isometry, isometry_penalty

from conftest import TinyCNN


def _snapshot(model):
    return {n: t.detach().clone() for n, t in model.state_dict().items()}


@pytest.mark.parametrize("make", [lambda: nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 5)), TinyCNN])
def test_isometry_lowers_penalty_and_keeps_masks(make):
    torch.manual_seed(0)
    model = make()
    masks = compute_masks(model, "random", sparsity=0.6)
    masks_before = {n: m.clone() for n, m in masks.items()}
    before_state = _snapshot(model)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    model.train()

    result = approximate_isometry(model, masks, steps=150, lr=0.1)

    assert result.after < 0.5 * result.before
    assert result.before == pytest.approx(sum(result.per_tensor_before.values()))
    assert result.after == pytest.approx(sum(isometry_penalty(model, masks).values()))
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert torch.equal(m, masks_before[n])  # the masks themselves are untouched
        assert torch.count_nonzero(params[n][~m]) == 0  # pruned weights exactly 0
    after_state = model.state_dict()
    for n, t in before_state.items():  # nothing but the masked weights changed
        if n not in masks:
            assert torch.equal(after_state[n], t), n
    assert model.training
    assert all(p.requires_grad == flags[n] and p.grad is None for n, p in model.named_parameters())
    assert set(result.as_metrics()) == {"isometry/penalty_before", "isometry/penalty_after", "isometry/steps", "isometry/seconds"}


def test_penalty_definition_and_conv_layout():
    """||W^T W - I||_F with a conv kernel (out, in, kh, kw) read as a matrix with `out` columns."""
    conv = nn.Conv2d(2, 3, 2, bias=False)
    masks = {"weight": torch.rand(3, 2, 2, 2) > 0.3}
    w = (conv.weight.detach() * masks["weight"]).reshape(3, -1).t()  # (in*kh*kw, out)
    expected = torch.linalg.norm(w.t() @ w - torch.eye(3))
    assert isometry_penalty(conv, masks)["weight"] == pytest.approx(float(expected), rel=1e-6)


def test_exact_isometry_is_a_fixed_point_and_rank_limit_is_partial():
    lin = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.eye(4))
    res = approximate_isometry(lin, {"weight": torch.ones(4, 4, dtype=torch.bool)}, steps=3)
    assert res.before == res.after == 0.0 and torch.equal(lin.weight, torch.eye(4))  # no 0/0 NaN at the optimum
    torch.manual_seed(0)
    tall = nn.Linear(6, 4, bias=False)  # 4 columns of length 6: a full isometry is reachable
    masks = {"weight": torch.ones(4, 6, dtype=torch.bool)}
    init = tall.weight.detach().clone()
    coarse = approximate_isometry(tall, masks, steps=300, lr=0.1)
    with torch.no_grad():
        tall.weight.copy_(init)
    fine = approximate_isometry(tall, masks, steps=600, lr=0.01)
    # the norm is not squared: its gradient keeps unit size, so SGD ends hovering at a penalty of order lr
    assert coarse.after < 0.5 * coarse.before
    assert fine.after < 0.1
    wide = nn.Linear(2, 5, bias=False)  # 5 columns of length 2: rank <= 2, ||G - I|| >= sqrt(3)
    res = approximate_isometry(wide, {"weight": torch.ones(5, 2, dtype=torch.bool)}, steps=400)
    assert res.after >= 3**0.5 - 1e-4


def test_zero_steps_only_applies_masks_and_bad_arguments_raise():
    lin = nn.Linear(4, 3)
    masks = {"weight": torch.tensor([[True, False, True, False]] * 3)}
    res = approximate_isometry(lin, masks, steps=0)
    assert res.before >= res.after and res.steps == 0
    assert torch.count_nonzero(lin.weight[:, 1]) == 0
    with pytest.raises(ValueError):
        approximate_isometry(lin, masks, steps=-1)
    with pytest.raises(ValueError):
        approximate_isometry(lin, {"nope": masks["weight"]}, steps=1)
