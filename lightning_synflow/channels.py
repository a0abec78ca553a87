"""Channel granularity: whole output channels (neurons) kept or pruned, coupled channels together, and
:func:`shrink`, which removes the pruned ones so that the network that trains is smaller.

Which channels must go together is read from the model itself by tracing one forward pass, with
Torch-Pruning's dependency graph (``pip install torch-pruning``, the ``structured`` extra): a residual add
couples the channels it adds, a depthwise convolution its input and output channels, a concatenation maps
channels through, a BatchNorm follows its channel. Each :class:`ChannelGroup` is one set of coupled
channels, rooted at a convolution or Linear layer whose weights are prunable; the layers whose outputs are
the model's outputs (the classes) are never roots, and a group that would change them, or a layer it cannot
remove a channel of exactly (a LayerNorm or GroupNorm normalises over all channels, so a zeroed channel
still counts; attention, embeddings), is left whole.

A channel's score is the sum of its weights' scores over every layer of the group whose output channel it
is: for SynFlow the flow through a neuron is the sum of the scores of its incoming weights (the
conservation law), for magnitude it is the L1 norm of the filters (Li et al., ICLR 2017), for SNIP the
first-order change of the loss summed over the channel's weights, for random a random ranking. Masks cover
the channel's weights and also its biases and normalisation parameters, so that the masked network
computes exactly what the shrunk one does: a pruned channel outputs zero.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from lightning_synflow.distributions import Budget
from lightning_synflow.ranking import budget_groups, top_k_masks

_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _torch_pruning() -> Any:
    try:
        import torch_pruning
    except ImportError as err:
        raise ImportError(
            "granularity='channel' and shrink() trace coupled channels with Torch-Pruning: pip install torch-pruning"
            " (or lightning-synflow[structured])"
        ) from err
    return torch_pruning


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled output channels, kept or pruned together.

    Attributes:
        name: The root layer's weight name, naming the group.
        size: Its number of channels.
        rows: ``(parameter name, index)`` for every parameter holding these channels along its first dimension:
            channel ``j`` of the group is row ``index[j]`` of the parameter.
        scored: The names among ``rows`` of layer weights (whose scores add up to the channel's).
    """

    name: str
    size: int
    rows: tuple[tuple[str, Tensor], ...]
    scored: tuple[str, ...]


