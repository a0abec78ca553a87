import pytest
import torch

from lightning_synflow import SynFlow, compute_masks, compute_scores
from lightning_synflow.analysis import conservation

from conftest import BiasFreeCNN, TinyCNN


def test_synflow_conserves_per_neuron_and_per_layer_in_a_homogeneous_net():
    torch.manual_seed(0)
    net = BiasFreeCNN()
    res = conservation(net, SynFlow("float64"), example_input=torch.zeros(1, 3, 8, 8))
    # c3 -> fc goes through a channel-major flatten of a 6x6 map
    assert [(n.layer, n.next_layer) for n in res.neurons] == [
        ("c1.weight", "c2.weight"), ("c2.weight", "c3.weight"), ("c3.weight", "fc.weight")
    ]
    assert [n.incoming.numel() for n in res.neurons] == [6, 5, 4]
    assert res.max_relative_error < 1e-10
    assert res.total_spread == pytest.approx(1.0, abs=1e-10)
    assert res.size_slope == pytest.approx(-1.0, abs=1e-9)
    m = res.as_metrics()
    assert m["conservation/synflow/max_neuron_relative_error"] == res.max_relative_error


def test_conservation_also_holds_on_a_masked_net_but_not_for_magnitude():
    torch.manual_seed(0)
    net = BiasFreeCNN()
    x = torch.zeros(1, 3, 8, 8)
    masks = compute_masks(net, "synflow", compression=5, iterations=5, example_input=x)
    assert conservation(net, SynFlow("float64"), masks=masks, example_input=x).max_relative_error < 1e-10
    assert conservation(net, "synflow", masks=masks, example_input=x).max_relative_error < 1e-5  # float32 default
    mag = conservation(net, "magnitude")
    assert mag.max_relative_error > 0.05 and mag.total_spread > 1.01


def test_explicit_pairs_and_precomputed_scores():
    torch.manual_seed(0)
    net = TinyCNN()
    scores = compute_scores(net, "magnitude")
    res = conservation(net, "magnitude", scores=scores, pairs=[("conv2.weight", "fc.weight")])
    assert len(res.neurons) == 1
    torch.testing.assert_close(res.neurons[0].incoming, scores["conv2.weight"].double().sum((1, 2, 3)))
    torch.testing.assert_close(res.neurons[0].outgoing, scores["fc.weight"].double().sum(0))
    with pytest.raises(ValueError, match="multiple"):
        conservation(net, "magnitude", scores=scores, pairs=[("conv2.weight", "conv2.weight")])
