"""Sharded parameters: which part of the full tensor a rank holds, who counts it, and masks laid out as the
parameters are.

Under FSDP2 (``fully_shard``) and tensor parallelism (``parallelize_module``) parameters are DTensors: each
rank holds a piece of the full tensor (``Shard(dim)`` cuts a dimension into ``torch.chunk`` pieces; FSDP2 on
top of tensor parallelism cuts the same dimension again, placed ``_StridedShard``) or all of it
(``Replicate()``). Pruning works on those local pieces and never assembles a full tensor: a :class:`Block`
says which indices of the full tensor a local piece holds, so that positions (ties go to the lower flat index
of the *full* tensor) and counts are global.

Counts take each weight once over the whole world, whatever the meshes: a rank may hold a DTensor on a mesh
that is a slice of a larger one (Lightning's ``device_mesh["data_parallel"]`` on a 1 x 2 mesh makes each
rank a whole replica on a one-rank mesh), so replicas are found by comparing every rank's blocks
(:func:`blocks_of`), not from a parameter's own mesh.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from math import prod

import torch
import torch.distributed as dist
from torch import Tensor, nn

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard
except ImportError:  # a torch built without distributed support: nothing can be sharded
    DTensor = None  # type: ignore[assignment,misc]

#: Indices of the full tensor along one dimension, increasing, as ``(start, stop)`` runs.
Runs = tuple[tuple[int, int], ...]


def is_sharded(t: object) -> bool:
    """``t`` is a DTensor."""
    return DTensor is not None and isinstance(t, DTensor)


def local(t: Tensor) -> Tensor:
    """This rank's piece of ``t``: the local shard of a DTensor (sharing its memory), else ``t`` itself."""
    return t.to_local() if is_sharded(t) else t


def like(template: Tensor, piece: Tensor) -> Tensor:
    """``piece`` (this rank's block) as a tensor laid out as ``template``: a DTensor with its mesh, placements
    and full shape where ``template`` is one, else ``piece`` itself."""
    if not is_sharded(template):
        return piece
    return DTensor.from_local(
        piece, template.device_mesh, template.placements, run_check=False, shape=template.shape, stride=template.stride()
    )


def sharded_dims(t: Tensor) -> set[int]:
    """The dimensions of ``t`` that some placement cuts (none for a plain tensor)."""
    if not is_sharded(t):
        return set()
    return {p.dim % t.dim() for p in t.placements if isinstance(p, (Shard, _StridedShard))}


@dataclass(frozen=True)
class Block:
    """Which elements of the full tensor this rank's piece holds: along each dimension an increasing set of
    indices, the piece being every combination of them in row-major order (so local order follows full order).

    Attributes:
        shape: The full tensor's shape.
        index: Per dimension, the full tensor's indices the piece holds, as increasing ``(start, stop)`` runs:
            one run for ``Shard``, up to ``split_factor`` runs for ``_StridedShard``.
        owner: This rank counts the piece: of the ranks holding this very block, it has the lowest global
            rank (:func:`blocks_of`).
    """

    shape: tuple[int, ...]
    index: tuple[Runs, ...]
    owner: bool = True

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def local_shape(self) -> tuple[int, ...]:
        return tuple(sum(stop - start for start, stop in runs) for runs in self.index)

    def indices(self, dim: int, device: torch.device | str | None = None) -> Tensor:
        """The full tensor's indices (int64) of the piece's entries along ``dim``, in local order."""
        runs = self.index[dim]
        if not runs:
            return torch.empty(0, dtype=torch.int64, device=device)
        return torch.cat([torch.arange(start, stop, device=device) for start, stop in runs])

    def global_positions(self, positions: Tensor) -> Tensor:
        """Flat indices in the full tensor (int64) of the local flat ``positions``."""
        rest = positions.long()
        out = torch.zeros_like(rest)
        stride = 1
        for dim in reversed(range(len(self.shape))):
            size = self.local_shape[dim]
            out += self.indices(dim, rest.device)[rest % size] * stride
            rest = rest // size
            stride *= self.shape[dim]
        return out

    def first_at_or_after(self, position: int) -> int:
        """The lowest local flat index whose full-tensor index is at least ``position`` (``prod(local_shape)`` if
        none): local order follows full order, so one bisection finds it."""
        lo, hi = 0, prod(self.local_shape)
        while lo < hi:
            mid = (lo + hi) // 2
            if int(self.global_positions(torch.tensor([mid]))[0]) < position:
                lo = mid + 1
            else:
                hi = mid
        return lo


