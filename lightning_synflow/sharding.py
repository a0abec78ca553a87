"""Sharded parameters: which block of the full tensor a rank holds, and masks laid out as the parameters are.

Under FSDP2 (``fully_shard``) and tensor parallelism (``parallelize_module``) parameters are DTensors: each
rank holds a block of the full tensor (``Shard(dim)`` cuts a dimension into ``torch.chunk`` pieces) or all
of it (``Replicate()``). Pruning works on those local blocks and never assembles a full tensor: a
:class:`Block` says where a local piece sits in the full tensor, so that positions (ties go to the lower flat
index of the *full* tensor) and counts (each weight once, from the first replica) are global.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from math import prod

import torch
import torch.distributed as dist
from torch import Tensor, nn

try:
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
except ImportError:  # a torch built without distributed support: nothing can be sharded
    DTensor = None  # type: ignore[assignment,misc]


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


@dataclass(frozen=True)
class Block:
    """Where this rank's piece of a tensor sits in the full tensor.

    Attributes:
        shape: The full tensor's shape.
        local_shape: This rank's piece's shape (a row-major block of the full tensor).
        offset: The full tensor's index of the piece's first element, per dimension.
        owner: This rank counts the piece: it is the first replica (coordinate 0 on every mesh dimension the
            tensor is replicated over; global rank 0 for a plain tensor, which every rank holds whole).
    """

    shape: tuple[int, ...]
    local_shape: tuple[int, ...]
    offset: tuple[int, ...]
    owner: bool

    @property
    def numel(self) -> int:
        return prod(self.shape)

    def global_positions(self, positions: Tensor) -> Tensor:
        """Flat indices in the full tensor (int64) of the local flat ``positions``."""
        rest = positions.long()
        out = torch.zeros_like(rest)
        stride = 1
        for size, local_size, off in reversed(list(zip(self.shape, self.local_shape, self.offset))):
            out += (rest % local_size + off) * stride
            rest = rest // local_size
            stride *= size
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


def block_of(name: str, t: Tensor) -> Block:
    """The :class:`Block` of parameter ``name`` on this rank. Raises, naming the parameter and the placement,
    for a layout whose local piece is not one row-major block (``_StridedShard``, ``Partial``, custom
    placements)."""
    shape = tuple(t.shape)
    if not is_sharded(t):
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        return Block(shape, shape, (0,) * len(shape), owner=rank == 0)
    check_placements(name, t)
    local_shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    coordinate = t.device_mesh.get_coordinate()
    if coordinate is None:
        raise ValueError(f"parameter {name!r} is a DTensor on a device mesh this rank is not part of")
    owner = all(c == 0 for c, p in zip(coordinate, t.placements) if isinstance(p, Replicate))
    return Block(shape, tuple(local_shape), tuple(offset), owner)


def check_placements(name: str, t: Tensor) -> None:
    """Raise unless every placement of the DTensor ``t`` is ``Shard(dim)`` or ``Replicate()``."""
    bad = [p for p in t.placements if not (type(p) is Shard or isinstance(p, Replicate))]
    if bad:
        raise ValueError(
            f"parameter {name!r} has placement(s) {bad} on mesh {t.device_mesh}: pruning supports DTensors placed"
            f" Shard(dim) or Replicate() on each mesh dimension (FSDP2's fully_shard, ColwiseParallel,"
            f" RowwiseParallel); exclude it (exclude_names=[{name!r}]) or shard it so"
        )


def blocks_of(model: nn.Module, names: list[str]) -> dict[str, Block]:
    """:func:`block_of` for each of ``names``, all checked before any is used."""
    params = dict(model.named_parameters())
    return {n: block_of(n, params[n]) for n in names}


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
