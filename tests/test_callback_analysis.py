"""PruneAtInit's signal-propagation options: isometry, Jacobian spectra and effective sparsity, logged."""

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_helpers import MLP, AssertPrunedStayZero, MemoryLogger, random_data
from lightning_synflow import PruneAtInit, apply_masks
from lightning_synflow.analysis import effective_sparsity_report, isometry_penalty, jacobian_singular_values


def fit(model, pruner, loggers, steps=3):
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=loggers, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[pruner, AssertPrunedStayZero(pruner)])
    trainer.fit(model)
    return trainer


def test_isometry_lowers_the_penalty_and_keeps_pruned_weights_at_zero():
    torch.manual_seed(0)
    model, logger = MLP(), MemoryLogger()
    pruner = PruneAtInit(scorer="random", sparsity=0.8, isometry_steps=60, isometry_lr=0.05)
    fit(model, pruner, [logger], steps=1)
    before, after = logger.values("isometry/penalty_before")[0], logger.values("isometry/penalty_after")[0]
    assert after < 0.9 * before
    assert logger.values("isometry/steps") == [60]


def test_isometry_moves_the_kept_weights_only_towards_the_penalty_minimum():
    torch.manual_seed(0)
    model = MLP()
    plain = copy.deepcopy(model)
    pruner = PruneAtInit(scorer="magnitude", sparsity=0.8, isometry_steps=30)
    fit(model, pruner, False, steps=1)
    apply_masks(plain, pruner.masks)
    assert sum(isometry_penalty(model, pruner.masks).values()) < sum(isometry_penalty(plain, pruner.masks).values())


def test_jacobian_spectra_after_init_pruning_and_isometry_equal_an_independent_computation():
    torch.manual_seed(0)
    model, logger = MLP(example_input=False), MemoryLogger()
    initial = copy.deepcopy(model)
    pruner = PruneAtInit(scorer="synflow", sparsity=0.9, iterations=5, log_jacobian=True, isometry_steps=5)
    fit(model, pruner, [logger], steps=1)
    probe = next(iter(DataLoader(random_data(), batch_size=8)))[0]
    sv = jacobian_singular_values(initial, probe)
    assert logger.values("jacobian_sv/init/mean")[0] == pytest.approx(float(sv.mean()), rel=1e-5)
    assert logger.values("jacobian_sv/init/max")[0] == pytest.approx(float(sv.max()), rel=1e-5)
    apply_masks(initial, {n: m.cpu() for n, m in pruner.masks.items()})
    assert logger.values("jacobian_sv/pruned/mean")[0] == pytest.approx(float(jacobian_singular_values(initial, probe).mean()), rel=1e-5)
    for stage in ("init", "pruned", "isometry"):
        for stat in ("mean", "std", "min", "max"):
            assert len(logger.values(f"jacobian_sv/{stage}/{stat}")) == 1


def test_effective_sparsity_is_logged_beside_the_nominal_one():
    torch.manual_seed(0)
    model, logger = MLP(), MemoryLogger()
    pruner = PruneAtInit(scorer="random", sparsity=0.97, log_effective_sparsity=True)
    fit(model, pruner, [logger], steps=1)
    nominal, effective = logger.values("pruning/sparsity/nominal")[0], logger.values("pruning/sparsity/effective")[0]
    assert nominal == pytest.approx(logger.values("pruning/sparsity")[0])
    assert effective >= nominal
    pruned = copy.deepcopy(model)
    expected = effective_sparsity_report(pruned, pruner.masks, example_input=torch.zeros(1, 8))
    assert effective == pytest.approx(expected.effective.sparsity)


class FigureLogger(MemoryLogger):
    """Stands in for TensorBoard: its experiment takes figures."""

    def __init__(self):
        super().__init__()
        self.figures = []

    @property
    def experiment(self):
        return self

    def add_figure(self, tag, figure, step):
        self.figures.append((tag, figure))


def test_spectra_histogram_goes_to_loggers_that_take_figures():
    pytest.importorskip("matplotlib")
    logger = FigureLogger()
    fit(MLP(), PruneAtInit(sparsity=0.9, iterations=2, log_jacobian=True), [logger], steps=1)
    assert [tag for tag, _ in logger.figures] == ["jacobian_singular_values"]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"isometry_steps": -1}, r"`isometry_steps` must be a non-negative integer \(0 = off\), got -1"),
    ({"isometry_steps": 2.5}, r"`isometry_steps`.*got 2.5"),
    ({"isometry_lr": 0}, r"`isometry_lr` must be a positive finite number, got 0"),
])
def test_bad_analysis_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneAtInit(sparsity=0.5, **kwargs)
