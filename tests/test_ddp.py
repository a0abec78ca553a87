"""DDP with 2 CPU processes: every rank must end with the same masks, however its init and RNG differ, and
data-driven scorers must rank the scores of all ranks' data together.

All scorers run in one launch (a module fixture); the tests then read what each rank saved: its final
masks, the masks its own scoring gave before rank zero's were broadcast, and the batches it scored with.
"""

import os
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lightning_helpers import MLP, random_data
from lightning_synflow import available_scorers, compute_masks, get_scorer, num_kept

SCRIPT = Path(__file__).parent / "scripts" / "ddp_prune.py"
SCORERS = ["synflow", "random", "snip", "grasp", "grasp_abs", "snip_it", "iter_snip", "force", "ntksap", "erk", "synflow+isometry",
           "magnitude+shuffle"]
#: Scorers (and the shuffle ablation) whose positions come from the global generator, which the ranks seed
#: differently: without the broadcast of rank zero's masks the ranks would prune differently. (NTK-SAP draws
#: from it too, but sums its gradients over ranks, so every rank ranks the same totals.)
RANDOM_SCORERS = ["random", "erk", "magnitude+shuffle"]
#: Every scorer with ``needs_data``: each rank scores its own shard and the gradients are summed over ranks.
DATA_DRIVEN = ["snip", "snip_it", "iter_snip", "force", "grasp", "grasp_abs"]


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


def _equal(a, b):
    return list(a) == list(b) and all(torch.equal(a[n], b[n]) for n in a)


def test_every_data_driven_scorer_is_compared_with_one_process_over_the_union():
    assert sorted(DATA_DRIVEN) == sorted(n for n in available_scorers() if get_scorer(n).needs_data)
    assert set(DATA_DRIVEN) <= set(SCORERS) and set(RANDOM_SCORERS) <= set(SCORERS)


@pytest.mark.parametrize(("scorer", "input_from"), [(s, "example") for s in SCORERS] + [("synflow", "first-batch")])
def test_all_ranks_prune_identically_and_stay_in_sync(runs, scorer, input_from):
    r0, r1 = runs(scorer, input_from)
    assert r0["world_size"] == r1["world_size"] == 2
    assert not torch.equal(r0["init"]["net.0.weight"], r1["init"]["net.0.weight"])  # different random inits
    for key in r0["init"]:  # both ranks scored rank zero's initial weights (DDP's own broadcast)
        assert torch.equal(r0["pruned_from"][key], r0["init"][key]), key
        assert torch.equal(r1["pruned_from"][key], r0["init"][key]), key
    assert list(r0["masks"]) == list(r1["masks"]) == ["net.0.weight", "net.2.weight", "net.4.weight"]
    # Every rank ends with the masks rank zero's own scoring gave.
    assert _equal(r0["masks"], r0["local_masks"]) and _equal(r1["masks"], r0["local_masks"])
    if scorer in RANDOM_SCORERS:  # rank one's own scoring differed: only the broadcast makes the ranks agree
        assert not _equal(r1["local_masks"], r0["local_masks"])
    else:  # same weights, and scores summed over both ranks' data or draws: each rank's own scoring agrees
        assert _equal(r1["local_masks"], r0["local_masks"])
    for key in r0["state"]:
        assert torch.equal(r0["state"][key], r1["state"][key]), key
    total = sum(m.numel() for m in r0["masks"].values())
    assert sum(int(m.sum()) for m in r0["masks"].values()) == num_kept(1 - r0["sparsity"], total)
    for name, mask in r0["masks"].items():
        assert (r0["state"][name][~mask] == 0).all()
        assert (r1["state"][name][~mask] == 0).all()


def _shards(scorer):
    """Each rank's scoring batches: the scorer's default number of the first batches of its shard. Lightning
    always shuffles training data under DDP with DistributedSampler(seed=PL_GLOBAL_SEED or 0)."""
    data = random_data()
    n = get_scorer(scorer).default_num_batches
    samplers = [DistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=0) for r in (0, 1)]
    return [list(islice(DataLoader(data, batch_size=8, sampler=s), n)) for s in samplers]


def _one_process(run, scorer, batches):
    model = MLP()
    model.load_state_dict(run["pruned_from"])
    return compute_masks(model, scorer, sparsity=run["sparsity"], iterations=run["iterations"], dataloader=batches,
                         num_batches=len(batches))


@pytest.mark.parametrize("scorer", DATA_DRIVEN)
def test_data_driven_scores_are_summed_over_ranks_equal_to_one_process_over_the_union(runs, scorer):
    r0, r1 = runs(scorer)
    shards = _shards(scorer)
    for run, shard in zip((r0, r1), shards):  # each rank scored its own shard, as rebuilt here
        assert len(run["batches"]) == len(shard) >= 1
        for got, want in zip(run["batches"], shard):
            assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not torch.equal(torch.cat([x for x, _ in shards[0]]), torch.cat([x for x, _ in shards[1]]))
    union = _one_process(r0, scorer, shards[0] + shards[1])
    for rank, run in enumerate((r0, r1)):
        assert _equal(run["local_masks"], union), f"rank {rank}'s own scoring"
        assert _equal(run["masks"], union), f"rank {rank}'s final masks"
    for rank, shard in enumerate(shards):  # one shard alone prunes otherwise: the masks tell the union apart
        assert not _equal(_one_process(r0, scorer, shard), union), f"rank {rank}'s shard alone"
