"""PruneAtInit under ModelParallelStrategy, in every layout it makes (2 and 4 gloo processes): prune, train,
resume.

tests/scripts/sharded_fit.py runs the fits (Lightning launches the other ranks, so never inside pytest), one
launch per world size; this file compares with PruneAtInit's functional core on the same initial model in
one process, on the union of the batches the ranks scored.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
import sharded_fit  # noqa: E402

from lightning_synflow import compute_masks, num_kept  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "sharded_fit.py"
RUNS = {  # layout -> (scorer, checkpoint kind): both kinds of checkpoint in every layout, every scorer in several
    "fsdp": [("synflow", "distributed"), ("snip", "full"), ("magnitude", "distributed"), ("random", "full")],
    "tp": [("synflow", "full"), ("snip", "distributed"), ("magnitude", "full"), ("random", "distributed")],
    "replicas": [("magnitude", "distributed"), ("synflow", "full")],
    "hsdp": [("snip", "distributed"), ("random", "full")],
    "2d": [("synflow", "distributed"), ("magnitude", "full")],
}
CASES = [(mode, kind, scorer) for mode, cases in RUNS.items() for scorer, kind in cases]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded_fit")
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for world in sorted(set(sharded_fit.MODES.values())):
        cases = [f"{m}:{s}:{k}" for m, runs in RUNS.items() if sharded_fit.MODES[m] == world for s, k in runs]
        proc = subprocess.run([sys.executable, str(SCRIPT), str(out), ",".join(cases)], env=env, capture_output=True,
                              text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load(out, mode, kind, scorer):
    return [torch.load(out / f"{mode}-{kind}-{scorer}-rank{r}.pt", weights_only=False) for r in range(sharded_fit.MODES[mode])]


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_masks_equal_one_process_and_are_laid_out_as_the_parameters(results, mode, kind, scorer):
    ranks = load(results, mode, kind, scorer)
    model = sharded_fit.Net(mode)
    model.load_state_dict(ranks[0]["init"])
    # Data-parallel ranks scored their own batches, so one process scores their union; their peers, the same.
    batches = None if ranks[0]["batches"] is None else [b for r in sharded_fit.data_ranks(mode) for b in ranks[r]["batches"]]
    expected = compute_masks(model, sharded_fit.scorer_of(scorer), sparsity=sharded_fit.sparsity_of(mode), iterations=sharded_fit.ITERATIONS[scorer],
                             example_input=torch.zeros(1, 16), dataloader=batches,
                             num_batches=None if batches is None else len(batches))
    for rank in ranks:
        assert list(rank["masks"]) == list(expected)
        for name in expected:
            assert torch.equal(rank["masks"][name], expected[name]), name
        assert rank["layouts"] == {n: rank["param_layouts"][n] for n in expected}
    total = sum(m.numel() for m in expected.values())
    assert sum(int(m.sum()) for m in ranks[0]["masks"].values()) == num_kept(1 - sharded_fit.sparsity_of(mode), total)
    if mode == "replicas":  # the figures: 10% of the MLP's 5,376 weights, no tensor collapsed
        assert total == 5376 and sum(int(m.sum()) for m in ranks[0]["masks"].values()) == 538


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_pruned_weights_are_exactly_zero_after_every_step_and_after_training(results, mode, kind, scorer):
    for rank in load(results, mode, kind, scorer):
        assert rank["zero_after_step"] == [True] * 4
        assert rank["resumed_zero_after_step"] == [True] * 2
        for name, mask in rank["masks"].items():
            assert (rank["trained"][name][~mask] == 0).all()
            assert (rank["resumed_trained"][name][~mask] == 0).all()
            if all(m.any() for m in rank["masks"].values()):  # the kept ones trained, unless the net is cut
                assert (rank["trained"][name][mask] != rank["init"][name][mask]).any()


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_resume_restores_exactly_the_masks_without_scoring_again(results, mode, kind, scorer):
    for rank in load(results, mode, kind, scorer):
        assert rank["scored"] == 1 and rank["scored_in_total"] == 1
        for name, mask in rank["masks"].items():
            assert torch.equal(rank["resumed_masks"][name], mask), name


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_where_the_masks_live_in_the_checkpoint(results, mode, kind, scorer):
    rank = load(results, mode, kind, scorer)[0]
    path = results / f"{mode}-{kind}-{scorer}.ckpt"
    if kind == "distributed":  # a directory: the model's shards, and the packed masks' beside them
        assert rank["checkpoint_is_dir"]
        assert rank["masks_dir"] == [".metadata"] + [f"__{r}_0.distcp" for r in range(sharded_fit.MODES[mode])]
        state = torch.load(path / "meta.pt", weights_only=False)["callbacks"]["PruneAtInit"]
        assert state["masks_beside"] == list(rank["masks"])
        return
    checkpoint = torch.load(path, weights_only=False)
    assert list(checkpoint["state_dict"]) == [n for n in rank["init"]]  # the model's own keys
    packed = checkpoint["callbacks"]["PruneAtInit"]["packed_masks"]
    for name, mask in rank["masks"].items():
        assert packed[name]["packed"].dtype == torch.uint8
        assert packed[name]["packed"].numel() * 8 < mask.numel() + 8 * mask.shape[0] + 8 * mask.shape[-1]  # 1 bit each
        assert packed[name]["shape"] == tuple(mask.shape)


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_reports_are_global_figures_on_every_rank(results, mode, kind, scorer):
    ranks = load(results, mode, kind, scorer)
    masks = ranks[0]["masks"]
    total = sum(m.numel() for m in masks.values())
    for rank in ranks:
        report = rank["report"]
        assert report["total"] == total
        assert report["kept"] == num_kept(1 - sharded_fit.sparsity_of(mode), total)
        assert report["per_tensor"] == [int(m.sum()) for m in masks.values()]
        nonzero = sum(int((rank["trained"][n] != 0).sum()) for n in masks)
        assert report["measured_density"] == nonzero / total


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_logged_figures_are_global_and_logged_once_by_rank_zero(results, mode, kind, scorer):
    ranks = load(results, mode, kind, scorer)
    assert all(rank["logged"] == [] for rank in ranks[1:])
    logged = {k: v for _, metrics in ranks[0]["logged"] for k, v in metrics.items()}
    masks = ranks[0]["masks"]
    total = sum(m.numel() for m in masks.values())
    assert logged["pruning/total"] == total
    assert logged["pruning/kept"] == num_kept(1 - sharded_fit.sparsity_of(mode), total)
    for name, mask in masks.items():  # PruningDiagnostics(log_per_tensor=True)
        assert logged[f"pruning/density/{name}"] == int(mask.sum()) / mask.numel()
    assert logged["pruning/measured_sparsity"] == 1 - ranks[0]["report"]["measured_density"]
