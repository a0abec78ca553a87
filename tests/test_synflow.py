import math

import pytest
import torch
from torch import nn

from lightning_synflow import Scorer, SynFlow, compute_masks, compute_scores, select_masks, select_prunable
from synflow_reference import reference_masks, reference_scores

from conftest import BiasFreeCNN, TinyCNN


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scores_equal_an_independent_computation_up_to_one_exact_power_of_two(tiny_cnn, image_batch, dtype):
    g = torch.Generator().manual_seed(0)
    masks = {n: torch.rand(p.shape, generator=g) < 0.7 for n, p in tiny_cnn.named_parameters() if n in select_prunable(tiny_cnn)}
    tiny_cnn.bn1.running_mean.normal_()  # abs() of buffers matters only when they are not zero
    ours = compute_scores(tiny_cnn, SynFlow(dtype), masks=masks, example_input=image_batch)
    ref, R = reference_scores(tiny_cnn, masks, image_batch.shape[1:], getattr(torch, dtype))
    scale = 2.0 ** -math.frexp(R)[1]
    for n in masks:
        assert ours[n].dtype == getattr(torch, dtype)
        assert torch.equal(ours[n], ref[n] * scale)
        assert (ours[n][~masks[n]] == 0).all()  # masked weights score 0
        assert (ours[n][masks[n]] > 0).any()


def test_iterative_masks_equal_a_naive_loop_that_rescores_a_fresh_copy_every_round():
    """The linearised weights are built once, overwritten by scores and restored by copysign each round
    (newly pruned marked -0.0), only the living weights are scored and ranked once few are alive: none of
    it may change a mask."""
    from lightning_synflow import models

    torch.manual_seed(0)
    net = models.resnet20()
    names = select_prunable(net)
    shape = (3, 32, 32)
    ours = compute_masks(net, "synflow", compression=100, iterations=20, example_input=torch.ones(1, *shape))
    ref = reference_masks(net, names, 0.01, 20, shape, torch.float32)
    assert all(torch.equal(ours[n], ref[n]) for n in names)


def test_given_the_living_positions_synflow_scores_just_those_and_the_same():
    from lightning_synflow.scorers.base import LivingWeights, ScoringContext

    torch.manual_seed(0)
    net = TinyCNN()
    names = select_prunable(net)
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(p.shape, generator=g) < 0.3 for n, p in net.named_parameters() if n in names}
    x = torch.ones(1, 3, 8, 8)
    full = SynFlow().score(net, masks, ScoringContext(example_input=x))
    positions = {n: m.view(-1).nonzero().squeeze(1).to(torch.int32) for n, m in masks.items()}
    context = ScoringContext(example_input=x)
    scorer = SynFlow()
    living = scorer.score_round(net, LivingWeights(masks, positions=positions), scorer.start(net, masks, context), context)
    for n in names:
        assert living[n].shape == (int(masks[n].sum()),)
        assert torch.equal(living[n], full[n].view(-1)[positions[n].long()])
        assert (full[n][~masks[n]] == 0).all()


