"""Scoring a sharded model (FSDP2, tensor parallelism) by running the model itself.

FSDP2 gathers each layer's parameters in its own forward hooks and reduce-scatters their gradients in its
backward hooks; ``functional_call``'s swapped tensors would bypass both. So on a sharded model a scorer
writes the weights it scores at (``θ ⊙ c``, or SynFlow's ``|θ| ⊙ c``) into the parameters' local shards,
runs the model as training does, reads the sharded ``.grad`` and writes the weights back. Nothing is ever
gathered beyond the layer FSDP2 is computing; the saved copy is one rank's share of the weights.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves

from lightning_synflow._moved import renamed_attributes
from lightning_synflow.distributed.sharding import is_sharded, like, local
from lightning_synflow.model_state import overwritten


def is_sharded_model(masks: Mapping[str, Tensor]) -> bool:
    """The masks (hence the parameters they cover) are DTensors: score with this module's helpers."""
    return any(is_sharded(m) for m in masks.values())


@contextmanager
def summed_gradients(model: nn.Module, scored: Sequence[str], batches: Sequence[object]) -> Iterator[None]:
    """Gradients summed over the distinct batches the ranks score, as one process scoring their union would.

    FSDP2 reduces each parameter group's gradient over its mesh (shards and, under HSDP, replicas) and
    divides by the group's size; ranks on that mesh may see the same batch (a layer sharded over the tensor
    parallel ranks, which share their data) or different ones. So each group's divide factor becomes how many
    of its ranks score each distinct batch, and the sum over its ranks counts each batch once. A gradient FSDP2
    does not reduce (a tensor parallel or plain parameter among ``scored``) is this rank's own: then every rank must
    score the same batches. Anything else is refused, before a weight is touched."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        yield
        return
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    groups = [g for m in modules for g in m._get_fsdp_state()._fsdp_param_groups]
    factors = _divide_factors(model, groups, scored, batches)
    saved = [(g.gradient_divide_factor, g.force_sum_reduction_for_comms) for g in groups]
    for g, factor in zip(groups, factors):
        g.gradient_divide_factor = float(factor)
        g.force_sum_reduction_for_comms = True  # a plain sum (gloo has no pre-multiplied sum), then the factor
    try:
        yield
    finally:
        for g, (factor, force_sum) in zip(groups, saved):
            g.gradient_divide_factor, g.force_sum_reduction_for_comms = factor, force_sum


def _fingerprint(batches: Sequence[object]) -> str:
    """A digest of the batches' contents: equal batches on two ranks give equal digests."""
    digest = hashlib.sha256()
    for leaf in tree_leaves(list(batches)):
        if isinstance(leaf, Tensor):
            t = leaf.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{t.dtype}{tuple(leaf.shape)}".encode())
            digest.update(t.view(torch.uint8).numpy().tobytes())
        else:
            digest.update(repr(leaf).encode())
    return digest.hexdigest()


def _divide_factors(model: nn.Module, groups: list, scored: Sequence[str], batches: Sequence[object]) -> list[int]:
    """For each FSDP2 parameter group, how many of the ranks it reduces over score each distinct batch; raise,
    for a group holding a ``scored`` parameter, unless its sum counts every batch that any rank scores that
    many times."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [1] * len(groups)
    prints: list = [None] * dist.get_world_size()
    dist.all_gather_object(prints, _fingerprint(batches))
    distinct = set(prints)
    params = dict(model.named_parameters())
    names = {id(p): n for n, p in params.items()}
    factors, reduced, wanted = [], set(), set(scored)
    for g in groups:
        held = [fp.sharded_param for fp in g.fsdp_params]
        reduced.update(id(p) for p in held)
        if not any(names.get(id(p)) in wanted for p in held):  # no score reads these gradients
            factors.append(1)
            continue
        ranks = g.mesh_info.mesh.mesh.flatten().tolist()
        seen = Counter(prints[r] for r in ranks)
        if set(seen) != distinct or len(set(seen.values())) != 1:
            raise ValueError(
                f"FSDP2 sums the gradients of {[names.get(id(p)) for p in held]} over ranks {ranks}, which score"
                f" {len(seen)} of the {len(distinct)} different sets of batches the ranks score, not each equally often:"
                f" scoring would not be one process's over their union; give the ranks a data-parallel mesh shards"
                f" or replicates over different batches, and every other rank the same batches as its peers"
            )
        factors.append(next(iter(seen.values())))
    own = [n for n in scored if id(params[n]) not in reduced]
    if own and len(distinct) > 1:
        raise ValueError(
            f"the gradients of {own} are not reduced over the ranks (no fully_shard holds them), but the ranks score"
            f" {len(distinct)} different sets of batches: score the same batches on every rank, or fully_shard them"
        )
    return factors


def check_no_casting(model: nn.Module) -> None:
    """Scoring runs the model through FSDP2, whose mixed precision policy would score the weights cast to its
    dtype (and reduce their gradients in it), not the parameters one process scores: refuse such a policy."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        return
    for name, module in model.named_modules():
        if not isinstance(module, FSDPModule):
            continue
        policy = module._get_fsdp_state()._mp_policy
        own = {p.dtype for p in module.parameters() if p.is_floating_point()}
        casts = {d for d in (policy.param_dtype, policy.reduce_dtype, policy.output_dtype) if d is not None} - own
        if casts:
            raise ValueError(
                f"fully_shard on {f'module {name!r}' if name else 'the root module'} has mp_policy={policy}, which"
                f" casts to {sorted(map(str, casts))} though the parameters are {sorted(map(str, own))}: scores would be"
                f" of the cast weights and gradients, not those one process computes; prune before applying mp_policy"
                f" (fully_shard without it), or with the parameters themselves in the dtype it computes in"
            )


def masked_loss_gradients(
    model: nn.Module, masks: Mapping[str, Tensor], batches: Sequence[object], loss_fn
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``(w, g)`` as DTensors laid out as the parameters: ``w = θ ⊙ c`` and ``g = Σ_batches ∂L/∂w`` summed over
    the data-parallel ranks (each rank scores its own batches)."""
    params = dict(model.named_parameters())
    targets = [params[n] for n in masks]
    for p in model.parameters():
        p.grad = None
    with summed_gradients(model, list(masks), batches), overwritten([local(p) for p in targets]):
        with torch.no_grad():
            for p, m in zip(targets, masks.values()):
                local(p).mul_(local(m))
        for p in targets:
            p.requires_grad_(True)
        for batch in batches:
            loss = loss_fn(model, batch)
            if not isinstance(loss, Tensor) or loss.dim() != 0:
                raise TypeError(f"the scoring loss must be a scalar tensor, got {type(loss).__name__} {getattr(loss, 'shape', '')}")
            loss.backward()
    grads = {n: torch.zeros_like(p) if p.grad is None else p.grad for n, p in zip(masks, targets)}
    weights = {n: like(p, local(p).detach() * local(masks[n])) for n, p in zip(masks, targets)}
    return weights, grads


#: Names this module had before the wings, now elsewhere.
__getattr__ = renamed_attributes(__name__, {"preserved_buffers": "lightning_synflow.model_state.preserved_buffers"})
