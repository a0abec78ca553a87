"""DDP with 2 CPU processes: every rank must end with the same masks, however its init and RNG differ."""

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


def run_ddp(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "PL_GLOBAL_SEED"}
    env.update(OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), *args], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.mark.parametrize("args", [("synflow",), ("random",), ("synflow", "first-batch"), ("snip",)])
def test_all_ranks_prune_identically_and_stay_in_sync(tmp_path, args):
    r0, r1 = run_ddp(tmp_path, *args)
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


def test_data_driven_scores_are_summed_over_ranks_equal_to_one_process_over_the_union(tmp_path):
    r0, r1 = run_ddp(tmp_path, "snip")
    # Lightning always shuffles training data under DDP with DistributedSampler(seed=PL_GLOBAL_SEED or 0):
    # rebuild each rank's first batch from the same sampler.
    data = random_data()
    samplers = [DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in (0, 1)]
    shards = [next(iter(DataLoader(data, batch_size=8, sampler=s))) for s in samplers]
    model = MLP()
    model.load_state_dict(r0["pruned_from"])
    single = compute_masks(model, "snip", sparsity=0.9, iterations=10, dataloader=shards, num_batches=2)
    for name, mask in single.items():
        assert torch.equal(r0["masks"][name], mask), name
