"""The sanity-check ablations of Frankle et al. (ICLR 2021): shuffle, invert, reinitialise."""

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from torch import nn

from lightning_synflow import PruneAtInit, compute_masks, compute_scores, reinitialize, select_masks, shuffle_masks
from lightning_helpers import MLP, AssertPrunedStayZero


def counts_of(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


# ---------------------------------------------------------------- shuffle


def test_shuffle_is_a_real_permutation_of_each_tensor():
    # The SynFlow code's shuffle is a no-op; here every tensor's entries are really permuted.
    values = {"a": torch.arange(60).view(3, 4, 5), "b": torch.arange(1000).view(10, 100)}
    out = shuffle_masks(values, generator=torch.Generator().manual_seed(0))
    for n, v in values.items():
        assert out[n].shape == v.shape
        assert torch.equal(out[n].reshape(-1).sort().values, v.reshape(-1))  # a permutation of the same entries
        assert (out[n] != v).float().mean() > 0.8  # that moves almost all of them


def test_shuffle_keeps_every_per_tensor_count_and_moves_the_positions(tiny_cnn):
    masks = compute_masks(tiny_cnn, "magnitude", sparsity=0.9)
    shuffled = shuffle_masks(masks, generator=torch.Generator().manual_seed(0))
    assert counts_of(shuffled) == counts_of(masks)
    for n, m in masks.items():
        assert shuffled[n].dtype == torch.bool and shuffled[n].shape == m.shape
        assert not torch.equal(shuffled[n], m)
    again = shuffle_masks(masks, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(again[n], shuffled[n]) for n in masks)


def test_shuffle_gives_the_masks_of_an_int64_randperm_for_the_same_generator():
    # The shuffle used to index with an int64 permutation; it now draws int32, the same permutation on CPU.
    g = torch.Generator().manual_seed(0)
    masks = {"a": torch.rand(40, 30, generator=g) < 0.2, "b": torch.rand(7, generator=g) < 0.5}
    old = torch.Generator().manual_seed(1)
    want = {n: m.reshape(-1)[torch.randperm(m.numel(), generator=old)].view_as(m) for n, m in masks.items()}
    got = shuffle_masks(masks, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(got[n], want[n]) for n in masks)
    torch.manual_seed(4)  # and from torch's global generator when none is given
    want = {n: m.reshape(-1)[torch.randperm(m.numel())].view_as(m) for n, m in masks.items()}
    torch.manual_seed(4)
    got = shuffle_masks(masks)
    assert all(torch.equal(got[n], want[n]) for n in masks)


def test_compute_masks_shuffle(tiny_cnn, image_batch):
    plain = compute_masks(tiny_cnn, "synflow", sparsity=0.9, iterations=5, example_input=image_batch)
    torch.manual_seed(0)
    shuffled = compute_masks(tiny_cnn, "synflow", sparsity=0.9, iterations=5, example_input=image_batch, shuffle=True)
    assert counts_of(shuffled) == counts_of(plain)
    assert all(not torch.equal(shuffled[n], plain[n]) for n in plain)
    torch.manual_seed(0)  # the global generator decides the shuffle
    again = compute_masks(tiny_cnn, "synflow", sparsity=0.9, iterations=5, example_input=image_batch, shuffle=True)
    assert all(torch.equal(again[n], shuffled[n]) for n in plain)


# ---------------------------------------------------------------- invert


@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_invert_with_magnitude_keeps_the_smallest_weights(ranking_branch, tiny_cnn, distribution):
    masks = compute_masks(tiny_cnn, "magnitude", sparsity=0.7, distribution=distribution, invert=True)
    normal = compute_masks(tiny_cnn, "magnitude", sparsity=0.7, distribution=distribution)
    params = dict(tiny_cnn.named_parameters())
    if distribution == "uniform":
        assert counts_of(masks) == counts_of(normal)
    assert sum(counts_of(masks).values()) == sum(counts_of(normal).values())
    groups = [[n] for n in masks] if distribution == "uniform" else [list(masks)]
    for names in groups:
        kept = torch.cat([params[n].detach().abs()[masks[n]] for n in names])
        pruned = torch.cat([params[n].detach().abs()[~masks[n]] for n in names])
        assert kept.max() <= pruned.min()


def test_invert_keeps_zero_scores_first_and_never_produces_nan(ranking_branch):
    # The SynFlow code inverts with 1/score: a zero score becomes inf/NaN. Negating the ranking keeps the
    # zeros (the lowest scores) first, and everything stays finite.
    lin = nn.Linear(10, 10, bias=False)
    with torch.no_grad():
        lin.weight.view(-1)[:7] = 0.0
    masks = compute_masks(lin, "magnitude", sparsity=0.9, invert=True)["weight"]
    assert int(masks.sum()) == 10
    assert masks.view(-1)[:7].all()
    scores = compute_scores(lin, "magnitude")
    assert all(torch.isfinite(s).all() for s in scores.values())


def test_invert_equals_selecting_the_negated_scores(ranking_branch, tiny_cnn, image_batch):
    scores = compute_scores(tiny_cnn, "synflow", example_input=image_batch)
    inverted = compute_masks(tiny_cnn, "synflow", sparsity=0.8, iterations=1, example_input=image_batch, invert=True)
    expected = select_masks({n: -s for n, s in scores.items()}, 0.2)
    assert all(torch.equal(inverted[n], expected[n]) for n in scores)


def test_invert_over_iterations_is_monotone_and_exact(ranking_branch, tiny_cnn, image_batch):
    one = compute_masks(tiny_cnn, "synflow", sparsity=0.4, iterations=1, example_input=image_batch, invert=True)
    masks = compute_masks(tiny_cnn, "synflow", sparsity=0.9, iterations=2, example_input=image_batch, invert=True,
                          masks=one)  # densities 0.316, 0.1
    assert all(not (masks[n] & ~one[n]).any() for n in masks)
    assert sum(counts_of(masks).values()) == round(0.1 * sum(m.numel() for m in masks.values()))


# ---------------------------------------------------------------- reinitialise


def test_reinitialize_draws_fresh_weights_and_names_the_modules(tiny_cnn):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    names = reinitialize(tiny_cnn)
    assert set(names) == {"conv1", "bn1", "conv2", "fc"}
    for k in ("conv1.weight", "conv2.weight", "fc.weight", "conv1.bias", "fc.bias"):
        assert not torch.equal(tiny_cnn.state_dict()[k], before[k]), k


class RecordAtFitStart(Callback):
    """Runs after ``PruneAtInit`` in the callback list: sees the weights training starts from."""

    def on_fit_start(self, trainer, pl_module):
        self.weights = {n: p.detach().clone() for n, p in pl_module.named_parameters()}


def fit(tmp_path, steps=4, **pruner_kwargs):
    torch.manual_seed(0)
    model = MLP()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.9, **pruner_kwargs)
    record, checker = RecordAtFitStart(), AssertPrunedStayZero(pruner)
    trainer = Trainer(max_steps=steps, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[pruner, record, checker])
    trainer.fit(model)
    return model, pruner, initial, record.weights, checker


