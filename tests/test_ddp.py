"""DDP with 2 CPU processes: every rank must end with the same masks, however its init and RNG differ.

All scorers run in one launch (a module fixture); the tests then read what each rank saved.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lightning_helpers import MLP, random_data
from lightning_synflow import compute_masks, num_kept

SCRIPT = Path(__file__).parent / "scripts" / "ddp_prune.py"
SCORERS = ["synflow", "random", "snip", "grasp", "grasp_abs", "snip_it", "iter_snip", "force", "ntksap", "erk", "synflow+isometry"]


def launch(out, scorers, *extra):
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(out), ",".join(scorers), *extra], env=env,
                          capture_output=True, text=True, timeout=120 + 30 * len(scorers))
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    launch(out, SCORERS)
    launch(out, ["synflow"], "first-batch")
    return lambda scorer, input_from="example": [
        torch.load(out / f"{scorer}-{input_from}-rank{r}.pt", weights_only=False) for r in (0, 1)
    ]


@pytest.mark.parametrize(("scorer", "input_from"), [(s, "example") for s in SCORERS] + [("synflow", "first-batch")])
def test_all_ranks_prune_identically_and_stay_in_sync(runs, scorer, input_from):
    r0, r1 = runs(scorer, input_from)
    assert not torch.equal(r0["init"]["net.0.weight"], r1["init"]["net.0.weight"])  # different random inits
    assert list(r0["masks"]) == list(r1["masks"]) == ["net.0.weight", "net.2.weight", "net.4.weight"]
    for name in r0["masks"]:
        assert torch.equal(r0["masks"][name], r1["masks"][name]), name
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    total = sum(m.numel() for m in r0["masks"].values())
    assert sum(int(m.sum()) for m in r0["masks"].values()) == num_kept(0.1, total)
    for name, mask in r0["masks"].items():
        assert (r0["state"][name][~mask] == 0).all()


@pytest.mark.parametrize("scorer", ["snip", "grasp", "grasp_abs", "iter_snip", "force"])
def test_data_driven_scores_are_summed_over_ranks_equal_to_one_process_over_the_union(runs, scorer):
    r0, _ = runs(scorer)
    # Lightning always shuffles training data under DDP with DistributedSampler(seed=PL_GLOBAL_SEED or 0):
    # rebuild each rank's first batch from the same sampler.
    data = random_data()
    samplers = [DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in (0, 1)]
    shards = [next(iter(DataLoader(data, batch_size=8, sampler=s))) for s in samplers]
    model = MLP()
    model.load_state_dict(r0["pruned_from"])
    single = compute_masks(model, scorer, sparsity=0.9, iterations=10, dataloader=shards, num_batches=2)
    for name, mask in single.items():
        assert torch.equal(r0["masks"][name], mask), name