def _runs(indices: Tensor) -> Runs:
    """Increasing ``indices`` as ``(start, stop)`` runs of consecutive ones."""
    if not indices.numel():
        return ()
    breaks = (torch.nonzero(indices.diff() != 1).view(-1) + 1).tolist()
    starts, stops = [0, *breaks], [*breaks, indices.numel()]
    return tuple((int(indices[a]), int(indices[b - 1]) + 1) for a, b in zip(starts, stops))


def block_of(name: str, t: Tensor) -> Block:
    """The :class:`Block` of parameter ``name`` on this rank (its ``owner`` left True: :func:`blocks_of`
    decides it over all ranks). The placements are applied in mesh order with torch's own splitting, so a
    ``_StridedShard`` piece is the rows torch puts there. Raises, naming the parameter and the placement, for a
    layout it cannot describe (``Partial``, custom placements, a rank outside the mesh)."""
    shape = tuple(t.shape)
    if not is_sharded(t):
        return Block(shape, tuple(((0, s),) for s in shape))
    check_placements(name, t)
    coordinate = t.device_mesh.get_coordinate()
    if coordinate is None:
        raise ValueError(f"parameter {name!r} is a DTensor on a device mesh this rank is not part of")
    index = [torch.arange(s) for s in shape]
    for mesh_dim, p in enumerate(t.placements):
        if isinstance(p, Replicate):
            continue
        dim = p.dim % t.dim()
        along = index[dim].view([1] * dim + [-1])  # torch splits along the placement's own dimension
        pieces, _ = p._split_tensor(along, t.device_mesh.size(mesh_dim), with_padding=False, contiguous=False)
        index[dim] = pieces[coordinate[mesh_dim]].reshape(-1)
    block = Block(shape, tuple(_runs(i) for i in index))
    if block.local_shape != tuple(local(t).shape) or any(bool((i.diff() <= 0).any()) for i in index):
        raise ValueError(
            f"parameter {name!r} has placements {tuple(t.placements)} on mesh {t.device_mesh}, which put a piece of"
            f" shape {block.local_shape} here, but this rank holds {tuple(local(t).shape)}: a layout pruning cannot"
            f" follow; exclude it (exclude_names=[{name!r}])"
        )
    return block


def check_placements(name: str, t: Tensor) -> None:
    """Raise unless every placement of the DTensor ``t`` is ``Shard(dim)``, ``_StridedShard`` or ``Replicate()``."""
    bad = [p for p in t.placements if not (type(p) in (Shard, _StridedShard) or isinstance(p, Replicate))]
    if bad:
        raise ValueError(
            f"parameter {name!r} has placement(s) {bad} on mesh {t.device_mesh}: pruning supports DTensors placed"
            f" Shard(dim), _StridedShard(dim) (FSDP2 over tensor parallelism) or Replicate() on each mesh dimension;"
            f" exclude it (exclude_names=[{name!r}]) or shard it so"
        )


def blocks_of(model: nn.Module, names: list[str]) -> dict[str, Block]:
    """:func:`block_of` for each of ``names``, all checked before any is used, with owners decided over the
    whole world (every rank calls this together when any of them is sharded)."""
    params = dict(model.named_parameters())
    return with_owners({n: params[n] for n in names})


