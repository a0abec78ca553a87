import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lightning_synflow.scorers.force  # noqa: F401  (registers "iter_snip" and "force")
from lightning_synflow import Scorer, compute_masks, compute_scores, get_scorer, num_kept
from lightning_synflow.scorers.force import FORCE, IterSNIP


class Spy(Scorer):
    """Wraps a scorer, copies its class settings and records the masks it was asked to score on."""

    def __init__(self, inner):
        self.inner = inner
        self.seen = []
        self.default_iterations = inner.default_iterations
        self.monotone = inner.monotone
        self.needs_data = inner.needs_data
        self.needs_input = inner.needs_input

    def score(self, model, masks, context):
        self.seen.append({n: m.clone() for n, m in masks.items()})
        return self.inner.score(model, masks, context)


def batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def random_masks(model, p=0.6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) < p for n, w in model.named_parameters() if n.endswith("weight") and w.dim() > 1}


def reference(model, masks, data, mode, kind, loss=F.cross_entropy):
    """Gradients of the loss at the sparse net θ⊙c by plain .backward() on a copy; Iter-SNIP multiplies them by
    θ⊙c, FORCE by the dense θ₀."""
    net = copy.deepcopy(model).train(mode == "train")
    params = dict(net.named_parameters())
    dense = {n: params[n].detach().clone() for n in masks}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    for x, y in data:
        loss(net(x), y).backward()
    weight = {n: params[n].detach() for n in masks} if kind == "iter_snip" else dense
    return {n: (params[n].grad * weight[n]).abs() for n in masks}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(("cls", "kind"), [(IterSNIP, "iter_snip"), (FORCE, "force")])
def test_scores_equal_an_independent_computation_with_the_real_cross_entropy(tiny_cnn, cls, kind, mode):
    masks = random_masks(tiny_cnn)
    data = batches()
    ours = compute_scores(tiny_cnn, cls(mode=mode), masks=masks, dataloader=data, num_batches=2)
    ref = reference(tiny_cnn, masks, data, mode, kind)
    # The published code's loss, F.nll_loss on raw logits, is not cross-entropy: it ranks differently.
    nll = reference(tiny_cnn, masks, data, mode, kind, loss=F.nll_loss)
    for n in masks:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-5, atol=1e-9)
        assert not torch.allclose(ours[n], nll[n], rtol=1e-2)
        if kind == "iter_snip":
            assert (ours[n][~masks[n]] == 0).all()
        else:  # FORCE scores pruned weights too
            assert (ours[n][~masks[n]] > 0).any()


def test_the_registered_names_defaults_and_published_mode():
    for name, cls, monotone in [("iter_snip", IterSNIP, True), ("force", FORCE, False)]:
        scorer = get_scorer(name)
        assert type(scorer) is cls and scorer.name == name
        assert scorer.default_iterations == 60 and scorer.default_num_batches == 1
        assert scorer.monotone is monotone and scorer.needs_data and not scorer.needs_input
        assert scorer.mode == "train"  # the published code prunes the freshly built net in train mode


@pytest.mark.parametrize("name", ["iter_snip", "force"])
def test_sixty_exponential_rounds_with_exact_counts_by_default(tiny_cnn, name):
    spy = Spy(get_scorer(name))
    final = compute_masks(tiny_cnn, spy, sparsity=0.99, dataloader=batches(1))
    n = sum(m.numel() for m in final.values())
    seen = [*spy.seen, final]
    assert len(spy.seen) == 60
    assert kept(seen[0]) == n
    for t in range(1, 61):
        assert kept(seen[t]) == num_kept(0.01 ** (t / 60), n)
        if name == "iter_snip":
            assert all(not (seen[t][k] & ~seen[t - 1][k]).any() for k in final)  # a pruned weight never returns


def test_force_revives_pruned_weights_on_a_seeded_network(tiny_cnn):
    spy = Spy(FORCE())
    compute_masks(tiny_cnn, spy, sparsity=0.99, iterations=10, dataloader=batches(1))
    revived = [sum(int((now[k] & ~before[k]).sum()) for k in now) for before, now in zip(spy.seen, spy.seen[1:])]
    assert sum(revived) > 0, revived


