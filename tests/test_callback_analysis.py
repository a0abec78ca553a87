"""Signal propagation around pruning: PruneAtInit's isometry steps, and the Jacobian spectra and effective sparsity
that PruningDiagnostics logs beside it when PruneAtInit prunes."""

import copy

import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from lightning_helpers import MLP, AssertPrunedStayZero, FigureLogger, MemoryLogger, random_data
from lightning_synflow import PruneAtInit, PruningDiagnostics, apply_masks
from lightning_synflow.analysis import effective_sparsity_report, isometry_penalty, jacobian_singular_values


def fit(model, pruner, loggers, steps=3, **diagnostics):
    """Fit with ``pruner``, and a PruningDiagnostics that logs just what ``diagnostics`` turns on, if any."""
    flags = {k: diagnostics.get(k, False) for k in ("log_jacobian", "log_effective_sparsity", "log_per_tensor")}
    extra = [PruningDiagnostics(**flags)] if diagnostics else []
    trainer = Trainer(max_steps=steps, accelerator="cpu", logger=loggers, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                      callbacks=[pruner, *extra, AssertPrunedStayZero(pruner)])
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
    pruner = PruneAtInit(scorer="synflow", sparsity=0.9, iterations=5, isometry_steps=5)
    fit(model, pruner, [logger], steps=1, log_jacobian=True)
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
    pruner = PruneAtInit(scorer="random", sparsity=0.97)
    fit(model, pruner, [logger], steps=1, log_effective_sparsity=True)
    nominal, effective = logger.values("pruning/sparsity/nominal")[0], logger.values("pruning/sparsity/effective")[0]
    assert nominal == pytest.approx(logger.values("pruning/sparsity")[0])
    assert effective >= nominal
    pruned = copy.deepcopy(model)
    expected = effective_sparsity_report(pruned, pruner.masks, example_input=torch.zeros(1, 8))
    assert effective == pytest.approx(expected.effective.sparsity)


def test_spectra_histogram_goes_to_loggers_that_take_figures():
    pytest.importorskip("matplotlib")
    logger = FigureLogger()
    fit(MLP(), PruneAtInit(sparsity=0.9, iterations=2), [logger], steps=1, log_jacobian=True)
    assert [tag for tag, *_ in logger.figures] == ["jacobian_singular_values"]


def test_the_deprecated_diagnostic_arguments_still_log_through_pruning_diagnostics():
    """Today's YAML with ``log_jacobian: true`` on PruneAtInit keeps working, and says what to write instead."""
    torch.manual_seed(0)
    with pytest.warns(DeprecationWarning, match=r"PruneAtInit\(log_jacobian=True\) is deprecated: add PruningDiagnostics\("
                                                r"log_jacobian=True\) to the Trainer's callbacks \(YAML: \{class_path:"
                                                r" lightning_synflow.PruningDiagnostics, init_args: \{log_jacobian: true\}\}\)"):
        old = PruneAtInit(sparsity=0.9, iterations=2, log_jacobian=True)
    old_logger, new_logger = MemoryLogger(), MemoryLogger()
    trainer = fit(MLP(), old, [old_logger], steps=1)
    torch.manual_seed(0)
    fit(MLP(), PruneAtInit(sparsity=0.9, iterations=2), [new_logger], steps=1, log_jacobian=True)
    for stat in ("init/mean", "pruned/max"):
        assert old_logger.values(f"jacobian_sv/{stat}") == new_logger.values(f"jacobian_sv/{stat}") != []
    assert sum(isinstance(cb, PruningDiagnostics) for cb in trainer.callbacks) == 1


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"isometry_steps": -1}, r"`isometry_steps` \(0 = off\) must be a non-negative integer, got -1"),
    ({"isometry_steps": 2.5}, r"`isometry_steps`.*got 2.5"),
    ({"isometry_lr": 0}, r"`isometry_lr` must be a positive finite number, got 0"),
])
def test_bad_analysis_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PruneAtInit(sparsity=0.5, **kwargs)
