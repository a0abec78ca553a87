"""Guards written against deliberate bugs that survived the suite before the redesign of issue 25: each test
here fails when its bug is put back (tools/mutation_check.py keeps those bugs and re-runs these tests).

- every optimizer's step re-applies the masks, and at once (not the first optimizer only, nor at batch end);
- the masks are re-applied after the steps that really ran, not after AMP-skipped ones;
- gradients are masked before gradient clipping, so that the clipping norm is that of the kept weights;
- the measured density is read from the weights, not from the masks;
- data-driven scorers run inside the precision's training context (autocast under bf16-mixed).
"""

import copy
from itertools import islice

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins import MixedPrecision
from torch.nn import functional as F

from lightning_helpers import MLP, MemoryLogger
from lightning_synflow import PruneAtInit, apply_masks, compute_masks
from lightning_synflow.masks import BoundMasks

QUIET = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
             enable_model_summary=False)


class ZeroAfterEveryStep(Callback):
    """Checks, right after every optimizer step that ran (an optimizer step post-hook of its own, registered
    after the pruner's), that every pruned weight is exactly zero; counts those steps, and the times the
    pruner re-applied its masks during training."""

    def __init__(self, pruner):
        self.pruner = pruner
        self.steps = 0
        self.applied = 0
        self._hooks = []

    def on_train_start(self, trainer, pl_module):
        params = dict(pl_module.named_parameters())
        bound = self.pruner._bound
        apply = bound.apply_

        def counted():
            self.applied += 1
            apply()

        bound.apply_ = counted

        def check(optimizer, args, kwargs):
            self.steps += 1
            for name, mask in self.pruner.masks.items():
                assert (params[name][~mask] == 0).all(), f"pruned weights of {name} nonzero after step {self.steps}"

        self._hooks = [opt.register_step_post_hook(check) for opt in trainer.optimizers]

    def teardown(self, trainer, pl_module, stage):
        for handle in self._hooks:
            handle.remove()


