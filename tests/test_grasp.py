import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn
from torch.nn import functional as F

import lightning_synflow.scorers.grasp  # noqa: F401  (registers "grasp" and "grasp_abs")
from lightning_synflow import PruneAtInit, compute_masks, compute_scores, get_scorer, num_kept
from lightning_synflow.scorers.grasp import GraSP, GraSPAbs
from lightning_helpers import MLP, random_data
from thread_ranks import run_ranks


def batches(n=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 4, (4,), generator=g)) for _ in range(n)]


def random_masks(model, p=0.6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) < p for n, w in model.named_parameters() if n.endswith("weight") and w.dim() > 1}


def all_kept(model):
    return random_masks(model, p=2.0)


# ---------------------------------------------------------------- the sign, by hand

def cubic(model, batch):
    return (model(batch[0]) ** 3).sum() / 3


def three_weights():
    net = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, -2.0, 3.0]]))
    return net


def test_the_sign_on_a_case_computed_by_hand():
    # f = w·x with w = (1, -2, 3), x = (1, 1, 1): f = 2. L = (f/T)^3 / 3, T = 2.
    # g = ∇L = (f²/T³) x,  H = (2f/T³) x xᵀ,  Hg = 2 f³ |x|² / T⁶ · x = 48/64 · (1, 1, 1) = 0.75 · (1, 1, 1).
    # θ ⊙ Hg = (0.75, -1.5, 2.25): GraSP keeps the largest, removing the largest −θ ⊙ Hg first.
    net, data = three_weights(), [(torch.ones(1, 3), None)]
    scores = compute_scores(net, GraSP(temperature=2), dataloader=data, loss_fn=cubic)
    torch.testing.assert_close(scores["weight"], torch.tensor([[0.75, -1.5, 2.25]]), rtol=1e-6, atol=0)
    torch.testing.assert_close(compute_scores(net, GraSPAbs(temperature=2), dataloader=data, loss_fn=cubic)["weight"],
                               torch.tensor([[0.75, 1.5, 2.25]]), rtol=1e-6, atol=0)

    def keep(scorer, **kwargs):  # which of the three weights survive at sparsity 1/3 (two kept)
        return compute_masks(net, scorer, sparsity=1 / 3, dataloader=data, loss_fn=cubic, **kwargs)["weight"].view(-1).tolist()

    assert keep(GraSP(temperature=2)) == [True, False, True]  # -1.5 is the lowest θ⊙Hg: w2 goes
    assert keep(GraSPAbs(temperature=2)) == [False, True, True]  # |0.75| is the lowest: w1 goes
    assert keep(GraSP(temperature=2), invert=True) == [True, True, False]  # the inverted ranking drops the top


def gradient_norm(model, data, temperature):
    net = copy.deepcopy(model)
    loss = sum(F.cross_entropy(net(x) / temperature, y) for x, y in data)
    grads = torch.autograd.grad(loss, [p for n, p in net.named_parameters() if n.endswith("weight")])
    return sum((g**2).sum() for g in grads)


def test_the_weight_grasp_removes_first_is_the_one_whose_removal_raises_the_gradient_norm_most():
    # GraSP's objective: shrinking weight i (θ_i → (1 - ε) θ_i) changes ‖g‖² at rate -2 θ_i (Hg)_i, i.e.
    # -2 × its score. Checked by finite differences in float64 on the real ‖g‖², for every weight.
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    data = [(torch.randn(8, 5, dtype=torch.float64), torch.randint(0, 3, (8,))) for _ in range(2)]
    scores = compute_scores(net, GraSP(temperature=3.0), dataloader=data, num_batches=2)
    eps = 1e-6
    rates = {}
    for name, s in scores.items():
        rates[name] = torch.zeros_like(s)
        for index in range(s.numel()):
            ends = []
            for sign in (1, -1):
                moved = copy.deepcopy(net)
                with torch.no_grad():
                    dict(moved.named_parameters())[name].view(-1)[index] *= 1 - sign * eps
                ends.append(gradient_norm(moved, data, 3.0))
            rates[name].view(-1)[index] = (ends[0] - ends[1]) / (2 * eps)  # d‖g‖²/dε at ε = 0
    flat_scores = torch.cat([s.reshape(-1) for s in scores.values()])
    flat_rates = torch.cat([r.reshape(-1) for r in rates.values()])
    torch.testing.assert_close(flat_rates, -2 * flat_scores, rtol=1e-5, atol=1e-9 * flat_rates.abs().max())
    # The lowest score, pruned first, is the weight whose removal raises the gradient norm the most.
    assert flat_scores.argmin() == flat_rates.argmax() and flat_scores.min() < 0


# ---------------------------------------------------------------- the formula, independently

