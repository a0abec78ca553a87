import copy

import pytest
import torch
from torch import nn

import lightning_synflow.scorers.ntksap  # noqa: F401  (registers "ntksap")
from lightning_synflow import Scorer, compute_masks, compute_scores, get_scorer, num_kept
from lightning_synflow.scorers.ntksap import NTKSAP, NTKSAPDraw

X = torch.zeros(1, 3, 8, 8)


class Spy(Scorer):
    def __init__(self, inner):
        self.inner = inner
        self.seen = []
        self.default_iterations = inner.default_iterations
        self.monotone = inner.monotone
        self.needs_input = inner.needs_input

    def score(self, model, masks, context):
        self.seen.append({n: m.clone() for n, m in masks.items()})
        return self.inner.score(model, masks, context)


class Injected(NTKSAP):
    """NTK-SAP with its random draws given: the i-th batch it scores uses draws[i % len(draws)]."""

    def __init__(self, draws, **kwargs):
        super().__init__(**kwargs)
        self._draws = draws
        self._calls = 0

    def draw(self, model, masks, example_input, generator):
        self._calls += 1
        return self._draws[(self._calls - 1) % len(self._draws)]


class Recording(NTKSAP):
    """NTK-SAP that keeps every draw it made."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._made = []

    def draw(self, model, masks, example_input, generator):
        self._made.append(super().draw(model, masks, example_input, generator))
        return self._made[-1]


def random_masks(model, p=0.6, seed=3):
    g = torch.Generator().manual_seed(seed)
    return {n: torch.rand(w.shape, generator=g) < p for n, w in model.named_parameters() if n.endswith("weight") and w.dim() > 1}


def fixed_draw(model, masks, seed, dtype=torch.float64, batch=5):
    g = torch.Generator().manual_seed(seed)
    params = {n: torch.randn(p.shape, generator=g, dtype=dtype) * 0.5 for n, p in model.named_parameters()}
    perturbation = {n: torch.randn(masks[n].shape, generator=g, dtype=dtype) for n in masks}
    return NTKSAPDraw(params=params, perturbation=perturbation, inputs=torch.randn(batch, 3, 8, 8, generator=g, dtype=dtype))


def reference_ntksap(model, masks, draws, epsilon, mode):
    """The published recipe on deep copies with ordinary modules: load the fresh weights θ⊙c; for "calibrated",
    reset BatchNorm, set its momentum to 1 and run one no-grad forward in train mode, then evaluate both nets in
    eval mode on those statistics; S = Σ‖f(θ⊙c) − f((θ+εδ)⊙c)‖², and by the chain rule
    ∂S/∂c = θ ⊙ ∂S/∂w₁ + (θ+εδ) ⊙ ∂S/∂w₂."""
    total = {n: torch.zeros(m.shape, dtype=torch.float64) for n, m in masks.items()}
    for d in draws:
        net = copy.deepcopy(model)
        with torch.no_grad():
            for n, p in net.named_parameters():
                p.copy_(d.params[n] * masks[n] if n in masks else d.params[n])
        if mode == "calibrated":
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                    m.momentum = 1.0
            net.train()
            with torch.no_grad():
                net(d.inputs)
        net.train(mode == "train")
        perturbed = copy.deepcopy(net)
        with torch.no_grad():
            for n in masks:
                perturbed.get_parameter(n).copy_((d.params[n] + epsilon * d.perturbation[n]) * masks[n])
        ((net(d.inputs) - perturbed(d.inputs)) ** 2).sum().backward()
        for n in masks:
            total[n] += d.params[n] * net.get_parameter(n).grad
            total[n] += (d.params[n] + epsilon * d.perturbation[n]) * perturbed.get_parameter(n).grad
    return {n: total[n].abs() * masks[n] for n in masks}


@pytest.mark.parametrize("mode", ["calibrated", "train", "eval"])
def test_scores_equal_an_independent_computation_on_given_draws(tiny_cnn, mode):
    model = tiny_cnn.double()
    with torch.no_grad():  # running statistics that differ from the defaults, to see which ones are used
        model.bn1.running_mean.uniform_(-1, 1)
        model.bn1.running_var.uniform_(0.5, 2)
    masks = random_masks(model)
    draws = [fixed_draw(model, masks, seed) for seed in (1, 2)]
    ours = compute_scores(model, Injected(draws, batches=2, mode=mode, epsilon=0.05), masks=masks, example_input=X.double())
    ref = reference_ntksap(model, masks, draws, 0.05, mode)
    for n in masks:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-9, atol=1e-12)
        assert (ours[n][~masks[n]] == 0).all() and (ours[n][masks[n]] > 0).any()


def test_modes_give_different_scores(tiny_cnn):
    masks = random_masks(tiny_cnn)
    draws = [fixed_draw(tiny_cnn, masks, 1, dtype=torch.float32)]
    scores = [compute_scores(tiny_cnn, Injected(draws, mode=m), masks=masks, example_input=X) for m in ("calibrated", "train", "eval")]
    for a, b in [(0, 1), (0, 2), (1, 2)]:
        assert not torch.allclose(scores[a]["conv1.weight"], scores[b]["conv1.weight"])


@pytest.mark.parametrize("weights", ["resample", "reset_parameters"])
@pytest.mark.parametrize("mode", ["calibrated", "train", "eval"])
def test_the_real_weights_statistics_and_modes_are_untouched(tiny_cnn, mode, weights):
    tiny_cnn.eval()
    tiny_cnn.conv1.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_cnn.state_dict().items()}
    compute_masks(tiny_cnn, NTKSAP(mode=mode, weights=weights, batches=2, batch_size=8), sparsity=0.9, iterations=3, example_input=X)
    assert all(torch.equal(v, before[k]) for k, v in tiny_cnn.state_dict().items())
    assert not any(m.training for m in tiny_cnn.modules())
    assert not tiny_cnn.conv1.bias.requires_grad and tiny_cnn.conv1.weight.requires_grad
    assert all(p.grad is None for p in tiny_cnn.parameters())


def test_fresh_weights_inputs_and_perturbations_for_every_batch(tiny_cnn):
    scorer = Recording(batches=3, batch_size=7)
    compute_masks(tiny_cnn, scorer, sparsity=0.9, iterations=2, example_input=X)
    made = scorer._made
    assert len(made) == 6  # 3 batches in each of 2 rounds
    params = dict(tiny_cnn.named_parameters())
    for d in made:
        assert d.inputs.shape == (7, 3, 8, 8)
        assert list(d.perturbation) == ["conv1.weight", "conv2.weight", "fc.weight"]
        for n, p in params.items():
            assert d.params[n].shape == p.shape
            assert torch.isin(d.params[n], p.detach()).all()  # drawn from the tensor's own initial values
        assert torch.equal(d.params["bn1.weight"], torch.ones(8))  # a constant init stays constant
    for i in range(len(made)):
        for j in range(i):
            assert not torch.equal(made[i].inputs, made[j].inputs)
            assert not torch.equal(made[i].perturbation["conv2.weight"], made[j].perturbation["conv2.weight"])
            for n in ("conv1.weight", "conv2.weight", "fc.weight", "conv1.bias"):
                assert not torch.equal(made[i].params[n], made[j].params[n]), n
    assert not any(torch.equal(d.params["conv2.weight"], params["conv2.weight"]) for d in made)


def test_reset_parameters_draws_a_default_initialised_network(tiny_cnn):
    with torch.no_grad():
        tiny_cnn.fc.weight.fill_(7.0)
    scorer = Recording(weights="reset_parameters", seed=0)
    compute_scores(tiny_cnn, scorer, example_input=X)
    fresh = scorer._made[0].params
    bound = 1 / 16**0.5  # nn.Linear(16, 4)'s default init is U(-1/sqrt(16), 1/sqrt(16))
    assert fresh["fc.weight"].abs().max() <= bound and fresh["fc.weight"].std() > bound / 4
    assert torch.equal(tiny_cnn.fc.weight, torch.full((4, 16), 7.0))


def test_twenty_exponential_rounds_exact_counts_monotone(tiny_cnn):
    spy = Spy(get_scorer("ntksap"))
    assert type(spy.inner) is NTKSAP and spy.inner.name == "ntksap"
    assert spy.inner.needs_input and not spy.inner.needs_data and spy.inner.monotone
    assert (spy.inner.epsilon, spy.inner.mode, spy.inner.batches) == (0.01, "calibrated", 1)
    final = compute_masks(tiny_cnn, spy, sparsity=0.99, example_input=X)
    n = sum(m.numel() for m in final.values())
    seen = [*spy.seen, final]
    assert len(spy.seen) == 20
    for t in range(1, 21):
        assert kept(seen[t]) == num_kept(0.01 ** (t / 20), n)
        assert all(not (seen[t][k] & ~seen[t - 1][k]).any() for k in final)  # a pruned weight never returns


def kept(masks):
    return sum(int(m.sum()) for m in masks.values())


def test_reproducible_with_a_seed_and_with_the_global_generator(tiny_cnn):
    for weights in ("resample", "reset_parameters"):
        state = torch.get_rng_state()
        a, b = (compute_masks(tiny_cnn, NTKSAP(seed=3, weights=weights), sparsity=0.9, iterations=3, example_input=X) for _ in range(2))
        assert torch.equal(torch.get_rng_state(), state)  # a seeded scorer leaves the global generator alone
        assert all(torch.equal(a[n], b[n]) for n in a)
    s3, s4 = (compute_scores(tiny_cnn, NTKSAP(seed=s), example_input=X) for s in (3, 4))
    assert not torch.equal(s3["conv2.weight"], s4["conv2.weight"])
    torch.manual_seed(5)
    x = compute_scores(tiny_cnn, "ntksap", example_input=X)
    torch.manual_seed(5)
    y = compute_scores(tiny_cnn, "ntksap", example_input=X)
    z = compute_scores(tiny_cnn, "ntksap", example_input=X)
    assert all(torch.equal(x[n], y[n]) for n in x)
    assert not torch.equal(y["conv2.weight"], z["conv2.weight"])


def test_gradients_are_summed_over_ranks_before_the_absolute_value(tiny_cnn):
    """Two ranks simulated in one process: rank 1's signed gradient is recorded, then added by rank 0's all_reduce;
    the scores equal one process scoring both batches, |g₀ + g₁| (not |g₀| + |g₁|)."""
    masks = random_masks(tiny_cnn)
    d0, d1 = (fixed_draw(tiny_cnn, masks, s, dtype=torch.float32) for s in (1, 2))
    recorded = []
    compute_scores(tiny_cnn, Injected([d1]), masks=masks, example_input=X, all_reduce=lambda t: recorded.append(t.clone()) or t)
    calls = []
    summed = compute_scores(tiny_cnn, Injected([d0]), masks=masks, example_input=X, all_reduce=lambda t: calls.append(1) or t + recorded[0])
    union = compute_scores(tiny_cnn, Injected([d0, d1], batches=2), masks=masks, example_input=X)
    apart = [compute_scores(tiny_cnn, Injected([d]), masks=masks, example_input=X) for d in (d0, d1)]
    assert len(calls) == 1
    for n in masks:
        torch.testing.assert_close(summed[n], union[n], rtol=1e-5, atol=1e-9)
    assert not torch.allclose(union["conv1.weight"], apart[0]["conv1.weight"] + apart[1]["conv1.weight"])


class TwoInputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(3, 6)
        self.norm = nn.BatchNorm1d(6)
        self.out = nn.Linear(6, 2)

    def forward(self, x, y):
        return {"logits": self.out(torch.relu(self.norm(self.a(x) + self.b(y))))}


def test_tuple_inputs_and_dict_outputs():
    torch.manual_seed(0)
    model = TwoInputs()
    masks = compute_masks(model, NTKSAP(batch_size=16, seed=0), sparsity=0.5, iterations=4, example_input=(torch.zeros(1, 5), torch.zeros(1, 3)))
    assert kept(masks) == num_kept(0.5, 30 + 18 + 12)


def test_errors(tiny_cnn):
    for kwargs, match in [
        ({"epsilon": 0}, r"`epsilon` .* must be a finite number > 0, got 0"),
        ({"epsilon": float("inf")}, r"`epsilon` .* got inf"),
        ({"batches": 0}, r"`batches` must be a positive integer, got 0"),
        ({"batch_size": 2.5}, r"`batch_size` must be a positive integer, got 2.5"),
        ({"mode": "test"}, r"`mode` .* must be one of \('calibrated', 'train', 'eval'\), got 'test'"),
        ({"weights": "xavier"}, r"`weights` .* must be one of \('resample', 'reset_parameters'\), got 'xavier'"),
        ({"seed": "1"}, r"NTKSAP `seed` must be an int or None, got '1'"),
    ]:
        with pytest.raises(ValueError, match=match):
            NTKSAP(**kwargs)
    with pytest.raises(ValueError, match=r"needs `example_input`"):
        compute_masks(tiny_cnn, "ntksap", sparsity=0.5)
    with pytest.raises(TypeError, match=r"Gaussian noise .* must be a floating tensor"):
        compute_masks(nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2)), "ntksap", sparsity=0.5, example_input=torch.zeros(1, 3, dtype=torch.long))
    bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, momentum=0.0), nn.Linear(4, 2))
    with pytest.raises(ValueError, match=r"cannot calibrate 1: its momentum is 0"):
        compute_masks(bn, "ntksap", sparsity=0.5, example_input=torch.zeros(1, 4))
