"""shrink() on architectures the other channel tests do not use: every case computes what the masked model
computes (float64, eval and training mode) or is refused with this package's message, before anything is
returned or any weight changes."""

import copy
import warnings

import pytest
import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from lightning_synflow import apply_masks, compute_masks
from lightning_synflow.selection.channels import _call, _tensors, channel_groups, shrink, shrink_


class GroupedConv(nn.Module):
    """A grouped convolution (groups=4, not depthwise) after a BatchNorm, between two plain convolutions."""

    def __init__(self):
        super().__init__()
        self.c0, self.b0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.c1, self.b1 = nn.Conv2d(16, 32, 3, padding=1, groups=4), nn.BatchNorm2d(32)
        self.c2, self.b2 = nn.Conv2d(32, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(F.relu(self.b0(self.c0(x))))))
        return self.fc(F.relu(self.b2(self.c2(x))).mean((2, 3)))


class NotZeroAtZero(nn.Module):
    """Activations with act(0) != 0, functional and modules, before a Linear layer, a 1x1 convolution, a
    BatchNorm and a padded convolution."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 1)  # reads sigmoid(0) = 0.5: folds into its bias
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)  # reads softplus(0) through zero padding: cannot fold
        self.c3 = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)  # sigmoid, then a BatchNorm whose channel is masked: zero again
        self.f0, self.f1 = nn.Linear(8, 16), nn.Linear(16, 4)
        self.act = nn.Softplus()

    def forward(self, x):
        x = self.c2(torch.sigmoid(self.c1(torch.sigmoid(self.c0(x)))))
        x = self.bn(torch.sigmoid(self.c3(self.act(x))))
        return self.f1(F.softplus(self.f0(x.mean((2, 3)))))


class FreeNorm(nn.Module):
    """sigmoid, then a BatchNorm without affine parameters: a pruned channel reads 0 in training mode but
    (0.5 - mean) / std in eval mode, so it cannot be folded."""

    def __init__(self):
        super().__init__()
        self.a, self.bn, self.b, self.c = nn.Linear(8, 16), nn.BatchNorm1d(16, affine=False), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x):
        return self.c(torch.relu(self.b(self.bn(torch.sigmoid(self.a(x))))))


class LinearAttention(nn.Module):
    """Attention written with Linear layers and scaled_dot_product_attention, then an MLP."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(16, 16) for _ in range(4))
        self.up, self.down, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 4)

    def forward(self, x):
        b, t, _ = x.shape

        def heads(y):
            return y.view(b, t, 2, 8).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.q(x)), heads(self.k(x)), heads(self.v(x)))
        x = x + self.o(y.transpose(1, 2).reshape(b, t, 16))
        return self.head(self.down(F.gelu(self.up(x))).mean(1))


class TrainOnlyBranch(nn.Module):
    """An auxiliary head that runs in training mode only (GoogLeNet's kind)."""

    def __init__(self):
        super().__init__()
        self.c0, self.c1, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Linear(8, 4)
        self.aux, self.aux_fc = nn.Conv2d(8, 8, 1), nn.Linear(8, 4)

    def forward(self, x):
        x = F.relu(self.c0(x))
        out = self.fc(F.relu(self.c1(x)).mean((2, 3)))
        if self.training:
            return out, self.aux_fc(F.relu(self.aux(x)).mean((2, 3)))
        return out


def bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=64, max_position_embeddings=32)  # the default architecture, small
    return transformers.BertForSequenceClassification(config)


def gpt2():
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, n_positions=32, bos_token_id=0,
                                     eos_token_id=0)  # default options (use_cache=True: the cache in the outputs)
    return transformers.GPT2LMHeadModel(config)


_G = torch.Generator().manual_seed(0)
IMAGE, TOKENS = torch.randn(2, 3, 16, 16, generator=_G), {"input_ids": torch.randint(64, (2, 8), generator=_G)}
# name: builder, example input, the layers whose channels must stay whole (their weights' masks all kept)
EXACT = {
    "grouped_conv": (GroupedConv, IMAGE, ["c0.weight", "c1.weight"]),
    "not_zero_at_zero": (NotZeroAtZero, IMAGE, ["c1.weight"]),  # c1's channels reach c2 as softplus(sigmoid(0))
    "free_norm": (FreeNorm, torch.randn(4, 8, generator=_G), ["a.weight"]),
    "linear_attention": (LinearAttention, torch.randn(2, 5, 16, generator=_G), ["q.weight", "k.weight", "v.weight", "o.weight"]),
    "train_only_branch": (TrainOnlyBranch, IMAGE, ["c0.weight", "aux.weight"]),
    "googlenet": (lambda: torchvision.models.googlenet(num_classes=4, aux_logits=True, init_weights=False),
                  torch.randn(2, 3, 64, 64, generator=_G), ["aux1.conv.conv.weight", "inception4a.branch1.conv.weight"]),
    "regnet_grouped_se": (lambda: torchvision.models.regnet_y_400mf(num_classes=4), torch.randn(2, 3, 32, 32, generator=_G),
                          ["trunk_output.block1.block1-0.f.b.0.weight"]),
    "bert": (bert, TOKENS, ["bert.encoder.layer.0.attention.self.query.weight",
                            "bert.encoder.layer.0.attention.self.value.weight",
                            "bert.encoder.layer.0.attention.output.dense.weight"]),
}