def reference_grasp(model, masks, data, mode, temperature):
    """θ ⊙ Hg of the masked net via torch.autograd.functional.hvp on the loss summed over batches."""
    net = copy.deepcopy(model).train(mode == "train")
    names = list(masks)
    params = dict(net.named_parameters())
    theta = tuple(params[n].detach().clone() for n in names)

    def loss(*weights):
        state = {**{k: p.detach() for k, p in params.items()}, **{n: w * masks[n] for n, w in zip(names, weights)}}
        state.update({k: b.clone() for k, b in net.named_buffers()})
        return sum(F.cross_entropy(torch.func.functional_call(net, state, (x,)) / temperature, y) for x, y in data)

    leaves = tuple(t.clone().requires_grad_(True) for t in theta)
    g = torch.autograd.grad(loss(*leaves), leaves)
    _, hg = torch.autograd.functional.hvp(loss, theta, g)
    return {n: t * masks[n] * h for n, t, h in zip(names, theta, hg)}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("temperature", [200.0, 1.0])
def test_grasp_equals_an_independent_hessian_vector_product(tiny_cnn, mode, temperature):
    masks, data = random_masks(tiny_cnn), batches()
    ours = compute_scores(tiny_cnn, GraSP(temperature=temperature, mode=mode), masks=masks, dataloader=data, num_batches=2)
    ref = reference_grasp(tiny_cnn, masks, data, mode, temperature)
    scale = max(r.abs().max() for r in ref.values())
    for n in masks:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-4, atol=1e-5 * scale)
        assert (ours[n][~masks[n]] == 0).all()
    assert max((ours[n] - ref[n]).abs().max() for n in masks) < 1e-3 * scale


def test_grasp_abs_is_the_absolute_value_of_grasp(tiny_cnn):
    data = batches()
    signed = compute_scores(tiny_cnn, "grasp", dataloader=data, num_batches=2)
    absolute = compute_scores(tiny_cnn, "grasp_abs", dataloader=data, num_batches=2)
    assert any((s < 0).any() for s in signed.values())
    assert all(torch.equal(absolute[n], signed[n].abs()) for n in signed)


def test_the_temperature_scales_the_logits():
    # Without it, the cubic loss of the hand case gives Hg = 2 f³ |x|² x = 48 (1, 1, 1).
    net, data = three_weights(), [(torch.ones(1, 3), None)]
    unscaled = compute_scores(net, GraSP(temperature=1), dataloader=data, loss_fn=cubic)["weight"]
    torch.testing.assert_close(unscaled, torch.tensor([[48.0, -96.0, 144.0]]))


# ---------------------------------------------------------------- the loop and the model

def test_model_comes_back_unchanged_in_train_mode_scoring(tiny_cnn):
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    tiny_cnn.eval()
    tiny_cnn.fc.weight.requires_grad_(False)
    grad = torch.ones_like(tiny_cnn.conv1.weight)
    tiny_cnn.conv1.weight.grad = grad
    compute_masks(tiny_cnn, GraSP(mode="train"), sparsity=0.9, dataloader=batches(), num_batches=2)
    assert not tiny_cnn.training and not tiny_cnn.bn1.training
    assert all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())  # BN running stats too
    assert not tiny_cnn.fc.weight.requires_grad and tiny_cnn.conv2.weight.requires_grad
    assert tiny_cnn.conv1.weight.grad is grad and tiny_cnn.conv2.weight.grad is None
    assert not tiny_cnn._forward_hooks  # the temperature hook is gone


def test_the_temperature_hook_is_removed_when_scoring_raises(tiny_cnn):
    def failing(model, batch):
        model(batch[0])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        compute_scores(tiny_cnn, "grasp", dataloader=batches(), loss_fn=failing)
    assert not tiny_cnn._forward_hooks


class Recording(GraSP):
    def __init__(self):
        super().__init__()
        self._seen = []

    def score(self, model, masks, context):
        self._seen.append({n: m.clone() for n, m in masks.items()})
        return super().score(model, masks, context)


@pytest.mark.parametrize("distribution", ["global", "uniform"])
def test_exact_counts_and_pruned_weights_never_return(tiny_cnn, distribution):
    scorer = Recording()
    final = compute_masks(tiny_cnn, scorer, sparsity=0.95, iterations=3, distribution=distribution, dataloader=batches(), num_batches=2)
    seen = [*scorer._seen, final]
    assert len(scorer._seen) == 3
    for t in range(1, 4):
        d = 0.05 ** (t / 3)
        if distribution == "global":
            assert sum(int(m.sum()) for m in seen[t].values()) == num_kept(d, sum(m.numel() for m in final.values()))
        else:
            assert all(int(m.sum()) == num_kept(d, m.numel()) for m in seen[t].values())
        assert all(not (seen[t][n] & ~seen[t - 1][n]).any() for n in final)


