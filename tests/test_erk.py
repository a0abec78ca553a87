import math

import pytest
import torch
from lightning.pytorch import Trainer

import lightning_synflow.scorers.erk  # noqa: F401  (registers "erk" and "uniform" until the package imports it)
from lightning_synflow import PruneAtInit, Random, available_scorers, compute_masks, get_scorer, num_kept
from lightning_synflow.distributions import erk_densities, kept_counts
from lightning_synflow.scorers.erk import ERKRandom, UniformRandom
from lightning_helpers import MLP


def shapes_of(masks):
    return {n: tuple(m.shape) for n, m in masks.items()}


def counts_of(masks):
    return {n: int(m.sum()) for n, m in masks.items()}


def test_registered_with_the_right_attributes():
    assert {"erk", "uniform"} <= set(available_scorers())
    for name, cls in (("erk", ERKRandom), ("uniform", UniformRandom)):
        scorer = get_scorer(name)
        assert type(scorer) is cls and scorer.name == name
        assert scorer.default_iterations == 1 and scorer.monotone
        assert not scorer.needs_data and not scorer.needs_input


@pytest.mark.parametrize("sparsity", [0.5, 0.9, 0.99, 0.999])
def test_erk_end_to_end_counts_follow_the_distribution_and_sum_exactly(tiny_cnn, sparsity):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    masks = compute_masks(tiny_cnn, ERKRandom(seed=0), sparsity=sparsity)
    d = 1 - sparsity
    sizes = {n: m.numel() for n, m in masks.items()}
    dens = erk_densities(shapes_of(masks), d)
    assert counts_of(masks) == kept_counts(sizes, dens, num_kept(d, sum(sizes.values())))
    assert sum(counts_of(masks).values()) == num_kept(d, sum(sizes.values()))
    for n, m in masks.items():
        assert m.dtype == torch.bool
        assert abs(int(m.sum()) - dens[n] * m.numel()) < 1
    assert all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())


def test_erk_keeps_small_tensors_denser(tiny_cnn):
    masks = compute_masks(tiny_cnn, "erk", sparsity=0.8)
    density = {n: m.float().mean().item() for n, m in masks.items()}
    # eps = 286.4 / (17 + 30 + 20): fc (4x16, raw 20/64) is capped dense; conv1 (8x3x3x3, raw 17/216) is
    # denser than conv2 (16x8x3x3, raw 30/1152)
    assert density["fc.weight"] == 1.0
    assert density["conv1.weight"] > density["conv2.weight"]


@pytest.mark.parametrize("sparsity", [0.3, 0.9, 0.97])
def test_uniform_every_tensor_at_the_density_and_the_total_exact(tiny_cnn, sparsity):
    masks = compute_masks(tiny_cnn, UniformRandom(seed=0), sparsity=sparsity)
    d = 1 - sparsity
    for m in masks.values():
        assert math.floor(d * m.numel()) <= int(m.sum()) <= math.ceil(d * m.numel())
    assert sum(counts_of(masks).values()) == num_kept(d, sum(m.numel() for m in masks.values()))


def test_uniform_exact_per_tensor_when_the_counts_are_whole(tiny_cnn):
    # conv1 216, conv2 1152, fc 64 weights: at density 1/8 they keep exactly 27, 144 and 8.
    masks = compute_masks(tiny_cnn, "uniform", sparsity=1 - 1 / 8)
    assert counts_of(masks) == {"conv1.weight": 27, "conv2.weight": 144, "fc.weight": 8}


@pytest.mark.parametrize("cls", [ERKRandom, UniformRandom])
def test_positions_are_random_and_reproducible(tiny_cnn, cls):
    a = compute_masks(tiny_cnn, cls(seed=0), sparsity=0.8)
    b = compute_masks(tiny_cnn, cls(seed=0), sparsity=0.8)
    c = compute_masks(tiny_cnn, cls(seed=1), sparsity=0.8)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert counts_of(a) == counts_of(c)
    assert not torch.equal(a["conv2.weight"], c["conv2.weight"])
    # Not a prefix or any fixed pattern: kept positions are spread over the whole tensor.
    flat = a["conv2.weight"].reshape(-1).nonzero().squeeze(1).float()
    assert flat.min() < 0.1 * a["conv2.weight"].numel() and flat.max() > 0.9 * a["conv2.weight"].numel()
    # seed=None draws from torch's global generator.
    torch.manual_seed(5)
    g1 = compute_masks(tiny_cnn, cls(), sparsity=0.8)
    torch.manual_seed(5)
    g2 = compute_masks(tiny_cnn, cls(), sparsity=0.8)
    assert all(torch.equal(g1[n], g2[n]) for n in g1)