def test_callback_reinit_changes_the_weights_keeps_masks_and_zeros(tmp_path):
    _, plain, initial, plain_start, _ = fit(tmp_path)
    model, pruner, initial2, start, checker = fit(tmp_path, reinit=True)
    assert all(torch.equal(initial[n], initial2[n]) for n in initial)  # same seed, same model
    # The masks come from the original weights: the same as without reinit.
    assert all(torch.equal(pruner.masks[n], plain.masks[n]) for n in plain.masks)
    for n, m in pruner.masks.items():
        # Training starts from fresh weights: kept ones differ from the original init, pruned ones are zero.
        assert not torch.equal(start[n][m], initial[n][m])
        assert torch.equal(plain_start[n][m], initial[n][m])
        assert (start[n][~m] == 0).all()
    assert not torch.equal(start["net.0.bias"], initial["net.0.bias"])  # unpruned tensors are re-drawn too
    assert checker.checks == 4  # and the pruned weights stay zero through training
    params = dict(model.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in pruner.masks.items())


def test_callback_shuffle_and_invert(tmp_path):
    _, plain, initial, _, _ = fit(tmp_path, steps=1)
    _, shuffled, _, start, checker = fit(tmp_path, steps=1, shuffle=True)
    assert counts_of(shuffled.masks) == counts_of(plain.masks)
    assert all(not torch.equal(shuffled.masks[n], plain.masks[n]) for n in plain.masks)
    assert all((start[n][~m] == 0).all() for n, m in shuffled.masks.items())
    assert checker.checks == 1

    _, inverted, _, _, _ = fit(tmp_path, steps=1, invert=True)
    kept = torch.cat([initial[n].abs()[m] for n, m in inverted.masks.items()])
    pruned = torch.cat([initial[n].abs()[~m] for n, m in inverted.masks.items()])
    assert kept.max() <= pruned.min()
    assert sum(counts_of(inverted.masks).values()) == sum(counts_of(plain.masks).values())


# ---------------------------------------------------------------- continuing from given masks


def test_continuing_from_sparser_masks_over_iterations(ranking_branch, tiny_cnn):
    start = compute_masks(tiny_cnn, "magnitude", sparsity=0.6)
    masks = compute_masks(tiny_cnn, "magnitude", sparsity=0.9, iterations=4, masks=start)
    assert all(not (masks[n] & ~start[n]).any() for n in masks)
    assert sum(counts_of(masks).values()) == round(0.1 * sum(m.numel() for m in masks.values()))
