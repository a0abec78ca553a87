"""compute_masks on a model sharded over 2 gloo processes, FSDP2 or tensor parallel, for tests/test_sharded.py.

Each rank builds the same model (seed 0), saves its unsharded weights, shards it and prunes it with every
case of CASES; rank zero saves the masks assembled from the ranks' shards (``full_tensor``: the test's
check, never the library's), each rank's batches, and what the masks and scores are laid out as.
Usage: sharded_prune.py OUT_DIR fsdp|tp
"""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from lightning_synflow import ERK, Uniform, compute_masks, compute_scores  # noqa: E402
from lightning_synflow.scorers import SNIP, Random, SynFlow  # noqa: E402

#: compute_scores on the sharded model, compared with one process's.
SCORES = ("synflow", "snip", "magnitude")

#: name -> compute_masks arguments; "data" cases get each rank's own batches.
CASES = {
    "synflow-global-3": dict(scorer="synflow", iterations=3),
    "synflow-uniform-3": dict(scorer="synflow", iterations=3, distribution="uniform"),
    "snip-global-1": dict(scorer="snip"),
    "snip-erk-1": dict(scorer="snip", distribution="erk"),
    "iter_snip-global-3": dict(scorer="iter_snip", iterations=3),
    "force-global-3": dict(scorer="force", iterations=3),
    "snip_it-global-3": dict(scorer="snip_it", iterations=3),
    "erk-1": dict(scorer="erk"),
    "magnitude-global-1": dict(scorer="magnitude"),
    "magnitude-uniform-1": dict(scorer="magnitude", distribution="uniform"),
    "random-global-1": dict(scorer="random"),
    "random-uniform-1": dict(scorer="random", distribution="uniform"),
    "random-inverted-2": dict(scorer="random", iterations=2, invert=True),
    "synflow-erk-3": dict(scorer="synflow", iterations=3, distribution="erk"),
    "uniform-1": dict(scorer="uniform"),
    "magnitude-mapping-1": dict(scorer="magnitude", distribution={"0.*": 0.5}),
}
SPARSITY = 0.8


def build(mode):
    torch.manual_seed(0)
    if mode == "fsdp":  # uneven shards: 7 conv channels and 10 classes over 2 ranks
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 7, 3), nn.ReLU(), nn.Flatten(),
            nn.Linear(7 * 4 * 4, 10),
        )
    # Tensor parallel in float64: row-parallel layers add partial sums across ranks, which float32 would round
    # differently from one process; see the test.
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(),
                         nn.Linear(32, 10)).double()


def shard(model, mode, mesh):
    if mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
    else:
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel(), "4": ColwiseParallel(),
                                         "6": RowwiseParallel()})


def example(mode):
    return torch.randn(2, 3, 8, 8) if mode == "fsdp" else torch.randn(2, 16, dtype=torch.float64)


def scorer_of(args, mode):
    dtype = "float32" if mode == "fsdp" else "float64"
    name = args["scorer"]
    if name == "synflow":
        return SynFlow(dtype=dtype)
    if name == "random":
        return Random(seed=0)
    if name == "erk":
        return ERK(seed=0)
    if name == "uniform":
        return Uniform(seed=0)
    if name == "snip":
        return SNIP(mode="train")
    return name


def run(rank, out, mode, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (2,))
    model = build(mode)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    shard(model, mode, mesh)
    torch.manual_seed(10 + rank)  # FSDP: each rank its own batches; tensor parallel: the same on both
    if mode == "tp":
        torch.manual_seed(10)
    x = example(mode)
    batches = [(example(mode), torch.randint(10, (2,)))]
    results, layouts = {}, {}
    for case, args in CASES.items():
        kwargs = {k: v for k, v in args.items() if k != "scorer"}
        masks = compute_masks(model, scorer_of(args, mode), sparsity=SPARSITY, example_input=x, dataloader=batches,
                              **kwargs)
        results[case] = {n: m.full_tensor() for n, m in masks.items()}
        layouts[case] = {n: (type(m).__name__, str(m.placements)) for n, m in masks.items()}
    scores, score_layouts = {}, {}
    for name in SCORES:
        got = compute_scores(model, scorer_of({"scorer": name}, mode), example_input=x, dataloader=batches)
        scores[name] = {n: s.full_tensor() for n, s in got.items()}
        score_layouts[name] = {n: (type(s).__name__, str(s.placements)) for n, s in got.items()}
    errors = refusals(model, mode, mesh, x, batches)
    params = {n: (type(p).__name__, str(p.placements)) for n, p in model.named_parameters()}
    torch.save(dict(masks=results, layouts=layouts, params=params, init=init, batches=batches, example=x, errors=errors,
                    scores=scores, score_layouts=score_layouts,
                    state_after={n: getattr(p, "full_tensor", p.clone)() for n, p in model.state_dict().items()}),
               os.path.join(out, f"{mode}-rank{rank}.pt"))
    dist.destroy_process_group()


def refusals(model, mode, mesh, x, batches):
    """What compute_masks refuses on a sharded model: the message of each, and whether every weight was
    left as it was."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.placement_types import _StridedShard

    def attempt(target, **kwargs):
        before = {n: getattr(p, "full_tensor", p.clone)().clone() for n, p in target.named_parameters()}
        try:
            compute_masks(target, sparsity=SPARSITY, example_input=x, dataloader=batches, **kwargs)
        except ValueError as err:
            after = {n: getattr(p, "full_tensor", p.clone)() for n, p in target.named_parameters()}
            return str(err), all(torch.equal(before[n], after[n]) for n in before)
        return None, None

    errors = {"grasp": attempt(model, scorer="grasp"), "shuffle": attempt(model, scorer="magnitude", shuffle=True)}
    strided = build(mode)
    layer = strided[0]
    layer.weight = nn.Parameter(DTensor.from_local(layer.weight.detach().chunk(2)[dist.get_rank()].clone(), mesh,
                                                   [_StridedShard(0, split_factor=2)], run_check=False))
    errors["strided"] = attempt(strided, scorer="magnitude", parameters=["0.weight"])
    if mode == "tp":  # the last layer left whole on every rank: data-driven scorers cannot sum its gradient
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        partly = build(mode)
        parallelize_module(partly, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
        errors["plain"] = attempt(partly, scorer="snip")
    return errors


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(run, args=(sys.argv[1], sys.argv[2], free_port()), nprocs=2)