def output_layers(model: nn.Module, example_input: Any) -> set[nn.Module]:
    """The convolution and Linear layers whose outputs reach the model's outputs through no other such layer
    (found through the autograd graph of one forward pass, frozen parameters made to require grad for it)."""
    produced: dict[Any, nn.Module] = {}

    def record(module: nn.Module, args: Any, out: Any) -> None:
        if isinstance(out, Tensor) and out.grad_fn is not None:
            produced[out.grad_fn] = module

    hooks = [m.register_forward_hook(record) for m in model.modules() if isinstance(m, _LAYERS)]
    frozen = [p for p in model.parameters() if not p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(True)
        with torch.enable_grad():
            outputs = _call(model, example_input)
    finally:
        for p in frozen:
            p.requires_grad_(False)
        for h in hooks:
            h.remove()
    found: set[nn.Module] = set()
    seen: set[Any] = set()
    stack = [t.grad_fn for t in _tensors(outputs) if t.grad_fn is not None]
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        if fn in produced:
            found.add(produced[fn])
            continue
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def channel_groups(model: nn.Module, example_input: Any, names: Sequence[str]) -> list[ChannelGroup]:
    """The groups of coupled output channels of the layers whose weights are among ``names``, in model order."""
    tp = _torch_pruning()
    params = {id(p): n for n, p in model.named_parameters()}
    wanted = set(names)
    outputs = output_layers(model, example_input)
    roots = [m for m in model.modules() if isinstance(m, _LAYERS) and params.get(id(m.weight)) in wanted and m not in outputs]
    ignored = [m for m in model.modules() if isinstance(m, _LAYERS) and m not in roots]
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    groups = []
    for group in graph.get_all_groups(ignored_layers=ignored, root_module_types=_LAYERS):
        built = _group(group, params, set(ignored))
        if built is not None:
            groups.append(built)
    order = {n: i for i, n in enumerate(params.values())}
    return sorted(groups, key=lambda g: order[g.name])


def _group(group: Any, params: Mapping[int, str], ignored: set[nn.Module]) -> ChannelGroup | None:
    """A :class:`ChannelGroup` from a Torch-Pruning group; None if it must stay whole."""
    items = group._group
    root = items[0].dep.target.module
    size = root.weight.shape[0]
    rows, scored = [], []
    for item in items:
        module = item.dep.target.module
        if item.dep.handler.__name__ != "prune_out_channels" or not list(module.parameters(recurse=False)):
            continue  # input channels follow by themselves; parameter-free ops have nothing to mask
        if module in ignored or not isinstance(module, _LAYERS + _NORMS):
            return None
        index = torch.full((size,), -1, dtype=torch.long)
        index[torch.as_tensor(item.root_idxs)] = torch.as_tensor(item.idxs)
        if bool((index < 0).any()):
            return None
        for p in module.parameters(recurse=False):
            rows.append((params[id(p)], index))
            if isinstance(module, _LAYERS) and p is module.weight:
                scored.append(params[id(p)])
    return ChannelGroup(params[id(root.weight)], size, tuple(rows), tuple(dict.fromkeys(scored)))


def channel_masks(
    groups: Sequence[ChannelGroup], kept: Mapping[str, Tensor], model: nn.Module
) -> dict[str, Tensor]:
    """Per parameter, the mask that keeps the rows of the kept channels (``kept[group.name]``, bool per channel)."""
    params = dict(model.named_parameters())
    masks: dict[str, Tensor] = {}
    for g in groups:
        for name, index in g.rows:
            if name not in masks:
                masks[name] = torch.ones(params[name].shape, dtype=torch.bool, device=params[name].device)
            pruned = index[~kept[g.name].cpu()].to(params[name].device)
            masks[name][pruned] = False
    return {n: masks[n] for n in params if n in masks}  # in the model's order


def channel_scores(groups: Sequence[ChannelGroup], scores: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Per group, each channel's score: the sum of its weights' scores over the group's layers."""
    out = {}
    for g in groups:
        index = dict(g.rows)
        total = None
        for name in g.scored:
            s = scores[name].reshape(scores[name].shape[0], -1).double().sum(1)[index[name].to(scores[name].device)]
            total = s if total is None else total + s
        out[g.name] = total
    return out


def select_channels(
    scores: Mapping[str, Tensor], budget: Budget, candidates: Optional[Mapping[str, Tensor]] = None
) -> dict[str, Tensor]:
    """Per group, the channels kept: within each ranking of ``budget`` exactly its count, the best candidate of
    every group first (a layer left with no channel could not be shrunk; a per-group count of 0 is raised to 1),
    then the best candidates left. Ties to the earlier group and the lower channel."""
    names = list(scores)
    kept: dict[str, Tensor] = {}
    for ids, k in budget_groups(names, budget):
        group = [names[i] for i in ids]
        cands = [torch.ones_like(scores[n], dtype=torch.bool) if candidates is None else candidates[n] for n in group]
        if k < len(group):
            if len(group) > 1:
                raise ValueError(f"cannot keep {k} channels and one in each of the {len(group)} groups of coupled channels")
            k = 1
        best = []
        for n, c in zip(group, cands):
            first = torch.zeros_like(c)
            first[int(torch.argmax(scores[n].masked_fill(~c, float("-inf"))))] = True  # argmax: the lowest index of ties
            best.append(first)
        rest = top_k_masks([scores[n] for n in group], k - len(group), [c & ~b for c, b in zip(cands, best)])
        kept.update({n: b | r for n, b, r in zip(group, best, rest)})
    return {n: kept[n] for n in names}


def shrink(model: nn.Module, masks: Mapping[str, Tensor], example_input: Any) -> nn.Module:
    """A copy of ``model`` with every pruned channel removed: a smaller dense network computing what the
    masked one computes. ``masks`` are :func:`compute_masks`' with ``granularity="channel"``."""
    return shrink_(copy.deepcopy(model), masks, example_input)


def shrink_(model: nn.Module, masks: Mapping[str, Tensor], example_input: Any) -> nn.Module:
    """:func:`shrink` in place: ``model``'s layers lose their pruned channels (new, smaller parameters: an
    optimizer built before holds the old ones). Everything is checked before anything changes."""
    tp = _torch_pruning()
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name tensors that {type(model).__name__} does not have: {unknown}")
    names = [n for n in masks if masks[n].dim() >= 2]
    for name in names:
        rows = masks[name].reshape(masks[name].shape[0], -1)
        partial = torch.nonzero(rows.any(1) & ~rows.all(1)).flatten().tolist()
        if partial:
            raise ValueError(
                f"shrink removes whole channels, but the mask of {name!r} keeps part of channel(s) {partial[:10]}:"
                f" prune with granularity='channel'"
            )
    modes = [m.training for m in model.modules()]
    model.eval()  # tracing runs forward passes: running statistics stay as they are
    try:
        groups = channel_groups(model, example_input, names)
        graph = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training
    rows_of = {row for g in groups for row, _ in g.rows}
    blocked = [n for n in names if n not in rows_of and not bool(masks[n].all())]
    if blocked:
        raise ValueError(
            f"shrink cannot remove the pruned channels of {blocked}: their layers' outputs are the model's outputs or"
            f" pass through a layer that cannot lose a channel exactly (lightning_synflow.channels)"
        )
    pruned = {g.name: torch.nonzero(~masks[g.name].reshape(g.size, -1).any(1)).flatten().tolist() for g in groups if g.name in masks}
    emptied = [n for n, idxs in pruned.items() if len(idxs) == params[n].shape[0]]
    if emptied:
        raise ValueError(f"every channel of {emptied} is pruned: a network without them cannot be shrunk")
    layers = {id(m.weight): m for m in model.modules() if isinstance(m, _LAYERS)}
    for name, idxs in pruned.items():
        if idxs:
            root = layers[id(params[name])]
            handler = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
            graph.get_pruning_group(root, handler, idxs=idxs).prune()
    return model


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def _tensors(outputs: Any) -> list[Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(outputs) if isinstance(t, Tensor)]
