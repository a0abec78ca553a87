import pytest
import torch
from torch import nn

from lightning_synflow import apply_masks, compute_masks, select_prunable


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.deconv = nn.ConvTranspose2d(2, 2, 3)
        self.conv3d = nn.Conv3d(1, 1, 1)
        self.norm = nn.LayerNorm(4)
        self.bn = nn.BatchNorm1d(4)
        self.head = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))


class MyConv(nn.Conv2d):
    pass


def test_default_selects_every_linear_and_conv_weight_first_and_last_included():
    assert select_prunable(Mixed()) == ["conv.weight", "deconv.weight", "conv3d.weight", "head.0.weight", "head.2.weight"]


def test_exclude_by_name_pattern_keeps_the_classifier_dense():
    assert select_prunable(Mixed(), exclude_names=["head.*"]) == ["conv.weight", "deconv.weight", "conv3d.weight"]


def test_select_by_type_names_classes_and_subclasses():
    m = nn.Sequential(MyConv(1, 1, 1), nn.Linear(1, 1))
    assert select_prunable(m, include_types=["Conv2d"]) == ["0.weight"]
    assert select_prunable(m, include_types=[nn.Linear]) == ["1.weight"]
    assert select_prunable(m, include_types=["torch.nn.modules.conv.Conv2d"]) == ["0.weight"]
    assert select_prunable(m, exclude_types=["Linear"]) == ["0.weight"]


def test_include_names_adds_any_parameter():
    assert select_prunable(Mixed(), include_types=[], include_names=["emb.weight", "head.*.bias"]) == [
        "emb.weight", "head.0.bias", "head.2.bias",
    ]


def test_tied_weights_are_selected_once():
    m = nn.Sequential(nn.Linear(3, 3, bias=False), nn.Linear(3, 3, bias=False))
    m[1].weight = m[0].weight
    assert select_prunable(m) == ["0.weight"]
    assert [n for n, _ in m.named_parameters()] == ["0.weight"]


def test_nothing_prunable_gives_an_empty_list():
    assert select_prunable(nn.Sequential(nn.BatchNorm1d(3))) == []


class Recurrent(nn.Module):
    """Attention with separate q/k/v projections, a deep bidirectional LSTM with projections, GRU, RNN and
    their cells: every weight matrix among them is prunable, their biases are not."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
        self.lstm = nn.LSTM(4, 6, num_layers=2, bidirectional=True, proj_size=3)
        self.gru = nn.GRU(4, 4)
        self.rnn = nn.RNN(4, 4, bias=False)
        self.cells = nn.ModuleList([nn.RNNCell(4, 4), nn.LSTMCell(4, 4), nn.GRUCell(4, 4)])


def test_default_selects_attention_and_recurrent_weight_matrices_but_no_bias():
    lstm = [f"lstm.weight_{k}_l{layer}{d}" for layer in (0, 1) for d in ("", "_reverse") for k in ("ih", "hh", "hr")]
    assert select_prunable(Recurrent()) == [
        "attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight",
        *lstm,
        "gru.weight_ih_l0", "gru.weight_hh_l0",
        "rnn.weight_ih_l0", "rnn.weight_hh_l0",
        *[f"cells.{i}.weight_{k}" for i in range(3) for k in ("ih", "hh")],
    ]
    assert select_prunable(nn.MultiheadAttention(8, 2)) == ["in_proj_weight", "out_proj.weight"]


def test_types_select_the_weight_matrices_of_the_named_layers():
    m = Recurrent()
    assert select_prunable(m, include_types=["LSTM"], exclude_names=["*_reverse"]) == [
        "lstm.weight_ih_l0", "lstm.weight_hh_l0", "lstm.weight_hr_l0", "lstm.weight_ih_l1", "lstm.weight_hh_l1", "lstm.weight_hr_l1",
    ]
    assert select_prunable(m, include_types=[nn.MultiheadAttention]) == ["attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight"]
    assert select_prunable(m, include_types=["Linear"]) == ["attn.out_proj.weight"]  # a Linear subclass
    # a type excludes the tensors its layers own: attention's out_proj is a Linear of its own
    assert select_prunable(m, exclude_types=["MultiheadAttention", "RNNBase", "RNNCellBase"]) == ["attn.out_proj.weight"]
    assert select_prunable(Mixed(), include_types=["Embedding"]) == ["emb.weight"]  # any other layer: its `weight`


def conv1d_layer(package):
    """A layer class named ``Conv1D`` defined in ``package`` (Hugging Face's GPT-2 linear map lives in
    ``transformers.pytorch_utils``), with a weight and a bias."""
    layer = type("Conv1D", (nn.Module,), {"__module__": package})()
    layer.weight = nn.Parameter(torch.randn(3, 4))
    layer.bias = nn.Parameter(torch.zeros(4))
    return layer


def test_third_party_layers_are_matched_by_dotted_path_and_never_by_case():
    m = nn.Sequential(conv1d_layer("transformers.pytorch_utils"), conv1d_layer("elsewhere"), nn.Conv1d(1, 1, 1))
    assert select_prunable(m) == ["0.weight", "2.weight"]  # the same bare name in another package is unknown
    assert select_prunable(m, include_types=["Conv1D"]) == ["0.weight", "1.weight"]  # the bare name, as asked
    assert select_prunable(m, include_types=["Conv1d"]) == ["2.weight"]


class TiedLM(nn.Module):
    """An embedding tied to the output head, as in every language model: the head's weight is the embedding's."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.mix = nn.Linear(4, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight


