import copy

import pytest
import torch
from torch.nn import functional as F

import lightning_synflow.scorers.snip_it  # noqa: F401  (registers "snip_it")
from lightning_synflow import SNIP, compute_masks, compute_scores, get_scorer, num_kept
from lightning_synflow.selection.topk import select_masks
from lightning_synflow.scorers.snip_it import SNIPit, snip_it_sparsities

PUBLISHED = [0.50, 0.74, 0.86, 0.92, 0.95, 0.965, 0.98]  # Verdenius et al., L = 0.98


def batches(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]


class Recording(SNIPit):
    """SNIP-it that keeps what each round was scored on and what it returned."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._rounds = []

    def score(self, model, masks, context):
        scores = super().score(model, masks, context)
        self._rounds.append(({n: m.clone() for n, m in masks.items()}, scores, len(context.batches)))
        return scores


def reference_snip(model, masks, data):
    """|θ ⊙ ∂L/∂θ| of the masked net in eval mode, by plain backward on a copy."""
    net = copy.deepcopy(model).eval()
    params = dict(net.named_parameters())
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    for x, y in data:
        F.cross_entropy(net(x), y).backward()
    return {n: (params[n].grad * params[n]).abs() for n in masks}


def test_the_schedule_for_098_is_the_published_one():
    scorer = SNIPit()
    densities = scorer.densities(1 - 0.98, scorer.default_iterations, "exponential")
    assert scorer.default_iterations == 7
    assert [1 - d for d in densities] == pytest.approx(PUBLISHED, abs=1e-12)
    assert densities[-1] == 1 - 0.98  # exactly the target
    assert snip_it_sparsities(0.98, 7) == pytest.approx(PUBLISHED, abs=1e-12)


def test_what_steps_and_iterations_mean():
    assert SNIPit(steps=2).default_iterations == 4
    assert [1 - d for d in SNIPit().densities(0.02, 4, "exponential")] == pytest.approx([0.5, 0.74, 0.86, 0.98])
    assert SNIPit().densities(0.02, 4, "linear") == SNIPit().densities(0.02, 4, "exponential")  # its own schedule
    assert SNIPit().densities(0.1, 2, "exponential") == pytest.approx([0.5, 0.1])
    assert SNIPit().densities(0.1, 1, "exponential") == [0.1]  # one round: one-shot SNIP
    assert SNIPit().densities(0.6, 7, "exponential") == [0.6]  # a target sparsity <= 0.5 in one round
    assert SNIPit().densities(0.5, 7, "exponential") == [0.5]
    assert SNIPit().densities(1.0, 7, "exponential") == [1.0]


def test_rounds_keep_exact_counts_are_monotone_and_score_snip_on_the_sparse_net(tiny_cnn):
    data = batches()
    scorer = Recording()
    final = compute_masks(tiny_cnn, scorer, sparsity=0.98, dataloader=data)
    total = sum(m.numel() for m in final.values())
    rounds = [masks for masks, _, _ in scorer._rounds] + [final]
    assert len(scorer._rounds) == 7
    assert all(n_batches == 5 for _, _, n_batches in scorer._rounds)  # 5 batches per round by default
    assert sum(int(m.sum()) for m in rounds[0].values()) == total
    for t, s in enumerate(PUBLISHED, start=1):
        assert sum(int(m.sum()) for m in rounds[t].values()) == num_kept(1 - s, total)
        assert all(not (rounds[t][n] & ~rounds[t - 1][n]).any() for n in final)  # pruned weights stay pruned
    for masks, scores, _ in scorer._rounds:
        snip = compute_scores(tiny_cnn, SNIP(), masks=masks, dataloader=data, num_batches=5)
        ref = reference_snip(tiny_cnn, masks, data)
        for n in masks:
            assert torch.equal(scores[n], snip[n])
            torch.testing.assert_close(scores[n], ref[n], rtol=1e-5, atol=1e-9)


def test_equals_snip_iterated_by_hand_over_the_cumulative_targets(tiny_cnn):
    data = batches()
    masks = compute_masks(tiny_cnn, "snip_it", sparsity=0.98, distribution="uniform", dataloader=data)
    current = {n: torch.ones_like(m) for n, m in masks.items()}
    for s in PUBLISHED:
        scores = compute_scores(tiny_cnn, SNIP(), masks=current, dataloader=data, num_batches=5)
        current = select_masks(scores, 1 - s, distribution="uniform", candidates=current)
    assert all(torch.equal(masks[n], current[n]) for n in masks)
    assert all(int(m.sum()) == num_kept(0.02, m.numel()) for m in masks.values())


def test_differs_from_one_shot_snip(tiny_cnn):
    data = batches()
    iterative = compute_masks(tiny_cnn, "snip_it", sparsity=0.98, dataloader=data)
    one_shot = compute_masks(tiny_cnn, "snip", sparsity=0.98, dataloader=data, num_batches=5)
    assert any(not torch.equal(iterative[n], one_shot[n]) for n in iterative)


def test_model_comes_back_unchanged_in_train_mode_scoring(tiny_cnn):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    tiny_cnn.eval()
    compute_masks(tiny_cnn, SNIPit(mode="train"), sparsity=0.9, dataloader=batches())
    assert not tiny_cnn.training and not tiny_cnn.bn1.training
    assert all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())


def test_defaults_and_registration():
    scorer = get_scorer("snip_it")
    assert type(scorer) is SNIPit and scorer.name == "snip_it" and get_scorer("snip").name == "snip"
    assert (scorer.steps, scorer.mode, scorer.default_num_batches, scorer.needs_data, scorer.monotone) == (5, "eval", 5, True, True)
    assert repr(SNIPit(steps=3, mode="train")) == "SNIPit(mode='train', steps=3)"


@pytest.mark.parametrize("bad", [-1, 1.5, True, "5"])
def test_bad_steps_are_rejected(bad):
    with pytest.raises(ValueError, match=r"`steps` .* must be a non-negative integer, got "):
        SNIPit(steps=bad)


def test_bad_iterations_and_mode_are_rejected(tiny_cnn):
    with pytest.raises(ValueError, match=r"`iterations` must be a positive integer, got 0"):
        compute_masks(tiny_cnn, "snip_it", sparsity=0.9, iterations=0, dataloader=batches())
    with pytest.raises(ValueError, match=r"`mode` .* must be one of \('train', 'eval'\), got 'test'"):
        SNIPit(mode="test")
