"""Masks of a sharded model in checkpoints, bit-packed, written and read by each rank for its own shards.

A mask is packed eight weights to a byte along its last dimension that no placement shards, so the packed
tensor is a DTensor with the parameter's mesh and placements: each rank packs and unpacks only its block.

- A distributed checkpoint (``ModelParallelStrategy(save_distributed_checkpoint=True)``, a directory) gets
  the packed masks as a second ``torch.distributed.checkpoint`` beside the model's, in its sub-directory
  :data:`MASKS_DIR`: Lightning writes only the model and optimizer states with
  ``torch.distributed.checkpoint`` and everything else from rank zero, so :func:`save_masks_beside` runs
  after the strategy's own save. The model's state-dict keys stay its own. The packed shape depends on the
  placements, so a resume under a layout that packs a mask along another dimension reads it whole.
- A full checkpoint (one file, written by rank zero) gets them in the callback's state as full packed
  tensors: such a checkpoint gathers the whole model on rank zero anyway, and the masks add 1/32 of its
  float32 weights' bytes.

A tensor sharded on every dimension (a 1-D tensor, or a 2-D weight sharded on both, as FSDP2 over row-parallel
layers makes) has no dimension to pack along: a distributed checkpoint stores it as bools, one byte per
weight; a full one gathers the bools and packs them whole.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor, nn

from lightning_synflow.distributed.sharding import (
    block_of,
    is_sharded,
    like,
    local,
    sharded_dims,
)

#: The sub-directory of a distributed checkpoint that holds the masks.
MASKS_DIR = "pruning_masks"


def packing_dim(t: Tensor) -> Optional[int]:
    """The last dimension of ``t`` that no placement shards; None if there is none."""
    sharded = sharded_dims(t)
    free = [d for d in range(t.dim()) if d not in sharded]
    return free[-1] if free else None


def _packed_shape(shape: tuple[int, ...], dim: int) -> tuple[int, ...]:
    return shape[:dim] + ((shape[dim] + 7) // 8,) + shape[dim + 1 :]


def _pack(mask: Tensor, dim: int) -> Tensor:
    bits = np.packbits(mask.movedim(dim, -1).contiguous().cpu().numpy(), axis=-1, bitorder="little")
    return torch.from_numpy(bits).movedim(-1, dim).contiguous().to(mask.device)


def _unpack(packed: Tensor, size: int, dim: int) -> Tensor:
    bits = np.unpackbits(packed.movedim(dim, -1).contiguous().cpu().numpy(), axis=-1, count=size, bitorder="little")
    return torch.from_numpy(bits.view(np.bool_)).movedim(-1, dim).contiguous().to(packed.device)


def pack(mask: Tensor) -> Tensor:
    """``mask`` bit-packed along :func:`packing_dim`, laid out as ``mask`` (a DTensor with its mesh and
    placements, packed block by block); the bools themselves if no dimension is free."""
    dim = packing_dim(mask)
    if dim is None:
        return mask
    piece = _pack(local(mask), dim)
    if not is_sharded(mask):
        return piece
    shape = _packed_shape(tuple(mask.shape), dim)
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(piece, mask.device_mesh, mask.placements, run_check=False, shape=torch.Size(shape),
                              stride=torch.empty(shape, device="meta").stride())


def unpack(packed: Tensor, param: Tensor) -> Tensor:
    """The mask of ``param`` from :func:`pack`'s result (laid out as ``param``)."""
    dim = packing_dim(param)
    if dim is None:
        return packed
    return like(param, _unpack(local(packed), local(param).shape[dim], dim))


def empty_packed(param: Tensor) -> Tensor:
    """A tensor for :func:`torch.distributed.checkpoint.load` to fill with ``param``'s packed mask."""
    dim = packing_dim(param)
    piece = local(param)
    if dim is None:
        return like(param, torch.empty(piece.shape, dtype=torch.bool, device=piece.device))
    return pack(like(param, torch.zeros(piece.shape, dtype=torch.bool, device=piece.device)))


def save_masks_beside(masks: Mapping[str, Tensor], checkpoint: Path) -> None:
    """Write ``masks`` (packed) as a distributed checkpoint into ``checkpoint / MASKS_DIR``; every rank calls."""
    import torch.distributed.checkpoint as dcp

    dcp.save({n: pack(m) for n, m in masks.items()}, checkpoint_id=checkpoint / MASKS_DIR)


