"""PruneAtInit under ModelParallelStrategy, 2 gloo processes: FSDP2 and tensor parallel, prune, train, resume.

tests/scripts/sharded_fit.py runs the fits (Lightning launches the second rank, so never inside pytest);
this file compares with PruneAtInit's functional core on the same initial model in one process.
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
RUNS = {  # sharding -> (scorer, checkpoint kind): every scorer under both shardings, with both kinds of checkpoint
    "fsdp": [("synflow", "distributed"), ("snip", "full"), ("magnitude", "distributed"), ("random", "full")],
    "tp": [("synflow", "full"), ("snip", "distributed"), ("magnitude", "full"), ("random", "distributed")],
}
CASES = [(mode, kind, scorer) for mode, cases in RUNS.items() for scorer, kind in cases]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded_fit")
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    for mode, cases in RUNS.items():
        proc = subprocess.run([sys.executable, str(SCRIPT), str(out), mode, ",".join(f"{s}:{k}" for s, k in cases)],
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def load(out, mode, kind, scorer):
    return [torch.load(out / f"{mode}-{kind}-{scorer}-rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_masks_equal_one_process_and_are_laid_out_as_the_parameters(results, mode, kind, scorer):
    ranks = load(results, mode, kind, scorer)
    model = sharded_fit.Net(mode)
    model.load_state_dict(ranks[0]["init"])
    # FSDP: each rank scored its own batches, so one process scores their union; tensor parallel: the same batch.
    batches = None if ranks[0]["batches"] is None else ranks[0]["batches"] + (ranks[1]["batches"] if mode == "fsdp" else [])
    expected = compute_masks(model, sharded_fit.scorer_of(scorer), sparsity=sharded_fit.SPARSITY, iterations=sharded_fit.ITERATIONS[scorer],
                             example_input=torch.zeros(1, 16), dataloader=batches,
                             num_batches=None if batches is None else len(batches))
    for rank in ranks:
        assert list(rank["masks"]) == list(expected)
        for name in expected:
            assert torch.equal(rank["masks"][name], expected[name]), name
        assert rank["layouts"] == {n: rank["param_layouts"][n] for n in expected}
    total = sum(m.numel() for m in expected.values())
    assert sum(int(m.sum()) for m in ranks[0]["masks"].values()) == num_kept(1 - sharded_fit.SPARSITY, total)


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_pruned_weights_are_exactly_zero_after_every_step_and_after_training(results, mode, kind, scorer):
    for rank in load(results, mode, kind, scorer):
        assert rank["zero_after_step"] == [True] * 4
        assert rank["resumed_zero_after_step"] == [True] * 2
        for name, mask in rank["masks"].items():
            assert (rank["trained"][name][~mask] == 0).all()
            assert (rank["resumed_trained"][name][~mask] == 0).all()
            assert (rank["trained"][name][mask] != rank["init"][name][mask]).any()  # the kept ones trained


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
        assert rank["masks_dir"] == [".metadata", "__0_0.distcp", "__1_0.distcp"]
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
        assert report["kept"] == num_kept(1 - sharded_fit.SPARSITY, total)
        assert report["per_tensor"] == [int(m.sum()) for m in masks.values()]
        nonzero = sum(int((rank["trained"][n] != 0).sum()) for n in masks)
        assert report["measured_density"] == nonzero / total


@pytest.mark.parametrize("mode,kind,scorer", CASES)
def test_logged_figures_are_global_and_logged_once_by_rank_zero(results, mode, kind, scorer):
    ranks = load(results, mode, kind, scorer)
    assert ranks[1]["logged"] == []
    logged = {k: v for _, metrics in ranks[0]["logged"] for k, v in metrics.items()}
    masks = ranks[0]["masks"]
    total = sum(m.numel() for m in masks.values())
    assert logged["pruning/total"] == total
    assert logged["pruning/kept"] == num_kept(1 - sharded_fit.SPARSITY, total)
    for name, mask in masks.items():  # PruningDiagnostics(log_per_tensor=True)
        assert logged[f"pruning/density/{name}"] == int(mask.sum()) / mask.numel()
    assert logged["pruning/measured_sparsity"] == 1 - ranks[0]["report"]["measured_density"]
