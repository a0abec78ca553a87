import pytest
import torch

from lightning_synflow import sparsity_report


def test_report_counts_kept_weights_per_tensor_and_globally(tiny_cnn):
    masks = {
        "conv1.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bool),
        "conv2.weight": torch.ones(16, 8, 3, 3, dtype=torch.bool),
        "fc.weight": torch.eye(4, 16, dtype=torch.bool),
    }
    r = sparsity_report(tiny_cnn, masks)
    assert [(t.name, t.layer, t.shape, t.kept, t.total) for t in r.tensors] == [
        ("conv1.weight", "Conv2d", (8, 3, 3, 3), 0, 216),
        ("conv2.weight", "Conv2d", (16, 8, 3, 3), 1152, 1152),
        ("fc.weight", "Linear", (4, 16), 4, 64),
    ]
    assert (r.kept, r.total) == (1156, 1432)
    assert r.density == 1156 / 1432 and r.sparsity == 1 - 1156 / 1432
    assert r.compression == 1432 / 1156
    assert r.collapsed == ["conv1.weight"]


def test_report_prints_as_a_table_naming_every_tensor_and_the_collapse(tiny_cnn):
    masks = {"conv1.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bool), "fc.weight": torch.ones(4, 16, dtype=torch.bool)}
    text = str(sparsity_report(tiny_cnn, masks))
    lines = text.splitlines()
    assert lines[0].split() == ["tensor", "layer", "shape", "kept", "total", "density"]
    assert any(l.startswith("conv1.weight") and "COLLAPSED" in l for l in lines)
    assert any(l.startswith("fc.weight") and "64" in l and "100.0000%" in l for l in lines)
    assert any(l.startswith("total") and "280" in l for l in lines)
    assert "1 collapsed tensor(s): conv1.weight" in lines[-1]


def test_frozen_weight_matrices_are_listed_as_kept_dense_and_left_out_of_the_totals(tiny_cnn):
    tiny_cnn.conv2.requires_grad_(False)
    masks = {"conv1.weight": torch.zeros(8, 3, 3, 3, dtype=torch.bool), "fc.weight": torch.ones(4, 16, dtype=torch.bool)}
    r = sparsity_report(tiny_cnn, masks)
    assert [t.name for t in r.tensors] == ["conv1.weight", "fc.weight"]
    assert [(t.name, t.layer, t.shape, t.kept, t.total) for t in r.frozen] == [("conv2.weight", "Conv2d", (16, 8, 3, 3), 1152, 1152)]
    assert (r.kept, r.total) == (64, 280)  # the masked tensors only
    lines = str(r).splitlines()
    assert any(l.startswith("conv2.weight") and l.endswith("100.0000%  FROZEN") for l in lines)
    assert any(l.startswith("total") and "280" in l for l in lines)
    assert lines[-1].endswith("; 1 frozen tensor(s) kept dense, not in the totals (1,152 weights): conv2.weight")
    assert sparsity_report(tiny_cnn, masks, frozen=[]).frozen == ()


def test_a_frozen_tensor_that_is_masked_is_an_ordinary_row_and_unknown_frozen_names_are_an_error(tiny_cnn):
    tiny_cnn.fc.requires_grad_(False)
    masks = {"fc.weight": torch.ones(4, 16, dtype=torch.bool)}  # pruned with include_frozen=True
    r = sparsity_report(tiny_cnn, masks)
    assert [t.name for t in r.tensors] == ["fc.weight"] and r.frozen == ()
    with pytest.raises(ValueError, match=r"`frozen` names tensors that TinyCNN does not have: \['nope'\]"):
        sparsity_report(tiny_cnn, masks, frozen=["nope"])
