"""compute_masks on a model sharded over gloo processes in every layout ModelParallelStrategy makes, for
tests/test_sharded.py.

Layouts (MODES): FSDP2 over 2 ranks; tensor parallel over 2; "replicas": Lightning's default 1 x 2 mesh
(data_parallel x tensor_parallel), the convolutions fully_shard over the one-rank "data_parallel" slice (a
whole replica on each rank) and the last layer over "tensor_parallel" (parameters on different meshes);
HSDP on a 2 x 2 (replicate x shard) mesh; FSDP2 over tensor parallelism on one 2 x 2 mesh
(``_StridedShard``). Each rank builds the same model (seed 0), saves its unsharded weights, shards it and
prunes it with every case of CASES; it saves the masks assembled from the ranks' shards (``full_tensor``:
the test's check, never the library's), its batches, and what the masks and scores are laid out as.
Usage: sharded_prune.py OUT_DIR WORLD_SIZE MODE[,MODE...]  (modes of that world size, run one after another)
"""

import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from lightning_synflow import ERKRandom, UniformRandom, compute_masks, compute_scores  # noqa: E402
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

#: mode -> processes it runs on.
MODES = {"fsdp": 2, "tp": 2, "replicas": 2, "hsdp": 4, "2d": 4}


def data_ranks(mode):
    """The ranks whose batches are the distinct ones (each rank scores its own; tensor parallel peers and
    Lightning's replicas share theirs): one process scores their union."""
    return {"fsdp": [0, 1], "tp": [0], "replicas": [0], "hsdp": [0, 1, 2, 3], "2d": [0, 2]}[mode]


def data_seed(mode, rank):
    return 10 + (rank // 2 if mode == "2d" else rank if rank in data_ranks(mode) else 0)


def convolutional(mode):
    return mode in ("fsdp", "replicas")


def build(mode):
    torch.manual_seed(0)
    if convolutional(mode):  # uneven shards: 7 conv channels and 10 classes over 2 ranks
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 7, 3), nn.ReLU(), nn.Flatten(),
            nn.Linear(7 * 4 * 4, 10),
        )
    # float64: row-parallel layers add partial sums across ranks, and HSDP sums 4 ranks' gradients in another
    # order than one process, which float32 would round differently; see the test. 10 rows over 2 x 2 ranks are
    # uneven, and _StridedShard's pieces are two runs of rows.
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 32), nn.ReLU(),
                         nn.Linear(32, 10)).double()


def mesh_of(mode):
    from torch.distributed.device_mesh import init_device_mesh

    if mode in ("fsdp", "tp"):
        return init_device_mesh("cpu", (2,))
    if mode == "replicas":
        return init_device_mesh("cpu", (1, 2), mesh_dim_names=("data_parallel", "tensor_parallel"))
    if mode == "hsdp":
        return init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh("cpu", (2, 2), mesh_dim_names=("data_parallel", "tensor_parallel"))


def shard(model, mode, mesh):
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    plan = {"0": ColwiseParallel(), "2": RowwiseParallel(), "4": ColwiseParallel(), "6": RowwiseParallel()}
    if mode == "tp":
        parallelize_module(model, mesh, plan)
        return
    if mode == "2d":
        parallelize_module(model, mesh["tensor_parallel"], plan)
        mesh = mesh["data_parallel"]
    if mode == "replicas":
        fully_shard(model[6], mesh=mesh["tensor_parallel"])
        mesh = mesh["data_parallel"]
    for layer in model:
        if isinstance(layer, (nn.Conv2d, nn.Linear)) and not (mode == "replicas" and layer is model[6]):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)


def example(mode):
    return torch.randn(2, 3, 8, 8) if convolutional(mode) else torch.randn(2, 16, dtype=torch.float64)


def scorer_of(args, mode):
    dtype = "float32" if convolutional(mode) else "float64"
    name = args["scorer"]
    if name == "synflow":
        return SynFlow(dtype=dtype)
    if name == "random":
        return Random(seed=0)
    if name == "erk":
        return ERKRandom(seed=0)
    if name == "uniform":
        return UniformRandom(seed=0)
    if name == "snip":
        return SNIP(mode="train")
    return name