def outputs64(model, x, training):
    """The model's output tensors in float64 on 8 samples of ``x``'s shape (batch statistics of two samples are
    too ill-conditioned to compare), dropout modules off (the same random draws otherwise)."""
    model = copy.deepcopy(model).to(torch.float64).train(training)
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()
    gen = torch.Generator().manual_seed(1)
    x = ({k: v.repeat(4, 1) for k, v in x.items()} if isinstance(x, dict)
         else torch.randn(8, *x.shape[1:], generator=gen, dtype=torch.float64))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        return _tensors(_call(model, x))


@pytest.mark.parametrize("name", list(EXACT))
def test_shrink_is_exact_in_eval_and_training_mode_or_keeps_the_channels_whole(name):
    build, x, whole = EXACT[name]
    torch.manual_seed(0)
    model = build()
    masks = compute_masks(model, "magnitude", sparsity=0.5, granularity="channel", distribution="uniform", example_input=x)
    for layer in whole:
        assert bool(masks.get(layer, torch.ones(1, dtype=torch.bool)).all()), f"{layer} lost channels"
    small = shrink(model, masks, x)
    masked = copy.deepcopy(model)
    apply_masks(masked, masks)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    for training in (False, True):
        expected, got = outputs64(masked, x, training), outputs64(small, x, training)
        assert len(got) == len(expected)
        for e, g in zip(expected, got):  # a folded constant is rounded to float32 once
            torch.testing.assert_close(g, e, rtol=0, atol=1e-6 * float(e.abs().max()))


def test_an_activation_not_zero_at_zero_moves_into_the_next_bias():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Sigmoid(), nn.Linear(16, 4))
    x = torch.randn(4, 8)
    masks = compute_masks(model, "magnitude", sparsity=0.5, granularity="channel", example_input=x)
    gone = ~masks["0.bias"]
    small = shrink(model, masks, x)
    expected = model[2].bias + 0.5 * model[2].weight[:, gone].sum(1)
    torch.testing.assert_close(small[2].bias, expected)
    assert small[2].weight.shape == (4, int((~gone).sum()))


def test_constants_fold_where_exact_and_their_groups_stay_whole_where_not():
    model = NotZeroAtZero()
    groups = {g.name: g for g in channel_groups(model, IMAGE, [n for n, p in model.named_parameters() if p.dim() > 1])}
    # c0 -> sigmoid -> 1x1 c1, c2 -> softplus -> 1x1 c3, f0 -> softplus -> Linear f1: folded; c1 -> sigmoid -> padded
    # c2: whole; c3 -> sigmoid -> masked BatchNorm: zero, nothing to fold
    assert {n for n, g in groups.items() if g.folds} == {"c0.weight", "c2.weight", "f0.weight"}
    assert "c1.weight" not in groups and not groups["c3.weight"].folds
    (fold,) = groups["f0.weight"].folds
    assert (fold.weight, fold.bias) == ("f1.weight", "f1.bias")
    torch.testing.assert_close(fold.value, torch.full((16,), float(F.softplus(torch.zeros(1))), dtype=torch.float64))


def test_a_channel_shuffle_is_refused_with_its_cause():
    with pytest.raises(ValueError, match=r"granularity='channel' and shrink\(\) cannot follow the channels of ShuffleNetV2:"
                                         r" Torch-Pruning failed to trace a reshape that regroups channels \(such as"
                                         r" ShuffleNet's channel shuffle\)"):
        compute_masks(torchvision.models.shufflenet_v2_x0_5(num_classes=4), "magnitude", sparsity=0.5,
                      granularity="channel", example_input=torch.randn(2, 3, 32, 32))