def test_a_tied_tensor_is_selected_once_under_its_first_name_when_any_use_is_prunable():
    assert [n for n, _ in TiedLM().named_parameters()] == ["embed.weight", "mix.weight", "mix.bias"]
    assert select_prunable(TiedLM()) == ["embed.weight", "mix.weight"]
    assert select_prunable(TiedLM(), include_types=["Embedding"]) == ["embed.weight"]
    assert select_prunable(TiedLM(), exclude_names=["head.*"]) == ["mix.weight"]  # any excluded use keeps it dense
    assert select_prunable(TiedLM(), exclude_types=["Embedding"]) == ["mix.weight"]


def test_frozen_parameters_stay_dense_unless_asked_for():
    m = Mixed()
    m.conv.requires_grad_(False)
    m.head[2].weight.requires_grad_(False)
    assert select_prunable(m) == ["deconv.weight", "conv3d.weight", "head.0.weight"]
    assert select_prunable(m, include_frozen=True) == select_prunable(Mixed())
    assert select_prunable(m, include_types=[], include_names=["conv.*"]) == []


def test_naming_a_tied_tensor_by_its_second_name_is_an_error_that_gives_its_name():
    with pytest.raises(ValueError, match=r"does not have: \['head.weight'\];.*; 'head.weight' is tied to 'embed.weight': name it so"):
        compute_masks(TiedLM(), "magnitude", sparsity=0.5, parameters=["head.weight"])


def test_a_layer_pruned_with_torch_prune_is_selected_through_its_weight_orig():
    from torch.nn.utils import prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    prune.l1_unstructured(model[0], "weight", amount=0.5)  # leaves weight_orig (a parameter) and weight_mask
    assert select_prunable(model) == ["0.weight_orig", "2.weight"]
    masks = compute_masks(model, "magnitude", sparsity=0.9)
    apply_masks(model, masks)
    assert (model(torch.randn(2, 8)).isfinite()).all()  # the pre-hook recomputes weight from weight_orig
    assert (model[0].weight[~masks["0.weight_orig"]] == 0).all()


def test_a_parametrized_weight_is_selected_through_its_stored_tensor_at_any_depth():
    from torch.nn.utils.parametrizations import spectral_norm, weight_norm

    assert select_prunable(weight_norm(nn.Linear(4, 3))) == ["parametrizations.weight.original1"]
    nested = nn.Sequential(nn.Sequential(spectral_norm(nn.Conv2d(3, 4, 3))), weight_norm(nn.Linear(4, 2)))
    assert select_prunable(nested) == ["0.0.parametrizations.weight.original", "1.parametrizations.weight.original1"]