def with_owners(tensors: Mapping[str, Tensor]) -> dict[str, Block]:
    """The blocks of ``tensors`` on this rank, each owned by the lowest global rank that holds the very same
    block. Every rank's blocks are gathered once, so replicas are found whatever mesh (or slice of one) a
    tensor lives on, and each tensor's distinct blocks are checked to tile it exactly: no overlap, no gap
    (pairwise only where the ranks disagree on its mesh or placements; torch's own split of one layout tiles).
    Plain tensors are whole on every rank: rank zero owns them. Collective when any tensor is sharded."""
    blocks = {n: block_of(n, t) for n, t in tensors.items()}
    if not any(is_sharded(t) for t in tensors.values()) or not (dist.is_available() and dist.is_initialized()):
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return {n: replace(b, owner=rank == 0) for n, b in blocks.items()}
    world, rank = dist.get_world_size(), dist.get_rank()
    everyone: list = [None] * world
    dist.all_gather_object(everyone, [(n, b.shape, b.index, _layout(tensors[n])) for n, b in blocks.items()])
    names = list(blocks)
    for r, theirs in enumerate(everyone):
        if [n for n, *_ in theirs] != names:
            raise ValueError(f"rank {r} prunes the parameters {[n for n, *_ in theirs]}, but rank {rank} prunes {names}: every rank must prune the same ones")
    out = {}
    for i, name in enumerate(names):
        held = [theirs[i][1:3] for theirs in everyone]
        distinct = list(dict.fromkeys(held))
        one_layout = len({theirs[i][3] for theirs in everyone}) == 1
        _check_tiling(name, tensors[name], [Block(shape, index) for shape, index in distinct], world, one_layout)
        out[name] = replace(blocks[name], owner=held.index(held[rank]) == rank)
    return out


def _layout(t: Tensor) -> str:
    """A digest of ``t``'s mesh (its global ranks) and placements: equal on ranks that hold one layout."""
    if not is_sharded(t):
        return ""
    return hashlib.sha256(repr((t.device_mesh.mesh.tolist(), tuple(t.placements))).encode()).hexdigest()


def _check_tiling(name: str, t: Tensor, blocks: list[Block], world: int, one_layout: bool) -> None:
    """Raise unless ``blocks`` (the distinct ones over all ranks) cover the full tensor exactly once; when every
    rank has the same layout (``one_layout``), torch's split tiles it and only the total is checked."""
    layout = f"{tuple(t.placements)} on mesh {t.device_mesh}" if is_sharded(t) else "a plain tensor"
    shapes = {b.shape for b in blocks}
    if len(shapes) > 1:
        raise ValueError(f"parameter {name!r} ({layout}) has different full shapes {sorted(shapes)} on the {world} ranks")

    def disjoint(a: Block, b: Block) -> bool:  # blocks are products of index sets: disjoint along some dimension
        return any(all(x[1] <= y[0] or y[1] <= x[0] for x in r for y in s) for r, s in zip(a.index, b.index))

    covered = sum(prod(b.local_shape) for b in blocks)
    pairs = [] if one_layout else ((a, b) for i, a in enumerate(blocks) for b in blocks[i + 1 :])
    overlap = next(((a, b) for a, b in pairs if not disjoint(a, b)), None)
    if covered != blocks[0].numel or overlap is not None:
        raise ValueError(
            f"parameter {name!r} ({layout}) is held in pieces that {'overlap' if overlap else 'leave gaps'} over the"
            f" {world} ranks, so no rank can count its weights once; exclude it (exclude_names=[{name!r}])"
        )


def check_shardable_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> None:
    """Raise unless each mask is laid out as its parameter: a DTensor with the same mesh and placements where
    the parameter is one, a plain tensor where it is not."""
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        p = params[name]
        if is_sharded(p) != is_sharded(mask) or (
            is_sharded(p) and (p.device_mesh != mask.device_mesh or tuple(p.placements) != tuple(mask.placements))
        ):
            layout = (lambda t: f"DTensor{tuple(t.placements)}" if is_sharded(t) else "a plain tensor")
            raise ValueError(f"mask {name!r} is {layout(mask)}, but its parameter is {layout(p)}: lay masks out as the parameters")