def test_gpt2_with_its_default_options_is_refused_by_name_not_by_a_trace_error():
    with pytest.raises(ValueError, match=r"granularity='channel' found no channel of GPT2LMHeadModel it can prune: it removes"
                                         r" output channels of nn.Conv1d/2d/3d and nn.Linear layers"):
        compute_masks(gpt2(), "magnitude", sparsity=0.5, granularity="channel", example_input=TOKENS["input_ids"])


def test_shrink_refuses_masks_of_another_shape_before_anything_changes():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    before = copy.deepcopy(model.state_dict())
    masks = {"0.weight": torch.ones(8, 8, dtype=torch.bool)}
    with pytest.raises(ValueError, match=r"shrink needs a mask of each tensor's shape; \(mask shape, tensor shape\) differ"
                                         r" for \{'0.weight': \(\(8, 8\), \(16, 8\)\)\}"):
        shrink_(model, masks, torch.randn(2, 8))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_shrunk_network_that_would_differ_is_refused_and_the_model_is_untouched():
    # Channels reversed on the way: Torch-Pruning takes the flip for an element-wise op and maps channel j to j,
    # the exactness check sees that the shrunk network computes something else.
    class ChannelFlip(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x)).flip(-1))

    torch.manual_seed(0)
    model, x = ChannelFlip(), torch.randn(4, 8)
    masks = {"a.weight": torch.ones(16, 8, dtype=torch.bool), "a.bias": torch.ones(16, dtype=torch.bool)}
    masks["a.weight"][:4] = False
    masks["a.bias"][:4] = False
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"shrink cannot remove the pruned channels of ChannelFlip exactly: the shrunk"
                                         r" network's outputs differ from the masked one's by"):
        shrink_(model, masks, x)
    assert {k: v.shape for k, v in model.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_channel_pruning_on_dict_batches_asks_for_example_input():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(ValueError, match=r"granularity='channel' traces one forward pass with the model's input, which a"
                                         r" batch of type dict does not single out: pass `example_input`"):
        compute_masks(model, "snip", sparsity=0.5, granularity="channel", dataloader=[{"x": torch.randn(4, 8)}],
                      loss_fn=lambda m, b: m(b["x"]).sum())


def test_erk_over_channel_groups_follows_the_layers_they_span():
    from lightning_synflow.distributions import erk_group_densities

    # conv (64, 3, 3, 3) then Linear (256, 64*4) then Linear (32, 256): the first group's weights are the
    # smallest and densest, as ERK makes small layers.
    model = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                          nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 32), nn.ReLU(), nn.Linear(32, 4))
    x = torch.randn(2, 3, 8, 8)
    masks = compute_masks(model, "magnitude", sparsity=0.7, granularity="channel", distribution="erk", example_input=x)
    kept = {n: int(masks[n].reshape(masks[n].shape[0], -1).all(1).sum()) for n in ("0.weight", "4.weight", "6.weight")}
    sizes = {"0.weight": 64, "4.weight": 256, "6.weight": 32}
    dens = erk_group_densities(sizes, {"0.weight": [(64, 3, 3, 3)], "4.weight": [(256, 256)], "6.weight": [(32, 256)]}, 0.3)
    assert kept["0.weight"] + kept["4.weight"] + kept["6.weight"] == 106  # round(0.3 * 352) channels
    assert all(abs(kept[n] - dens[n] * sizes[n]) <= 1 for n in sizes)
    assert dens["0.weight"] > dens["6.weight"] > dens["4.weight"]  # not uniform: ERK's (sum of dims)/(product)
    one = (64 + 3 + 3 + 3) / (64 * 27)
    assert dens["0.weight"] / dens["4.weight"] == pytest.approx(one / ((256 + 256) / 256**2))


def test_n_m_groups_a_gpt2_conv1d_along_its_input_features():
    model = gpt2()
    masks = compute_masks(model, "magnitude", granularity="2:4", parameters=["transformer.h.0.attn.c_attn.weight"])
    mask = masks["transformer.h.0.attn.c_attn.weight"]  # stored (in_features, out_features) = (32, 96)
    assert mask.shape == (32, 96)
    assert bool((mask.T.reshape(-1, 4).sum(1) == 2).all())  # 2 of every 4 consecutive inputs of each output
    assert not bool((mask.reshape(-1, 4).sum(1) == 2).all())