def test_defaults_and_registration():
    assert isinstance(get_scorer("grasp"), GraSP) and type(get_scorer("grasp_abs")) is GraSPAbs
    scorer = get_scorer("grasp")
    assert (scorer.temperature, scorer.mode, scorer.default_iterations, scorer.default_num_batches) == (200.0, "train", 1, 1)
    assert scorer.needs_data and scorer.monotone and GraSPAbs.needs_data
    assert repr(GraSPAbs(temperature=1, mode="eval")) == "GraSPAbs(temperature=1.0, mode='eval')"


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "200"])
def test_bad_temperature_is_rejected(bad):
    with pytest.raises(ValueError, match=r"`temperature` .* must be a finite number > 0, .* got "):
        GraSP(temperature=bad)


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match=r"`mode` .* must be one of \('train', 'eval'\), got 'test'"):
        GraSPAbs(mode="test")


def test_a_loss_that_never_calls_the_model_needs_temperature_one(tiny_cnn):
    data = [(torch.randn(4, 16), torch.randint(0, 4, (4,)))]
    head_only = lambda model, batch: F.cross_entropy(model.fc(batch[0]), batch[1])  # noqa: E731
    with pytest.raises(ValueError, match=r"GraSP\(temperature=200.0\) .* the loss never called TinyCNN itself .* temperature=1"):
        compute_scores(tiny_cnn, "grasp", dataloader=data, loss_fn=head_only, parameters=["fc.weight"])
    scores = compute_scores(tiny_cnn, GraSP(temperature=1), dataloader=data, loss_fn=head_only, parameters=["fc.weight"])
    assert scores["fc.weight"].abs().sum() > 0


def test_a_non_tensor_output_needs_temperature_one():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x), self.fc(x)

    data = [(torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    loss = lambda m, b: F.cross_entropy(m(b[0])[0], b[1])  # noqa: E731
    with pytest.raises(TypeError, match=r"divides the output of TwoHeads.forward .* returned tuple, .* temperature=1"):
        compute_scores(TwoHeads(), "grasp", dataloader=data, loss_fn=loss)
    compute_scores(TwoHeads(), GraSP(temperature=1), dataloader=data, loss_fn=loss)


def test_needs_data(tiny_cnn):
    with pytest.raises(ValueError, match=r"needs data: pass `dataloader`"):
        compute_masks(tiny_cnn, "grasp", sparsity=0.5)


# ---------------------------------------------------------------- data parallel (threads as ranks)

@pytest.mark.parametrize("scorer", ["grasp", "grasp_abs"])
def test_ranks_summing_g_then_hg_equal_one_process_over_the_union(tiny_cnn, scorer):
    data = batches()
    models = [copy.deepcopy(tiny_cnn) for _ in range(2)]
    per_rank = run_ranks(lambda r, ranks: compute_scores(models[r], scorer, dataloader=[data[r]], all_reduce=ranks.sum))
    union = compute_scores(tiny_cnn, scorer, dataloader=data, num_batches=2)
    scale = max(s.abs().max() for s in union.values())
    for n in union:
        torch.testing.assert_close(per_rank[0][n], per_rank[1][n], rtol=0, atol=0)
        torch.testing.assert_close(per_rank[0][n], union[n], rtol=1e-5, atol=1e-6 * scale)
    # Each rank on its own shard (no reduction) does not add up to it: the Hessian must meet the global g.
    alone = [compute_scores(tiny_cnn, "grasp", dataloader=[b]) for b in data]
    assert max(((alone[0][n] + alone[1][n]) - union[n]).abs().max() for n in union) > 0.1 * scale

    masks = run_ranks(lambda r, ranks: compute_masks(
        models[r], scorer, sparsity=0.9, iterations=2, dataloader=[data[r]], all_reduce=ranks.sum))
    single = compute_masks(tiny_cnn, scorer, sparsity=0.9, iterations=2, dataloader=data, num_batches=2)
    for n in single:
        assert torch.equal(masks[0][n], masks[1][n]) and torch.equal(masks[0][n], single[n])


# ---------------------------------------------------------------- Lightning

def test_callback_scores_the_training_step_loss_with_the_temperature():
    torch.manual_seed(0)
    model = MLP()  # training_step: cross_entropy(self(x), y), so the temperature divides the logits
    initial = copy.deepcopy(model)
    pruner = PruneAtInit(scorer="grasp", sparsity=0.9, num_batches=2, verbose=False)
    Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[pruner]).fit(model)
    data = list(torch.utils.data.DataLoader(random_data(), batch_size=8))[:2]
    expected = compute_masks(initial, "grasp", sparsity=0.9, dataloader=data, num_batches=2, parameters=list(pruner.masks))
    assert all(torch.equal(pruner.masks[n], expected[n]) for n in expected)
    assert not model._forward_hooks
