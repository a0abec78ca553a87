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