def run(rank, out, modes, world, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    for mode in modes:
        prune(rank, out, mode)
    dist.destroy_process_group()


def prune(rank, out, mode):
    mesh = mesh_of(mode)
    model = build(mode)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    shard(model, mode, mesh)
    torch.manual_seed(data_seed(mode, rank))  # each rank its own batches, or its peers'
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
    plain = plain_case(mode, mesh, x, batches) if mode == "tp" else None
    relayout = relayout_case(model, mesh, out) if mode == "tp" else None
    strided = strided_case(mesh) if mode == "fsdp" else None
    params = {n: (type(p).__name__, str(p.placements)) for n, p in model.named_parameters()}
    meshes = {n: p.device_mesh.mesh.tolist() for n, p in model.named_parameters()}
    torch.save(dict(masks=results, layouts=layouts, params=params, meshes=meshes, init=init, batches=batches, example=x,
                    errors=errors, plain=plain, relayout=relayout, strided=strided, scores=scores, score_layouts=score_layouts,
                    state_after={n: getattr(p, "full_tensor", p.clone)() for n, p in model.state_dict().items()}),
               os.path.join(out, f"{mode}-rank{rank}.pt"))


def plain_case(mode, mesh, x, batches):
    """The last two layers left whole (plain tensors) on both tensor parallel ranks, which score the same
    batches: each rank's gradient of a plain weight is the whole one, so SNIP's masks are one process's."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    partly = build(mode)
    parallelize_module(partly, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})
    masks = compute_masks(partly, SNIP(mode="train"), sparsity=SPARSITY, example_input=x, dataloader=batches)
    return {n: getattr(m, "full_tensor", m.clone)() for n, m in masks.items()}


#: The tensors relayout_case saves: weights and a bias, packed along another dimension under each layout.
RELAYOUT_NAMES = ["0.weight", "2.weight", "2.bias", "6.weight"]


def relayout_case(model, mesh, out):
    """Masks saved beside a distributed checkpoint under tensor parallelism and resumed under FSDP2 on the same
    two ranks, then saved there and resumed under tensor parallelism again: a row-parallel weight packs along its
    rows, FSDP2's along its columns; the row-parallel bias is packed whole, FSDP2's kept as bools. The masks each
    time (assembled), and the placements they came back with."""
    from torch.distributed.fsdp import fully_shard

    from lightning_synflow.distributed.checkpoint import load_masks_beside, save_masks_beside

    saved = compute_masks(model, Random(seed=0), sparsity=SPARSITY, parameters=RELAYOUT_NAMES)
    save_masks_beside(saved, Path(out) / "relayout-tp")
    fsdp = build("tp")
    for layer in fsdp:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(fsdp, mesh=mesh)
    to_fsdp = load_masks_beside(fsdp, RELAYOUT_NAMES, Path(out) / "relayout-tp")
    save_masks_beside(to_fsdp, Path(out) / "relayout-fsdp")
    tp = build("tp")
    shard(tp, "tp", mesh)
    back = load_masks_beside(tp, RELAYOUT_NAMES, Path(out) / "relayout-fsdp")
    return {key: {n: (m.full_tensor(), str(m.placements)) for n, m in masks.items()}
            for key, masks in (("saved", saved), ("fsdp", to_fsdp), ("tp", back))}


#: The prunable tensors of strided_case, and the scorers it prunes them with.
STRIDED_NAMES = ["0.weight", "3.weight", "6.weight"]
STRIDED_SCORERS = ("magnitude", "random")


def strided_case(mesh):
    """The last layer's weight placed _StridedShard(0, split_factor=2) on its own, the others left whole: of its
    10 rows rank 0 holds {0, 1, 2, 5, 6, 7} and rank 1 {3, 4, 8, 9}, a piece that is no one block. Masks of the
    data-free scorers, the piece's shape, and whether a full checkpoint's masks come back as they were."""
    from torch.distributed.tensor import distribute_tensor
    from torch.distributed.tensor.placement_types import _StridedShard

    from lightning_synflow.distributed.checkpoint import from_full_packed, full_packed
    from lightning_synflow.distributed.sharding import local

    model = build("fsdp")
    layer = model[6]
    # Every rank holds the same weights: each takes its piece as torch splits it (its scatter pads uneven strided
    # pieces wrongly).
    layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [_StridedShard(0, split_factor=2)],
                                                  src_data_rank=None))
    masks, back = {}, {}
    for name in STRIDED_SCORERS:
        got = compute_masks(model, scorer_of({"scorer": name}, "fsdp"), sparsity=SPARSITY, parameters=STRIDED_NAMES)
        masks[name] = {n: getattr(m, "full_tensor", m.clone)() for n, m in got.items()}
        again = from_full_packed(model, full_packed(got))
        back[name] = all(torch.equal(local(again[n]), local(got[n])) for n in got)
    return dict(masks=masks, local_rows=local(layer.weight).shape[0], checkpoint_round_trip=back)


def refusals(model, mode, mesh, x, batches):
    """What compute_masks refuses on a sharded model: the message of each, and whether this rank's pieces of
    every weight were left as they were."""
    from torch.distributed.tensor import DTensor, Partial

    def attempt(target, data=batches, **kwargs):
        before = {n: getattr(p, "to_local", p.clone)().clone() for n, p in target.named_parameters()}  # this rank's
        try:
            compute_masks(target, sparsity=SPARSITY, example_input=x, dataloader=data, **kwargs)
        except ValueError as err:
            after = {n: getattr(p, "to_local", p.clone)() for n, p in target.named_parameters()}
            return str(err), all(torch.equal(before[n], after[n]) for n in before)
        return None, None

    errors = {"grasp": attempt(model, scorer="grasp"), "shuffle": attempt(model, scorer="magnitude", shuffle=True)}
    if mode in ("fsdp", "tp"):  # a placement whose local piece is no part of the full tensor
        partial = build(mode)
        layer = partial[0]
        layer.weight = nn.Parameter(DTensor.from_local(layer.weight.detach().clone(), mesh, [Partial()], run_check=False))
        errors["partial"] = attempt(partial, scorer="magnitude", parameters=["0.weight"])
    if mode == "fsdp":  # FSDP2 mixed precision would score bfloat16 copies of the float32 weights
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mixed = build(mode)
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in mixed:
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                fully_shard(layer, mesh=mesh, mp_policy=policy)
        fully_shard(mixed, mesh=mesh, mp_policy=policy)
        errors["mixed-synflow"] = attempt(mixed, scorer=SynFlow())
        errors["mixed-snip"] = attempt(mixed, scorer="snip")
    if mode == "replicas":  # rank 0 holds the whole weight, rank 1 the second half of it: they overlap
        from torch.distributed.tensor import Replicate, Shard

        overlapping = build(mode)
        weight = overlapping[6].weight.detach()
        if dist.get_rank() == 0:
            piece = DTensor.from_local(weight.clone(), mesh["data_parallel"], [Replicate()], run_check=False)
        else:
            piece = DTensor.from_local(weight[5:].clone(), mesh["tensor_parallel"], [Shard(0)], run_check=False,
                                       shape=weight.shape, stride=weight.stride())
        overlapping[6].weight = nn.Parameter(piece)
        errors["overlap"] = attempt(overlapping, scorer="magnitude", parameters=["6.weight"])
    if mode == "2d":  # tensor parallel alone on the 2-D mesh: nothing sums the data-parallel ranks' gradients
        from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

        unreduced = build(mode)
        parallelize_module(unreduced, mesh["tensor_parallel"], {"0": ColwiseParallel(), "2": RowwiseParallel(),
                                                                "4": ColwiseParallel(), "6": RowwiseParallel()})
        errors["unreduced"] = attempt(unreduced, scorer="snip")
    if mode in ("replicas", "2d"):  # peers that FSDP2 does not sum over, scoring different batches
        torch.manual_seed(20 + dist.get_rank())
        errors["batches"] = attempt(model, data=[(example(mode), torch.randint(10, (2,)))], scorer="snip")
    return errors


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    world_size = int(sys.argv[2])
    mp.spawn(run, args=(sys.argv[1], sys.argv[3].split(","), world_size, free_port()), nprocs=world_size)