class WithAnUnusedHead(TinyCNN):
    """A second head that forward never calls: no synaptic flow reaches its weights."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Linear(16, 4)


@pytest.mark.parametrize("listed", [False, True], ids=["dense", "living positions"])
def test_weights_the_output_never_reaches_score_exactly_zero(listed):
    from lightning_synflow.scorers.base import LivingWeights, ScoringContext

    torch.manual_seed(0)
    net = WithAnUnusedHead()
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if n in select_prunable(net)}
    masks["conv2.weight"].view(-1)[::3] = False
    positions = {n: m.view(-1).nonzero().squeeze(1).to(torch.int32) for n, m in masks.items()}
    context, scorer = ScoringContext(example_input=torch.ones(1, 3, 8, 8)), SynFlow()
    living = LivingWeights(masks, positions=positions if listed else None)
    scores = scorer.score_round(net, living, scorer.start(net, masks, context), context)
    assert "unused.weight" in masks
    expected_shape = positions["unused.weight"].shape if listed else masks["unused.weight"].shape
    assert scores["unused.weight"].shape == expected_shape
    assert (scores["unused.weight"] == 0).all()
    living = scores["conv2.weight"] if listed else scores["conv2.weight"][masks["conv2.weight"]]
    assert living.numel() == int(masks["conv2.weight"].sum()) and (living > 0).all()


def test_conservation_law_per_neuron_and_per_layer():
    torch.manual_seed(0)
    net = BiasFreeCNN()
    s = compute_scores(net, "synflow", example_input=torch.zeros(1, 3, 8, 8))
    pairs = [
        (s["c1.weight"].sum((1, 2, 3)), s["c2.weight"].sum((0, 2, 3))),
        (s["c2.weight"].sum((1, 2, 3)), s["c3.weight"].sum((0, 2, 3))),
        (s["c3.weight"].sum((1, 2, 3)), s["fc.weight"].view(3, 4, 36).sum((0, 2))),
    ]
    for incoming, outgoing in pairs:  # each neuron (channel): score flowing in == score flowing out
        torch.testing.assert_close(incoming, outgoing, rtol=1e-5, atol=0)
    totals = torch.stack([v.sum() for v in s.values()])  # every layer carries the same total R
    torch.testing.assert_close(totals, totals[0].expand(4), rtol=1e-5, atol=0)


def test_model_comes_back_exactly_as_it_came():
    torch.manual_seed(0)
    net = TinyCNN().train()
    net.conv1.half().float()  # values representable in both dtypes
    net.fc.to(torch.float64)
    net.bn1.eval()
    net.conv2.weight.requires_grad_(False)
    net.fc.weight.grad = torch.full_like(net.fc.weight, 3.0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    modes = [m.training for m in net.modules()]
    compute_masks(net, "synflow", sparsity=0.9, iterations=3, example_input=torch.randn(1, 3, 8, 8))
    for k, v in net.state_dict().items():
        assert v.dtype == state[k].dtype and torch.equal(v, state[k]), k
    assert [m.training for m in net.modules()] == modes
    assert [p.requires_grad for p in net.parameters()] == [True, True, True, True, False, True, True]
    assert torch.equal(net.fc.weight.grad, torch.full_like(net.fc.weight, 3.0))
    assert net.conv1.weight.grad is None


class Exploding(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        raise RuntimeError("boom")


def test_model_modes_are_restored_when_scoring_raises():
    net = Exploding().train()
    with pytest.raises(RuntimeError, match="boom"):
        compute_scores(net, "synflow", example_input=torch.ones(1, 3))
    assert net.training and net.fc.training


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_scoring_runs_in_the_scorers_dtype_whatever_the_model_dtype(image_batch, dtype):
    torch.manual_seed(0)
    net = TinyCNN().to(torch.bfloat16)
    masks = compute_masks(net, SynFlow(dtype), sparsity=0.8, iterations=5, example_input=image_batch.bfloat16())
    scores = compute_scores(net, SynFlow(dtype), masks=masks, example_input=image_batch)
    assert all(s.dtype == getattr(torch, dtype) and torch.isfinite(s).all() for s in scores.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.2 * sum(m.numel() for m in masks.values()))
    assert all(p.dtype == torch.bfloat16 for p in net.parameters())


def test_float32_default_matches_float64_on_a_shallow_net(image_batch):
    torch.manual_seed(0)
    net = BiasFreeCNN()
    x = torch.zeros(1, 3, 8, 8)
    a = compute_masks(net, "synflow", sparsity=0.9, iterations=10, example_input=x)
    b = compute_masks(net, SynFlow("float64"), sparsity=0.9, iterations=10, example_input=x)
    agree = sum(int((a[n] == b[n]).sum()) for n in a) / sum(a[n].numel() for n in a)
    assert agree > 0.999  # float32 rounding may swap near-equal neighbours at the threshold


def test_synflow_needs_an_input_shape(tiny_cnn):
    with pytest.raises(ValueError, match=r"needs `example_input`: any tensor of the model's input shape"):
        compute_masks(tiny_cnn, "synflow", sparsity=0.5)


def test_unknown_dtype_is_rejected():
    with pytest.raises(ValueError, match=r"SynFlow `dtype` must be one of \['float32', 'float64'\], got 'float16'"):
        SynFlow("float16")


def _all_kept(net, names):
    return {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if n in names}


@pytest.mark.parametrize(("depth", "log10_R"), [(56, 70), (110, 139)])
def test_deep_cifar_resnets_prune_iteratively_without_collapse_and_equal_to_float64(depth, log10_R):
    from lightning_synflow import models

    torch.manual_seed(0)
    net = getattr(models, f"resnet{depth}")()
    names = select_prunable(net)
    shape = (3, 32, 32)
    # The flow of the linearised net is far beyond float32 (3e38): the default float32 scorer moves to float64.
    _, R = reference_scores(net, _all_kept(net, names), shape)
    assert math.isfinite(R) and abs(math.log10(R) - log10_R) < 5
    _, R32 = reference_scores(net, _all_kept(net, names), shape, torch.float32)
    assert not math.isfinite(R32)

    ours = compute_masks(net, "synflow", compression=100, iterations=20, example_input=torch.zeros(1, *shape))
    total = sum(m.numel() for m in ours.values())
    assert list(ours) == names
    assert sum(int(m.sum()) for m in ours.values()) == round(total / 100)
    collapsed = [n for n in names if not ours[n].any()]
    assert all("shortcut" in n for n in collapsed), collapsed  # only 1x1 shortcuts may empty (a skip path stays)
    # Kept weights whose every path was cut in the last round score exactly 0 (they are dead), as in float64.
    scores = compute_scores(net, "synflow", masks=ours, example_input=torch.zeros(1, *shape))
    ref_scores, _ = reference_scores(net, ours, shape)
    assert all(torch.isfinite(s).all() and torch.equal(s > 0, ref_scores[n] > 0) for n, s in scores.items())
    ref = reference_masks(net, names, 0.01, 20, shape)
    assert all(torch.equal(ours[n], ref[n]) for n in names)


@pytest.mark.parametrize("arch", ["resnet152", "vgg19"])
def test_imagenet_networks_score_finite_exact_and_equal_to_float64(arch):
    """torchvision's ResNet-152 reaches R ~ 1e220: a naive float32 pass is NaN, and float64 scores cast to
    float32 overflow. One scoring round is checked against the naive float64 computation."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)()
    names = select_prunable(net)
    shape = (3, 32, 32)
    x = torch.zeros(1, *shape)
    ref_scores, R = reference_scores(net, _all_kept(net, names), shape)
    assert math.isfinite(R)
    if arch == "resnet152":
        assert R > 1e200 and any(not torch.isfinite(s.float()).all() for s in ref_scores.values())
    ours = compute_scores(net, SynFlow("float64"), example_input=x)
    scale = 2.0 ** -math.frexp(R)[1]
    for n in names:  # bit-equal to float64 up to one exact power of two: finite, O(1), zero only where dead
        assert torch.equal(ours[n], ref_scores[n] * scale), n
        assert torch.isfinite(ours[n]).all() and ours[n].max() <= 1
    masks = select_masks(ours, 0.1)
    assert sum(int(m.sum()) for m in masks.values()) == round(sum(m.numel() for m in masks.values()) / 10)
    lowest_kept = min(float(ours[n][masks[n]].min()) for n in names if masks[n].any())
    highest_pruned = max(float(ours[n][~masks[n]].max()) for n in names if (~masks[n]).any())
    assert lowest_kept >= highest_pruned