def test_force_revives_a_weight_and_iter_snip_does_not_on_a_case_computed_by_hand():
    """ŷ = a·x₁ + b·x₂ + c·x₃ with θ₀ = (1, 1, 1), two points x = (1, 0, 1), (0, 1, 1) with targets 2.5, 1.5 and
    L = Σ(y − ŷ)², so ∂L/∂w = −2 Σ_k r_k x_k.
    Step 1 (dense): residuals r = (0.5, −0.5), gradient (−1, 1, 0): scores (1, 1, 0); keep 2 of 3 → c pruned.
    Step 2 (c = 0): r = (1.5, 0.5), gradient (−3, −1, −4). FORCE scores |θ₀ ⊙ g| = (3, 1, 4): c comes back as the
    one weight kept. Iter-SNIP scores |(θ⊙c) ⊙ g| = (3, 1, 0) among a, b only: a is kept."""
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    data = [(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]), torch.tensor([[2.5], [1.5]]))]
    sse = lambda model, batch: ((model(batch[0]) - batch[1]) ** 2).sum()  # noqa: E731
    step1 = {"weight": torch.tensor([[True, True, False]])}
    common = dict(dataloader=data, loss_fn=sse)
    assert compute_scores(net, "force", **common)["weight"].tolist() == [[1.0, 1.0, 0.0]]
    assert compute_scores(net, "force", masks=step1, **common)["weight"].tolist() == [[3.0, 1.0, 4.0]]
    assert compute_scores(net, "iter_snip", masks=step1, **common)["weight"].tolist() == [[3.0, 1.0, 0.0]]
    for name, final in [("force", [[False, False, True]]), ("iter_snip", [[True, False, False]])]:
        spy = Spy(get_scorer(name))
        masks = compute_masks(net, spy, compression=3, iterations=2, **common)
        assert spy.seen[1]["weight"].tolist() == step1["weight"].tolist()
        assert masks["weight"].tolist() == final, name
    assert net.weight.tolist() == [[1.0, 1.0, 1.0]]


@pytest.mark.parametrize("name", ["iter_snip", "force"])
def test_the_model_comes_back_as_it_came(tiny_cnn, name):
    tiny_cnn.eval()
    tiny_cnn.conv1.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    compute_masks(tiny_cnn, name, sparsity=0.9, iterations=5, dataloader=batches(2), num_batches=2)  # train mode
    assert not any(m.training for m in tiny_cnn.modules())
    assert not tiny_cnn.conv1.bias.requires_grad and tiny_cnn.conv1.weight.requires_grad
    assert all(p.grad is None for p in tiny_cnn.parameters())
    assert all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())  # BN statistics included


@pytest.mark.parametrize("cls", [IterSNIP, FORCE])
def test_gradients_are_summed_over_ranks_like_one_process_over_the_union(tiny_cnn, cls):
    """Two ranks simulated in one process: rank 1's signed gradient sum is recorded, then added by rank 0's
    all_reduce. The scores equal one process scoring both batches."""
    masks = random_masks(tiny_cnn)
    first, second = batches(2)
    recorded = []
    compute_scores(tiny_cnn, cls(), masks=masks, dataloader=[second], all_reduce=lambda t: recorded.append(t.clone()) or t)
    calls = []
    summed = compute_scores(
        tiny_cnn, cls(), masks=masks, dataloader=[first], all_reduce=lambda t: calls.append(1) or t + recorded[0]
    )
    union = compute_scores(tiny_cnn, cls(), masks=masks, dataloader=[first, second], num_batches=2)
    assert len(calls) == 1  # one collective per round
    for n in masks:
        torch.testing.assert_close(summed[n], union[n], rtol=1e-5, atol=1e-9)


def test_errors(tiny_cnn):
    with pytest.raises(ValueError, match=r"`mode` .* must be one of \('train', 'eval'\), got 'test'"):
        FORCE(mode="test")
    with pytest.raises(ValueError, match=r"`mode` .* must be one of \('train', 'eval'\), got 'Train'"):
        IterSNIP(mode="Train")
    for name in ("iter_snip", "force"):
        with pytest.raises(ValueError, match=r"needs data: pass `dataloader`"):
            compute_masks(tiny_cnn, name, sparsity=0.5)