@pytest.mark.parametrize("kind", ["multihead_attention", "transformer_encoder_layer", "vit"])
def test_grasp_scores_attention_with_the_math_kernel(kind):
    torch.manual_seed(0)
    if kind == "vit":
        model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=1, num_heads=2,
                                                     hidden_dim=16, mlp_dim=32, num_classes=3)
        x = torch.randn(4, 3, 16, 16)
    else:
        layer = (nn.MultiheadAttention(16, 2, batch_first=True) if kind == "multihead_attention"
                 else nn.TransformerEncoderLayer(16, 2, 32, batch_first=True))

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.layer, self.fc = layer, nn.Linear(16, 3)

            def forward(self, x):
                y = self.layer(x, x, x, need_weights=False)[0] if kind == "multihead_attention" else self.layer(x)
                return self.fc(y.mean(1))

        model, x = Net(), torch.randn(4, 5, 16)
    masks = compute_masks(model, "grasp", sparsity=0.5, dataloader=[(x, torch.randint(3, (4,)))])
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.5 * total)


def test_a_model_on_the_meta_device_is_refused_by_name():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(ValueError, match=r"Sequential has parameters on the meta device \(shapes without values\):"
                                         r" \['0.weight', '0.bias', '2.weight', '2.bias'\]; materialise them first"):
        compute_masks(model, "magnitude", sparsity=0.5)


def test_a_nan_weight_is_named_not_reported_as_an_overflow():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"SynFlow cannot score Sequential: \['0.weight'\] hold NaN or inf values"):
        compute_masks(model, "synflow", sparsity=0.5, example_input=torch.randn(2, 4), iterations=2)


def test_channel_groups_give_the_model_back_as_it_came():
    model = torchvision.models.googlenet(num_classes=4, aux_logits=True, init_weights=False).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    channel_groups(model, torch.randn(2, 3, 64, 64), [n for n, p in model.named_parameters() if p.dim() > 1])
    assert not any(m.training for m in model.modules())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # running statistics too


def test_prune_at_init_shrinks_a_model_with_a_train_only_branch_and_trains_it():
    from lightning.pytorch import LightningModule, Trainer
    from torch.utils.data import DataLoader, TensorDataset

    from lightning_synflow import PruneAtInit

    class Net(LightningModule):
        def __init__(self):
            super().__init__()
            self.net = TrainOnlyBranch()
            self.example_input_array = torch.zeros(1, 3, 16, 16)

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, _):
            x, y = batch
            out, aux = self(x)
            return F.cross_entropy(out, y) + 0.3 * F.cross_entropy(aux, y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    model = Net()
    data = DataLoader(TensorDataset(torch.randn(8, 3, 16, 16), torch.randint(4, (8,))), batch_size=4)
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.5, granularity="channel", shrink=True, verbose=False)
    Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[pruner]).fit(model, data)
    assert tuple(model.net.c1.weight.shape) == (4, 8, 3, 3)  # shrunk
    assert tuple(model.net.aux.weight.shape) == (8, 8, 1, 1)  # seen only in training: whole, and so is c0
    assert tuple(model.net.c0.weight.shape) == (8, 3, 3, 3)


class InputBranch(nn.Module):
    """Inputs in [0, 1] take a path whose centring over features the trace does not see as coupling; others not."""

    def __init__(self, sigmoid=False):
        super().__init__()
        self.a, self.b, self.sigmoid = nn.Linear(12, 16), nn.Linear(16, 4), sigmoid

    def forward(self, x):
        h = self.a(x)
        if self.sigmoid:  # sigmoid (a constant 0.5 to fold) on the user's data, relu (nothing to fold) otherwise
            return self.b(torch.sigmoid(h) if bool((x >= 0).all()) else torch.relu(h))
        h = torch.relu(h)
        return self.b(h - h.mean(-1, keepdim=True) if bool((x >= 0).all()) else h)


def test_shrink_checks_the_path_the_example_input_takes():
    torch.manual_seed(0)
    model, x = InputBranch(), torch.rand(4, 12)
    masks = compute_masks(model, "magnitude", sparsity=0.5, granularity="channel", example_input=x)
    with pytest.raises(ValueError, match=r"shrink cannot remove the pruned channels of InputBranch exactly: the shrunk"
                                         r" network's outputs differ from the masked one's by .* in eval mode on the"
                                         r" example input"):
        shrink(model, masks, x)


def test_constants_are_folded_only_where_the_example_input_reads_them_too():
    torch.manual_seed(0)
    model, x = InputBranch(sigmoid=True), torch.rand(4, 12)
    assert channel_groups(model, x, ["a.weight", "b.weight"]) == []  # 0.5 on x, 0 on a random input: kept whole


class LRN(nn.Module):
    def __init__(self, alpha):
        super().__init__()
        self.a, self.lrn = nn.Conv2d(3, 16, 3, padding=1), nn.LocalResponseNorm(3, alpha=alpha)
        self.b, self.fc = nn.Conv2d(16, 16, 1), nn.Linear(16, 4)

    def forward(self, x):
        return self.fc(torch.relu(self.b(self.lrn(torch.relu(self.a(x))))).mean((2, 3)))