def test_float32_falls_back_to_float64_when_the_flow_overflows():
    from lightning_synflow import models

    torch.manual_seed(0)
    net = models.resnet110()
    x = torch.zeros(1, 3, 32, 32)
    a = compute_masks(net, SynFlow("float32"), compression=10, iterations=1, example_input=x)
    b = compute_masks(net, SynFlow("float64"), compression=10, iterations=1, example_input=x)
    assert all(torch.equal(a[n], b[n]) for n in a)


class NaNScorer(Scorer):
    def score(self, model, masks, context):
        return {n: torch.full(m.shape, float("nan")) for n, m in masks.items()}


def test_non_finite_scores_are_an_error_naming_the_tensors(tiny_cnn):
    with pytest.raises(FloatingPointError, match=r"produced non-finite scores for \['conv1.weight', 'conv2.weight', 'fc.weight'\]"):
        compute_masks(tiny_cnn, NaNScorer(), sparsity=0.5)


# ---------------------------------------------------------------- token inputs and buffers


class TokenLM(nn.Module):
    """Token and position embeddings, a hidden layer, and a head tied to the token embedding."""

    def __init__(self, vocab=20, dim=6, length=5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(length, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, tokens):
        tokens = tokens.view(-1, tokens.shape[-1])  # a view still reads the token input
        positions = torch.arange(tokens.shape[1])
        return self.head(torch.relu(self.mix(self.embed(tokens) + self.pos(positions))))


def test_token_models_are_scored_as_one_hot_networks_with_positions_as_biases_and_the_tied_head_through_both_uses():
    """The embedding of the all-ones one-hot input is the sum of |W|'s rows; the position embedding, looked
    up with arange, enters as its absolute rows; the tied |W| gets the gradient of both its uses."""
    torch.manual_seed(0)
    net = TokenLM()
    masks = {n: torch.rand(p.shape) < 0.6 for n, p in net.named_parameters() if n in ("embed.weight", "mix.weight")}
    ours = compute_scores(net, SynFlow("float64"), masks=masks, example_input=torch.randint(0, 20, (3, 5)))

    W, P, M, b = (t.detach().double().abs() for t in (net.embed.weight, net.pos.weight, net.mix.weight, net.mix.bias))
    W = (W * masks["embed.weight"]).requires_grad_(True)
    M = (M * masks["mix.weight"]).requires_grad_(True)
    one_hot = torch.ones(5, 20, dtype=torch.float64)  # every token at every position
    R = (torch.relu((one_hot @ W + P) @ M.T + b) @ W.T).sum()
    R.backward()
    scale = 2.0 ** -math.frexp(R.item())[1]
    torch.testing.assert_close(ours["embed.weight"], W.detach() * W.grad * scale, rtol=1e-12, atol=0)
    torch.testing.assert_close(ours["mix.weight"], M.detach() * M.grad * scale, rtol=1e-12, atol=0)


class BiasFreeTokenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 5)
        self.fc1 = nn.Linear(5, 4, bias=False)
        self.fc2 = nn.Linear(4, 3, bias=False)

    def forward(self, tokens):
        return self.fc2(torch.relu(self.fc1(self.embed(tokens)))).sum(1)


