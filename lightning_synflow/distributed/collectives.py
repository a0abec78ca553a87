"""The collectives the package uses over a process group: broadcasts of masks and weights as raw tensors,
the sum and gather that sharded selection needs (:class:`Collectives`), and counts over ranks.

Broadcasts run on the model's device.

Lightning's ``strategy.broadcast`` (DDP) goes through ``broadcast_object_list``: the source pickles the
object, and every rank receives the bytes on the host and unpickles them, so a flat copy of all the weights
is held several times over (the concatenated tensor, its pickle, the received bytes, the unpickled tensor).
Here the bytes travel as they are, masks packed eight weights to a byte, through one buffer of at most
``chunk_bytes`` on the chosen device, and are written back into the given tensors in place: memory beyond
the tensors is that buffer (and 1 MiB of scratch for masks), whatever the model's size.

Every rank must pass the same names, shapes, dtypes and memory layouts, as DDP's replicas have: tensors
travel in memory order, so a channels-last weight goes without a copy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Optional, Protocol, TypeVar, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from lightning_synflow.distributed.sharding import Block, is_sharded, local, with_owners
from lightning_synflow.selection import topk
from lightning_synflow.validation import check_positive_int

#: Largest buffer a broadcast uses: 64 MiB of weights, or the masks of 64 Mi weights (8 MiB packed).
CHUNK_BYTES = 64 << 20

#: Mask entries packed or unpacked at a time (a multiple of 8).
_BLOCK = 1 << 20

Device = Union[torch.device, str, None]
Masks = TypeVar("Masks", bound=Mapping[str, Tensor])


def broadcast_tensors_(
    tensors: Sequence[Tensor], src: int = 0, group: Optional[dist.ProcessGroup] = None, *,
    device: Device = None, chunk_bytes: int = CHUNK_BYTES,
) -> None:
    """Overwrite ``tensors`` in place with global rank ``src``'s values, any dtypes mixed, their bytes sent
    through a buffer on ``device`` (the first tensor's if None; a CUDA device for NCCL). A no-op unless
    ``torch.distributed`` is initialised with more than one process in ``group``."""
    check_positive_int("chunk_bytes", chunk_bytes)
    if tensors and _active(group):
        flats = [_flat(t).view(torch.uint8) for t in tensors]
        _broadcast(flats, [f.numel() for f in flats], False, src, group, _device(device, tensors), chunk_bytes)


def broadcast_masks(
    masks: Masks, src: int = 0, group: Optional[dist.ProcessGroup] = None, *,
    device: Device = None, chunk_bytes: int = CHUNK_BYTES,
) -> Masks:
    """Global rank ``src``'s ``masks`` on every rank, written in place into each rank's own and returned:
    bool masks bit-packed (one bit per weight on the wire), others as :func:`broadcast_tensors_` sends them."""
    check_positive_int("chunk_bytes", chunk_bytes)
    if not masks or not _active(group):
        return masks
    device = _device(device, list(masks.values()))
    bools = [_flat(m) for m in masks.values() if m.dtype == torch.bool]
    _broadcast(bools, [(f.numel() + 7) // 8 for f in bools], True, src, group, device, max(1, chunk_bytes // 8))
    broadcast_tensors_([m for m in masks.values() if m.dtype != torch.bool], src, group, device=device,
                       chunk_bytes=chunk_bytes)
    return masks


def _active(group: Optional[dist.ProcessGroup]) -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def _device(device: Device, tensors: Sequence[Tensor]) -> torch.device:
    return tensors[0].device if device is None else torch.device(device)


def _flat(t: Tensor) -> Tensor:
    """``t``'s elements in memory order as a 1-D view, to be read and overwritten in place; dense tensors in
    any layout (channels-last) have one."""
    t = t.detach()
    if not t.is_contiguous():  # dims ordered by stride: a dense tensor becomes contiguous
        t = t.permute(sorted(range(t.dim()), key=lambda d: -t.stride(d)))
        if not t.is_contiguous():
            raise ValueError("only dense tensors can be broadcast in place; this one has gaps or overlaps")
    return t.view(-1)


def _broadcast(
    flats: list[Tensor], sizes: list[int], packed: bool, src: int, group: Optional[dist.ProcessGroup],
    device: torch.device, limit: int,
) -> None:
    """Send ``sizes[i]`` bytes for each of ``flats`` (their bytes, or their bits if ``packed``) from ``src``
    to every rank, in chunks of at most ``limit`` bytes, and write them into ``flats`` on the others."""
    if not sum(sizes):
        return
    sending = dist.get_rank() == src
    buffer = torch.empty(min(sum(sizes), limit), dtype=torch.uint8, device=device)
    for chunk in _chunks(sizes, limit):
        used = sum(stop - start for _, start, stop in chunk)
        parts = buffer[:used].split([stop - start for _, start, stop in chunk])
        if sending:
            for (i, start, stop), part in zip(chunk, parts):
                if packed:
                    _pack_into(flats[i][8 * start : 8 * stop], part)
                else:
                    part.copy_(flats[i][start:stop])
        dist.broadcast(buffer[:used], src, group=group)
        if not sending:
            for (i, start, stop), part in zip(chunk, parts):
                if packed:
                    _unpack_into(part, flats[i][8 * start : 8 * stop])
                else:
                    flats[i][start:stop].copy_(part)


def _chunks(sizes: list[int], limit: int) -> Iterator[list[tuple[int, int, int]]]:
    """Consecutive pieces ``(item, start, stop)`` covering ``range(sizes[item])`` for every item in order,
    grouped so that each group's pieces add up to at most ``limit``."""
    chunk: list[tuple[int, int, int]] = []
    room = limit
    for i, size in enumerate(sizes):
        start = 0
        while start < size:
            stop = min(size, start + room)
            chunk.append((i, start, stop))
            room -= stop - start
            start = stop
            if not room:
                yield chunk
                chunk, room = [], limit
    if chunk:
        yield chunk


def _blocks(bits: Tensor, packed: Tensor) -> Iterator[tuple[Tensor, Tensor]]:
    """``bits`` and the bytes of ``packed`` that hold them, ``_BLOCK`` bits at a time: scratch this small is
    memory the heap reuses, where a whole chunk's would be fresh pages to fault in (unpacking 25 M weights on
    CPU, cold: 63 ms in one piece, 5 ms in blocks)."""
    for start in range(0, bits.numel(), _BLOCK):
        yield bits[start : start + _BLOCK], packed[start // 8 : (start + _BLOCK) // 8]


def _bit_values(device: torch.device) -> Tensor:
    return torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=device)


def _pack_into(bits: Tensor, packed: Tensor) -> None:
    """Write the bools ``bits`` into ``packed`` eight to a byte, the first in the lowest bit, the last byte padded
    with zeros (on CPU through NumPy, ~40x faster than torch's kernels, and the same bytes)."""
    for block, out in _blocks(bits, packed):
        array, out_array = topk.as_numpy(block), topk.as_numpy(out)  # via the module: the switch tests turn
        if array is not None and out_array is not None:
            out_array[:] = np.packbits(array, bitorder="little")
        else:
            whole = torch.cat([block, block.new_zeros(-block.numel() % 8)])
            out.copy_((whole.view(-1, 8) * _bit_values(block.device)).sum(1, dtype=torch.uint8))


def _unpack_into(packed: Tensor, bits: Tensor) -> None:
    """Overwrite the bools ``bits`` with the first ``bits.numel()`` bits of ``packed``, as :func:`_pack_into`
    wrote them."""
    for block, source in _blocks(bits, packed):
        array, source_array = topk.as_numpy(block), topk.as_numpy(source)
        if array is not None and source_array is not None:
            array[:] = np.unpackbits(source_array, count=array.size, bitorder="little").view(np.bool_)
        else:
            source = source.to(block.device)
            block.copy_((source.unsqueeze(1) & _bit_values(block.device)).ne(0).view(-1)[: block.numel()])


class Collectives(Protocol):
    """The two collectives the selection needs; every rank calls them in the same order."""

    def sum(self, t: Tensor) -> Tensor:
        """Element-wise sum of ``t`` over all ranks."""

    def gather(self, t: Tensor) -> Tensor:
        """The 1-D ``t`` of every rank (any lengths), concatenated in rank order."""


class ProcessGroupCollectives:
    """:class:`Collectives` over a ``torch.distributed`` process group (the default one if None)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None) -> None:
        self.group = group

    def sum(self, t: Tensor) -> Tensor:
        t = t.clone()
        dist.all_reduce(t, group=self.group)
        return t

    def gather(self, t: Tensor) -> Tensor:
        world = dist.get_world_size(self.group)
        size = torch.tensor([t.numel()], device=t.device)
        sizes = [torch.empty_like(size) for _ in range(world)]
        dist.all_gather(sizes, size, group=self.group)
        longest = int(max(sizes))
        padded = t.new_zeros(longest)
        padded[: t.numel()] = t
        parts = [t.new_empty(longest) for _ in range(world)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[: int(s)] for p, s in zip(parts, sizes)])


def global_counts(
    masks: Sequence[Tensor], blocks: Sequence[Block], collectives: Collectives
) -> list[int]:
    """Per tensor, the ``True`` entries of the sharded ``masks`` over all ranks (each replica once)."""
    local = [int(torch.count_nonzero(m)) if b.owner else 0 for m, b in zip(masks, blocks)]
    device = masks[0].device if masks else None
    return collectives.sum(torch.tensor(local, dtype=torch.int64, device=device)).tolist()


def nonzero_counts(tensors: Mapping[str, Tensor]) -> dict[str, int]:
    """Per name, the non-zero entries of each tensor; where they are sharded, over all ranks (each replica
    once), so every rank must call this together."""
    if not any(is_sharded(t) for t in tensors.values()):
        return {n: int(torch.count_nonzero(t)) for n, t in tensors.items()}
    blocks = with_owners(tensors)
    return dict(zip(blocks, global_counts([local(t) for t in tensors.values()], list(blocks.values()), ProcessGroupCollectives())))