def _drawn_as_before(cls):
    """``cls`` scoring as it did before draws moved to the masks' device: one CPU generator, moved over."""

    class Before(cls):
        def __init__(self, seed=None):
            super().__init__(seed)
            self.before = None if seed is None else torch.Generator().manual_seed(seed)

        def score(self, model, masks, context):
            return {n: torch.rand(m.shape, generator=self.before).to(m.device) * m for n, m in masks.items()}

    return Before


@pytest.mark.parametrize("cls", [Random, ERKRandom, UniformRandom])
def test_a_seed_gives_the_masks_it_gave_before_draws_moved_to_the_masks_device(tiny_cnn, cls, ranking_branch):
    for iterations in (1, 3):  # later rounds continue the generator's stream
        now = compute_masks(tiny_cnn, cls(seed=3), sparsity=0.9, iterations=iterations)
        before = compute_masks(tiny_cnn, _drawn_as_before(cls)(seed=3), sparsity=0.9, iterations=iterations)
        assert all(torch.equal(now[n], before[n]) for n in now)
    torch.manual_seed(7)  # without a seed, from torch's global generator
    now = compute_masks(tiny_cnn, cls(), sparsity=0.8)
    torch.manual_seed(7)
    before = compute_masks(tiny_cnn, _drawn_as_before(cls)(), sparsity=0.8)
    assert all(torch.equal(now[n], before[n]) for n in now)


def test_positions_are_uniform_within_a_tensor():
    lin = torch.nn.Linear(100, 100, bias=False)
    hits = torch.zeros(100, 100)
    for seed in range(50):
        hits += compute_masks(lin, UniformRandom(seed=seed), sparsity=0.9)["weight"]
    # 50 draws at density 0.1: each row and column kept 500 times on average (std ~21)
    assert hits.sum() == 50 * 1000
    assert hits.sum(0).min() > 400 and hits.sum(0).max() < 600
    assert hits.sum(1).min() > 400 and hits.sum(1).max() < 600


def test_invert_does_not_change_the_counts(tiny_cnn):
    ref = compute_masks(tiny_cnn, ERKRandom(seed=0), sparsity=0.9)
    inverted = compute_masks(tiny_cnn, ERKRandom(seed=0), sparsity=0.9, invert=True)
    assert counts_of(inverted) == counts_of(ref)


@pytest.mark.parametrize("cls", [ERKRandom, UniformRandom])
def test_monotone_over_iterations_and_from_given_masks(tiny_cnn, cls):
    # A given mask (density ~0.6) that leaves conv1 with fewer weights than its share: it keeps all of
    # them, the others make up the difference, nothing pruned comes back and the total stays exact over
    # two rounds (densities 0.447, 0.2).
    start = compute_masks(tiny_cnn, "magnitude", sparsity=0.4, distribution="uniform")
    start["conv1.weight"] = torch.zeros_like(start["conv1.weight"])
    start["conv1.weight"].view(-1)[:3] = True
    masks = compute_masks(tiny_cnn, cls(seed=0), sparsity=0.8, iterations=2, masks=start)
    assert all(not (masks[n] & ~start[n]).any() for n in masks)
    assert int(masks["conv1.weight"].sum()) == 3
    total = sum(m.numel() for m in masks.values())
    assert sum(counts_of(masks).values()) == num_kept(0.2, total)


def test_iterations_keep_exact_counts(tiny_cnn):
    one = compute_masks(tiny_cnn, ERKRandom(seed=0), sparsity=0.95)
    five = compute_masks(tiny_cnn, ERKRandom(seed=0), sparsity=0.95, iterations=5)
    assert sum(counts_of(five).values()) == sum(counts_of(one).values())
    assert all(abs(counts_of(five)[n] - counts_of(one)[n]) <= 1 for n in one)


@pytest.mark.parametrize(("make", "match"), [
    (lambda: ERKRandom(seed="0"), r"`seed` must be an int or None, got '0'"),
    (lambda: UniformRandom(seed=1.5), r"`seed` must be an int or None, got 1.5"),
    (lambda: ERKRandom(power_scale=-0.5), r"`power_scale` must be a finite number >= 0, got -0.5"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_prune_at_init_with_erk(tmp_path):
    torch.manual_seed(0)
    model = MLP()
    pruner = PruneAtInit(scorer="erk", sparsity=0.9)
    trainer = Trainer(max_steps=2, accelerator="cpu", devices=1, default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                      callbacks=[pruner])
    trainer.fit(model)
    sizes = {n: m.numel() for n, m in pruner.masks.items()}
    expected = kept_counts(sizes, erk_densities(shapes_of(pruner.masks), 0.1), num_kept(0.1, sum(sizes.values())))
    assert counts_of(pruner.masks) == expected
    params = dict(model.named_parameters())
    assert all((params[n][~m] == 0).all() for n, m in pruner.masks.items())