def load_masks_beside(model: nn.Module, names: list[str], checkpoint: Path) -> dict[str, Tensor]:
    """The masks :func:`save_masks_beside` wrote, each laid out as its parameter of ``model``; every rank calls.

    Saved under the current layout's packing (any mesh or placements that pack along the same dimension), each
    rank reads only its block. Saved under a layout that packed another way (a row-parallel weight resumed under
    FSDP2, say), each rank reads that mask whole, one bit per weight, and keeps its block."""
    import torch.distributed.checkpoint as dcp

    where = checkpoint / MASKS_DIR
    if not where.is_dir():
        raise FileNotFoundError(f"the checkpoint {checkpoint} has no pruning masks in {where}")
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"the checkpoint's masks name tensors that {type(model).__name__} does not have: {missing}")
    stored = dcp.FileSystemReader(str(where)).read_metadata().state_dict_metadata
    absent = [n for n in names if n not in stored]
    if absent:
        raise ValueError(f"the checkpoint's masks in {where} lack {absent}")
    packed, whole, dims = {}, {}, {}
    for name in names:
        param, expected, meta = params[name], empty_packed(params[name]), stored[name]
        if tuple(meta.size) == tuple(expected.shape) and meta.properties.dtype == expected.dtype:
            packed[name] = expected
            continue
        dims[name] = _saved_packing_dim(name, tuple(meta.size), meta.properties.dtype, tuple(param.shape))
        whole[name] = torch.empty(tuple(meta.size), dtype=meta.properties.dtype, device=local(param).device)
    dcp.load({**packed, **whole}, checkpoint_id=where)
    masks = {}
    for name in names:
        param = params[name]
        if name in packed:
            masks[name] = unpack(packed[name], param)
            continue
        bools = whole[name] if dims[name] is None else _unpack(whole[name], param.shape[dims[name]], dims[name])
        block = block_of(name, param)
        for d in range(bools.dim()):  # this rank's rows along every dimension
            bools = bools.index_select(d, block.indices(d, bools.device))
        masks[name] = like(param, bools.contiguous())
    return masks


def _saved_packing_dim(name: str, saved: tuple[int, ...], dtype: torch.dtype, shape: tuple[int, ...]) -> Optional[int]:
    """The dimension a mask of a parameter shaped ``shape`` was packed along, stored as ``saved`` of ``dtype``
    (None: stored as bools); raise if it is no mask of that shape."""
    if dtype == torch.bool and saved == shape:
        return None
    fits = [d for d in range(len(shape)) if saved == _packed_shape(shape, d)]
    if dtype != torch.uint8 or not fits:
        raise ValueError(
            f"the checkpoint's mask {name!r} is stored as {dtype} of shape {saved}, which packs no mask of the"
            f" parameter's shape {shape}: the checkpoint is of another model"
        )
    return fits[-1]  # several fit only where every other dimension has one element: the same bits either way


def full_packed(masks: Mapping[str, Tensor]) -> dict[str, Any]:
    """For a full checkpoint: each mask packed and gathered whole (every rank calls). A mask sharded on every
    dimension (a row-parallel weight under FSDP2) is gathered as bools and packed whole, along its last
    dimension: one bit per weight in the file either way."""
    out = {}
    for name, mask in masks.items():
        if packing_dim(mask) is None and mask.dim():
            whole = mask.full_tensor() if is_sharded(mask) else mask
            out[name] = {"packed": _pack(whole, mask.dim() - 1), "shape": tuple(mask.shape)}
            continue
        packed = pack(mask)
        out[name] = {"packed": packed.full_tensor() if is_sharded(packed) else packed, "shape": tuple(mask.shape)}
    return out


def from_full_packed(model: nn.Module, entries: Mapping[str, Any]) -> dict[str, Tensor]:
    """The masks of :func:`full_packed`, each rank unpacking just its block, laid out as ``model``'s parameters."""
    params = dict(model.named_parameters())
    missing = [n for n in entries if n not in params]
    if missing:
        raise ValueError(f"the checkpoint's masks name tensors that {type(model).__name__} does not have: {missing}")
    masks = {}
    for name, entry in entries.items():
        param, packed = params[name], entry["packed"]
        if tuple(entry["shape"]) != tuple(param.shape):
            raise ValueError(f"mask {name!r} has shape {tuple(entry['shape'])} but the parameter has shape {tuple(param.shape)}")
        block = block_of(name, param)
        dim = packing_dim(param)
        if dim is None and param.dim():  # packed whole along the last dimension: unpack whole, then take the block
            packed, dim = _unpack(packed, param.shape[-1], param.dim() - 1), None
        piece = packed
        for d in range(piece.dim()):  # this rank's rows along every dimension but the packed one
            if d != dim:
                piece = piece.index_select(d, block.indices(d, piece.device))
        piece = piece.to(local(param).device)
        masks[name] = like(param, piece.clone() if dim is None else _unpack(piece, block.local_shape[dim], dim))
    return masks
