import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.nn import functional as F

from lightning_synflow import SNIP, PruneAtInit, compute_masks, compute_scores
from lightning_helpers import MLP, random_data


def batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]


def reference_snip(model, masks, data, mode, loss=lambda out, y: F.cross_entropy(out, y)):
    net = copy.deepcopy(model).train(mode == "train")
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    for x, y in data:
        loss(net(x), y).backward()
    return {n: (params[n].grad * params[n]).abs() for n in masks}


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_snip_equals_an_independent_computation_summed_over_batches(tiny_cnn, mode):
    g = torch.Generator().manual_seed(3)
    masks = {n: torch.rand(p.shape, generator=g) < 0.6 for n, p in tiny_cnn.named_parameters() if n.endswith("weight") and p.dim() > 1}
    data = batches()
    ours = compute_scores(tiny_cnn, SNIP(mode=mode), masks=masks, dataloader=data, num_batches=2)
    ref = reference_snip(tiny_cnn, masks, data, mode)
    for n in masks:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-5, atol=1e-9)
        assert (ours[n][~masks[n]] == 0).all()


def test_train_mode_scoring_leaves_running_statistics_and_modes_alone(tiny_cnn):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    tiny_cnn.eval()
    compute_masks(tiny_cnn, SNIP(mode="train"), sparsity=0.9, dataloader=batches(), num_batches=2)
    assert not tiny_cnn.training and not tiny_cnn.bn1.training
    assert all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())


def test_num_batches_takes_the_first_batches_only(tiny_cnn):
    data = batches(3)
    two = compute_scores(tiny_cnn, "snip", dataloader=data, num_batches=2)
    ref = reference_snip(tiny_cnn, {n: torch.ones_like(s, dtype=torch.bool) for n, s in two.items()}, data[:2], "eval")
    assert all(torch.allclose(two[n], ref[n], rtol=1e-5, atol=1e-9) for n in two)


def test_a_custom_loss_function(tiny_cnn):
    data = [(x, torch.randn(4, 4)) for x, _ in batches()]
    mse = lambda model, batch: F.mse_loss(model(batch[0]), batch[1])  # noqa: E731
    ours = compute_scores(tiny_cnn, "snip", dataloader=data, loss_fn=mse, num_batches=2)
    ref = reference_snip(tiny_cnn, {n: torch.ones_like(s, dtype=torch.bool) for n, s in ours.items()}, data, "eval", F.mse_loss)
    assert all(torch.allclose(ours[n], ref[n], rtol=1e-5, atol=1e-9) for n in ours)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({}, r"needs data: pass `dataloader`"),
    ({"dataloader": []}, r"`dataloader` yielded no batch"),
    ({"dataloader": batches(), "num_batches": 0}, r"`num_batches` must be a positive integer, got 0"),
])
def test_data_errors(tiny_cnn, kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_masks(tiny_cnn, "snip", sparsity=0.5, **kwargs)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match=r"`mode` .* must be one of \('train', 'eval'\), got 'test'"):
        SNIP(mode="test")


class Regression(MLP):
    """A non-classification task that logs inside training_step: SNIP must use its loss as it is."""

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self(x), F.one_hot(y, 4).float())
        self.log("train_mse", loss)
        return {"loss": loss}


def trainer(**kwargs):
    return Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, **kwargs)


def test_callback_scores_with_the_modules_own_training_step_loss():
    torch.manual_seed(0)
    model = Regression()
    initial = copy.deepcopy(model)
    pruner = PruneAtInit(scorer="snip", sparsity=0.9, num_batches=3)
    trainer(callbacks=[pruner]).fit(model)
    data = [(x, F.one_hot(y, 4).float()) for x, y in torch.utils.data.DataLoader(random_data(), batch_size=8)][:3]
    mse = lambda m, b: F.mse_loss(m(b[0]), b[1])  # noqa: E731
    expected = compute_masks(initial, "snip", sparsity=0.9, dataloader=data, loss_fn=mse, num_batches=3, parameters=list(pruner.masks))
    assert all(torch.equal(pruner.masks[n], expected[n]) for n in expected)


def test_manual_optimization_needs_a_data_free_scorer():
    with pytest.raises(ValueError, match=r"scores with the loss `training_step` returns, which MLP does not under manual optimization"):
        trainer(callbacks=[PruneAtInit(scorer="snip", sparsity=0.5)]).fit(MLP(manual=True))