@pytest.mark.parametrize("alpha, about", [(1e-4, "the example input"), (1e-8, "a random input at 100 times its scale")])
def test_a_normalisation_across_channels_is_refused_at_a_float64_tolerance_and_a_larger_scale(alpha, about):
    # LocalResponseNorm sums squares over neighbouring channels: a pruned channel's zero changes its neighbours by
    # 2e-7 (relative) at unit scale with alpha=1e-4, by 3e-6 only at 100 times the scale with alpha=1e-8.
    torch.manual_seed(0)
    model, x = LRN(alpha), torch.randn(4, 3, 8, 8)
    masks = compute_masks(model, "magnitude", sparsity=0.5, granularity="channel", example_input=x)
    with pytest.raises(ValueError, match=rf"shrink cannot remove the pruned channels of LRN exactly: .* \(relative,"
                                         rf" float64\) in eval mode on {about};"):
        shrink(model, masks, x)


@pytest.mark.parametrize("op, width", [(lambda h: F.glu(h, 1), 8), (nn.PixelShuffle(2), 4)], ids=["glu", "pixel_shuffle"])
def test_an_op_that_changes_the_channel_count_keeps_the_channels_it_reads_whole(op, width):
    class ChannelCount(nn.Module):  # glu halves a's 16 channels, pixel shuffle quarters them
        def __init__(self):
            super().__init__()
            self.a, self.b, self.fc = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(width, 8, 1), nn.Conv2d(8, 8, 1)

        def forward(self, x):
            return self.fc(torch.relu(self.b(op(self.a(x))))).mean((2, 3))

    torch.manual_seed(0)
    model, x = ChannelCount(), torch.randn(2, 3, 8, 8)
    masks = compute_masks(model, "magnitude", sparsity=0.5, granularity="channel", example_input=x)
    assert set(masks) == {"b.weight", "b.bias"}  # a's channels whole: its reader does not see their count
    small = shrink(model, masks, x)
    assert small.a.out_channels == 16 and small.b.out_channels == 4


def test_a_model_that_casts_its_input_is_refused_naming_the_float64_check():
    class Cast(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x.float())))

    with pytest.raises(ValueError, match=r"granularity='channel' and shrink\(\) check on a float64 copy of Cast that"
                                         r" removing channels is exact, and a forward pass of that float64 copy failed"
                                         r" in training mode \(RuntimeError: .*\); a model that casts its input"):
        compute_masks(Cast(), "magnitude", sparsity=0.5, granularity="channel", example_input=torch.randn(4, 12))


def test_a_channel_sparsity_short_of_the_request_is_warned_with_both_numbers():
    class Gate(nn.Module):  # a one-unit gate broadcast over a's outputs couples them all to its single channel
        def __init__(self):
            super().__init__()
            self.a, self.g, self.b = nn.Linear(12, 16), nn.Linear(12, 1), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.sigmoid(self.a(x)) * torch.sigmoid(self.g(x)))

    torch.manual_seed(0)
    x = torch.randn(4, 12)
    with pytest.warns(UserWarning, match=r"granularity='channel' removes 0 of 16 channels \(channel sparsity 0\), below"
                                         r" the requested sparsity 0.5: 15 channels of \['a.weight'\] are left whole"):
        compute_masks(Gate(), "magnitude", sparsity=0.5, granularity="channel", example_input=x)
    plain = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 16 of 32 channels removed: as asked
        compute_masks(plain, "magnitude", sparsity=0.5, granularity="channel", example_input=x)


def test_the_exactness_check_refuses_when_the_masked_model_runs_in_neither_mode():
    # compute_masks already refuses such a model (its folds are found in float64 too); given masks from elsewhere,
    # the check refuses it naming the float64 forward pass before anything else runs, and never compares nothing.
    from lightning_synflow.selection.channels import _check_exact

    class Cast(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(12, 16), nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.relu(self.a(x.float())))

    model = Cast()
    masks = {"a.weight": torch.ones(16, 12, dtype=torch.bool)}
    masks["a.weight"][:4] = False
    with pytest.raises(ValueError, match=r"shrink checks on a float64 copy of Cast that removing channels is exact, and a"
                                         r" forward pass of that float64 copy failed on the example input in both"
                                         r" training and eval mode \(RuntimeError"):
        _check_exact(model, masks, copy.deepcopy(model), torch.randn(4, 12), [], {})