class Drifting(torch.optim.Optimizer):
    """Plain SGD that also moves every weight by 0.01 after its step, whatever the gradient. A step of its own:
    torch runs step hooks around each hooked class's ``step``, so one inheriting SGD's would run them twice."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
                p.add_(0.01)
        return loss


class TwoDriftingOptimizers(MLP):
    """Manual optimization, GAN-style: each optimizer steps after a forward pass of its own, so the second pass
    must see the first optimizer's pruned weights at zero again. Both optimizers move every weight after their
    step, whatever its gradient."""

    def __init__(self):
        super().__init__(manual=True)

    def configure_optimizers(self):
        return [Drifting(self.net[0].parameters()), Drifting([*self.net[2].parameters(), *self.net[4].parameters()])]

    def training_step(self, batch, batch_idx):
        x, y = batch
        for opt in self.optimizers():
            loss = F.cross_entropy(self(x), y)
            opt.zero_grad()
            self.manual_backward(loss)
            opt.step()
        return loss


def test_every_optimizer_step_reapplies_the_masks_at_once(tmp_path):
    torch.manual_seed(0)
    model = TwoDriftingOptimizers()
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.9)
    probe = ZeroAfterEveryStep(pruner)
    Trainer(max_steps=6, default_root_dir=tmp_path, callbacks=[pruner, probe], **QUIET).fit(model)
    assert probe.steps == 6  # 3 batches, two optimizer steps each; each checked right after it
    assert probe.applied == 6
    assert all(m[~m].numel() > 0 for m in pruner.masks.values())  # every tensor has pruned weights to check


class InfiniteLossAt(MLP):
    """Drifting SGD whose loss is infinite at the given global steps: the GradScaler skips those optimizer steps."""

    def __init__(self, steps):
        super().__init__()
        self.inf_steps = steps

    def configure_optimizers(self):
        return Drifting(self.parameters())

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("inf") if self.global_step in self.inf_steps else loss


def test_masks_are_reapplied_after_the_steps_that_ran_and_not_after_skipped_ones(tmp_path):
    torch.manual_seed(0)
    model = InfiniteLossAt({1, 3})
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.9)
    probe = ZeroAfterEveryStep(pruner)
    trainer = Trainer(max_steps=6, default_root_dir=tmp_path, callbacks=[pruner, probe],
                      plugins=[MixedPrecision("16-mixed", "cpu")], **QUIET)
    trainer.fit(model)
    # Lightning counts a skipped step in global_step; the optimizer did not step, and the masks were not
    # re-applied for it.
    assert trainer.global_step == 6 and trainer.precision_plugin.scaler.get_scale() < 2.0**16
    assert probe.steps == 4
    assert probe.applied == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _train_by_hand(model, masks, steps, clip, mask_before_clip=True):
    """``model``'s own optimizer and batches, in a plain loop: mask the gradients, clip by norm, step,
    re-apply the masks (the callback's contract); ``mask_before_clip=False``: masked after clipping."""
    apply_masks(model, masks)
    params = dict(model.named_parameters())
    opt = model.configure_optimizers()
    for x, y in islice(model.train_dataloader(), steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        if mask_before_clip:
            for name, mask in masks.items():
                params[name].grad.mul_(mask)
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        if not mask_before_clip:
            for name, mask in masks.items():
                params[name].grad.mul_(mask)
        opt.step()
        apply_masks(model, masks)
    return model.requires_grad_(False)


def test_gradients_are_masked_before_they_are_clipped(tmp_path):
    torch.manual_seed(0)
    model = MLP(optimizer="sgd")
    initial = copy.deepcopy(model)
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.9)
    Trainer(max_steps=6, default_root_dir=tmp_path, gradient_clip_val=0.05, callbacks=[pruner], **QUIET).fit(model)
    masks = pruner.masks
    late = copy.deepcopy(initial)
    expected = _train_by_hand(initial, masks, 6, 0.05)
    for (name, p), q in zip(model.named_parameters(), expected.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)
    # The order matters on this model: masked after clipping, the kept weights train otherwise.
    late = _train_by_hand(late, masks, 6, 0.05, mask_before_clip=False)
    assert max(float((p - q).abs().max()) for p, q in zip(late.parameters(), expected.parameters())) > 1e-4


def test_measured_density_is_read_from_the_weights_not_the_masks():
    torch.manual_seed(0)
    model = MLP()
    masks = compute_masks(model, "random", sparsity=0.5)
    bound = BoundMasks(model, masks)
    total = sum(m.numel() for m in masks.values())
    kept = sum(int(m.sum()) for m in masks.values())
    params = dict(model.named_parameters())
    # Before the masks are applied every weight is non-zero; after, exactly the kept ones are.
    assert bound.measured_density() == 1.0
    bound.apply_()
    assert bound.measured_density() == kept / total
    with torch.no_grad():  # kept weights that are zero count as zero: 7 of net.2.weight's kept ones
        params["net.2.weight"][masks["net.2.weight"].nonzero()[:7].unbind(1)] = 0.0
    assert bound.measured_density() == (kept - 7) / total


class ZeroKeptWeights(MLP):
    """Plain SGD at learning rate 0, and some weights already zero: training never moves a weight, so the
    weights stay sparser than the masks say."""

    def __init__(self):
        super().__init__()
        with torch.no_grad():
            self.net[2].weight[:8] = 0.0

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_the_logged_measured_sparsity_counts_zero_weights_the_masks_keep(tmp_path):
    torch.manual_seed(0)
    model, logger = ZeroKeptWeights(), MemoryLogger()
    pruner = PruneAtInit(scorer="random", sparsity=0.5)
    Trainer(max_steps=8, default_root_dir=tmp_path, callbacks=[pruner], **{**QUIET, "logger": logger}).fit(model)
    params = dict(model.named_parameters())
    total = sum(m.numel() for m in pruner.masks.values())
    kept = sum(int(m.sum()) for m in pruner.masks.values())
    nonzero = sum(int(torch.count_nonzero(params[n])) for n in pruner.masks)
    assert nonzero < kept
    assert logger.values("pruning/measured_sparsity") == [pytest.approx(1 - nonzero / total, abs=0)]


def _autocast_loss(model, batch):
    x, y = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("scorer", ["snip", "grasp"])
def test_data_driven_scorers_score_under_the_precisions_autocast(tmp_path, scorer):
    torch.manual_seed(1)  # an init on which bfloat16 scores rank both scorers' weights otherwise
    model = MLP()
    initial = copy.deepcopy(model)
    pruner = PruneAtInit(scorer=scorer, sparsity=0.9)
    Trainer(max_steps=1, default_root_dir=tmp_path, precision="bf16-mixed", callbacks=[pruner], **QUIET).fit(model)
    batches = list(islice(initial.train_dataloader(), 1))
    torch.manual_seed(0)
    under_autocast = compute_masks(copy.deepcopy(initial), scorer, sparsity=0.9, dataloader=batches, loss_fn=_autocast_loss)
    in_float32 = compute_masks(copy.deepcopy(initial), scorer, sparsity=0.9, dataloader=batches)
    assert all(torch.equal(pruner.masks[n], under_autocast[n]) for n in under_autocast)
    assert any(not torch.equal(in_float32[n], under_autocast[n]) for n in under_autocast)  # autocast matters here