def test_conservation_law_holds_through_an_embedding():
    torch.manual_seed(0)
    net = BiasFreeTokenNet()
    s = compute_scores(net, SynFlow("float64"), parameters=["embed.weight", "fc1.weight", "fc2.weight"],
                       example_input=torch.zeros(2, 4, dtype=torch.long))
    torch.testing.assert_close(s["embed.weight"].sum(0), s["fc1.weight"].sum(0), rtol=1e-12, atol=0)  # per neuron
    torch.testing.assert_close(s["fc1.weight"].sum(1), s["fc2.weight"].sum(0), rtol=1e-12, atol=0)
    totals = torch.stack([v.sum() for v in s.values()])
    torch.testing.assert_close(totals, totals[0].expand(3), rtol=1e-12, atol=0)


class CopiesItsTokens(BiasFreeTokenNet):
    def forward(self, tokens):
        return super().forward(tokens.clone())


def test_integer_input_that_no_embedding_reads_is_a_clear_error():
    with pytest.raises(ValueError, match=r"SynFlow was given integer \(token\) input, but no nn.Embedding of CopiesItsTokens looks it up"):
        compute_masks(CopiesItsTokens(), "synflow", sparsity=0.5, example_input=torch.zeros(1, 4, dtype=torch.long))


class RawImages(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x.float() / 255)


def test_uint8_images_are_not_tokens():
    scores = compute_scores(RawImages(), "synflow", example_input=torch.zeros(1, 4, dtype=torch.uint8))
    assert (scores["fc.weight"] > 0).all()


class CausalMixer(nn.Module):
    """Attention-like mixing over positions with a causal mask of -inf kept as a buffer."""

    def __init__(self, length=4):
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.register_buffer("mask", torch.full((length, length), float("-inf")).triu(1))
        self.register_buffer("offset", -torch.ones(3))

    def forward(self, x):
        h = self.fc(x) + self.offset
        weights = torch.softmax(h @ h.transpose(-1, -2) + self.mask, -1)
        return weights @ h


def test_buffers_other_than_normalisation_statistics_enter_as_they_are():
    torch.manual_seed(0)
    net = CausalMixer()
    ours = compute_scores(net, SynFlow("float64"), example_input=torch.randn(2, 4, 3))
    W, b = net.fc.weight.detach().double().abs().requires_grad_(True), net.fc.bias.detach().double().abs()
    h = torch.ones(4, 3, dtype=torch.float64) @ W.T + b - 1  # the offset stays -1
    R = (torch.softmax(h @ h.T + net.mask.double(), -1) @ h).sum()  # the mask stays -inf above the diagonal
    R.backward()
    scale = 2.0 ** -math.frexp(R.item())[1]
    torch.testing.assert_close(ours["fc.weight"], (W * W.grad).abs().detach() * scale, rtol=1e-12, atol=0)


def test_frozen_batchnorm_buffers_are_normalisation_statistics_like_batchnorms():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = TinyCNN().eval()
    with torch.no_grad():
        for t in (net.bn1.weight, net.bn1.bias, net.bn1.running_mean):
            t.normal_()
        net.bn1.running_var.uniform_(0.5, 2)
    frozen = TinyCNN()
    frozen.load_state_dict(net.state_dict())
    frozen.bn1 = torchvision.ops.FrozenBatchNorm2d(8, eps=net.bn1.eps)
    frozen.bn1.load_state_dict({k: v for k, v in net.bn1.state_dict().items() if k != "num_batches_tracked"})
    x = torch.ones(1, 3, 8, 8)
    a, b = (compute_scores(m, SynFlow("float64"), example_input=x) for m in (net, frozen))
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=1e-9, atol=0)


def test_an_incremental_scorer_must_be_monotone():
    from lightning_synflow import IncrementalScorer

    with pytest.raises(TypeError, match="Revivals sets monotone = False, but an IncrementalScorer must be monotone"):
        class Revivals(IncrementalScorer):
            monotone = False
