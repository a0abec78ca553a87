"""Channel granularity: whole output channels (neurons) kept or pruned, coupled channels together, and
:func:`shrink`, which removes the pruned ones so that the network that trains is smaller.

Which channels must go together is read from the model itself by tracing one forward pass, with
Torch-Pruning's dependency graph (``pip install torch-pruning``, the ``structured`` extra): a residual add
couples the channels it adds, a depthwise convolution its input and output channels, a concatenation maps
channels through, a BatchNorm follows its channel. Each :class:`ChannelGroup` is one set of coupled
channels, rooted at a convolution or Linear layer whose weights are prunable. The model is traced in
training and in eval mode, and a group is kept only where both traces agree (a branch that runs in one mode
only, such as GoogLeNet's auxiliary heads, leaves the channels it reads whole). A group is left whole where it
reaches a layer it cannot remove a channel of exactly: the layers whose outputs are the model's outputs (the
classes), a LayerNorm or GroupNorm (which normalise over all channels, so that a zeroed channel still counts),
a grouped convolution other than a depthwise one (its groups would keep unequal numbers of channels), a
parameter outside a layer, embeddings, and attention (heads of equal width, scaled by that width), whether
an ``nn.MultiheadAttention`` or Linear layers around ``scaled_dot_product_attention`` or a matmul and softmax.
What Torch-Pruning cannot trace (a channel shuffle) is refused with the cause.

A channel's score is the sum of its weights' scores over every layer of the group whose output channel it
is: for SynFlow the flow through a neuron is the sum of the scores of its incoming weights (the
conservation law), for magnitude it is the L1 norm of the filters (Li et al., ICLR 2017), for SNIP the
first-order change of the loss summed over the channel's weights, for random a random ranking. Masks cover
the channel's weights and also its biases and normalisation parameters, so that a pruned channel outputs
zero. Where an activation is not zero at zero (sigmoid, softplus) the next layer reads a constant instead:
:func:`shrink` adds it to that layer's bias (:class:`Fold`), or, where that cannot be exact (a padded
convolution reads it, or it differs between modes), the group is left whole. :func:`shrink` checks its result
against the masked model in float64, in both modes, on the example input, a random one and that at 100 times
its scale, before anything is returned or changed; constants are folded only where they are the same on all
three.
"""

from __future__ import annotations

import copy
import re
import traceback
import warnings
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_leaves, tree_map

from lightning_synflow.distributions import ERK, Budget, Distribution, GroupERK
from lightning_synflow.model_state import preserved_model_state
from lightning_synflow.selection.selector import Selector, select_within, starting_masks
from lightning_synflow.selection.topk import top_k_beyond

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_LAYERS = (*_CONVS, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
#: Autograd nodes of attention: channels through them form heads of equal width, scaled by that width.
_ATTENTION = re.compile(r"(?i)attention|bmm|softmax")


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
class Fold:
    """A constant that pruned channels hold where a layer reads them (an activation's value at zero), which
    moves into that layer's bias when they are removed.

    Attributes:
        weight: The reading layer's weight name; ``bias`` its bias.
        index: The input channels (features) of that layer holding a constant.
        channel: The group's channel each of them belongs to.
        value: The constant each holds (float64).
    """

    weight: str
    bias: str
    index: Tensor
    channel: Tensor
    value: Tensor


@dataclass(frozen=True)
class ChannelGroup:
    """Coupled output channels, kept or pruned together.

    Attributes:
        name: The root layer's weight name, naming the group.
        size: Its number of channels.
        rows: ``(parameter name, index)`` for every parameter holding these channels along its first dimension:
            channel ``j`` of the group is row ``index[j]`` of the parameter.
        scored: The names among ``rows`` of layer weights (whose scores add up to the channel's).
        reads: ``(layer name, input index, channel)`` for the layers that read these channels and keep their
            own: input channel (feature) ``input index[i]`` of the layer is the group's channel ``channel[i]``.
        folds: The constants pruned channels hold where those layers read them (nonzero ones only).
    """

    name: str
    size: int
    rows: tuple[tuple[str, Tensor], ...]
    scored: tuple[str, ...]
    reads: tuple[tuple[str, Tensor, Tensor], ...] = ()
    folds: tuple[Fold, ...] = ()


def output_layers(model: nn.Module, example_input: Any) -> set[nn.Module]:
    """The convolution and Linear layers whose outputs reach the model's outputs through no other such layer
    (found through the autograd graph of one forward pass in the model's current mode, frozen parameters made
    to require grad for it)."""
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
    """The groups of coupled output channels of the layers whose weights are among ``names``, in model order.

    The model is traced in training and in eval mode (branches that run in one mode only, such as GoogLeNet's
    auxiliary heads, are seen), and a group is kept only where both traces agree on it; the model is given
    back as it came (modes, running statistics, ``requires_grad``)."""
    params = {id(p): n for n, p in model.named_parameters()}
    modules = {m: n for n, m in model.named_modules()}
    found: dict[bool, dict[str, ChannelGroup]] = {}
    example_input = _batch_of_two(example_input)  # batch statistics of one sample are not defined
    with _restored(model):
        roots = _roots(model, example_input, names)
        if not roots:
            return []
        ignored = [m for m in model.modules() if isinstance(m, _LAYERS) and m not in roots]
        for training in (True, False):
            graph = _graph(model, example_input, training)
            found[training] = {}
            for group in _traced(model, training, lambda: list(graph.get_all_groups(ignored_layers=ignored, root_module_types=_LAYERS))):
                built = _group(group, params, modules, set(ignored))
                if built is not None:
                    found[training][built.name] = built
    agreed = [g for n, g in found[True].items() if n in found[False] and _same(g, found[False][n])]
    order = {n: i for i, n in enumerate(params.values())}
    return sorted(_with_folds(model, example_input, agreed), key=lambda g: order[g.name])


def _roots(model: nn.Module, example_input: Any, names: Sequence[str]) -> list[nn.Module]:
    """The convolution and Linear layers whose weights are among ``names`` and whose outputs are not the model's
    (in training or in eval mode), in model order."""
    outputs: set[nn.Module] = set()
    with _restored(model):
        for training in (True, False):
            model.train(training)
            try:
                outputs |= output_layers(model, example_input)
            except Exception as err:
                raise ValueError(
                    f"granularity='channel' and shrink() trace {type(model).__name__} in training and in eval mode (to see"
                    f" every branch), and its forward pass failed in {'training' if training else 'eval'} mode on the"
                    f" example input ({type(err).__name__}: {err})"
                ) from err
    params = {id(p): n for n, p in model.named_parameters()}
    wanted = set(names)
    return [m for m in model.modules() if isinstance(m, _LAYERS) and params.get(id(m.weight)) in wanted and m not in outputs]


def whole_channels(model: nn.Module, example_input: Any, names: Sequence[str], groups: Sequence[ChannelGroup]) -> dict[str, int]:
    """Per weight among ``names`` of a layer whose outputs are not the model's, the number of its output
    channels in none of ``groups`` (left whole: they reach a layer that cannot lose one exactly), where any."""
    params = {id(p): n for n, p in model.named_parameters()}
    covered: dict[str, set[int]] = {}
    for g in groups:
        for name, index in g.rows:
            covered.setdefault(name, set()).update(index.tolist())
    counts = {}
    for layer in _roots(model, _batch_of_two(example_input), names):
        name = params[id(layer.weight)]
        left = layer.weight.shape[0] - len(covered.get(name, ()))
        if left:
            counts[name] = left
    return counts


def _group(group: Any, params: Mapping[int, str], modules: Mapping[nn.Module, str], ignored: set[nn.Module]) -> ChannelGroup | None:
    """A :class:`ChannelGroup` from a Torch-Pruning group; None if it must stay whole: it reaches a layer that
    cannot lose a channel exactly (the classes, a normalisation over all channels, an embedding, a grouped
    convolution, a parameter outside a layer) or passes through attention (heads of equal width, scaled by
    it)."""
    tp = _torch_pruning()
    items = group._group
    root = items[0].dep.target.module
    size = root.weight.shape[0]
    outs = {item.dep.target.module for item in items if item.dep.handler.__name__.endswith("out_channels")}
    rows, scored, reads = [], [], []
    for item in items:
        node, module = item.dep.target, item.dep.target.module
        if node.type == tp.ops.OPTYPE.PARAMETER or _grouped(module):
            return None
        if isinstance(module, tp.ops._ElementWiseOp) and _ATTENTION.search(str(module._grad_fn)):
            return None
        if not list(module.parameters(recurse=False)):
            continue  # parameter-free ops have nothing to mask
        if not isinstance(module, _LAYERS + _NORMS):
            return None
        if item.dep.handler.__name__.endswith("out_channels"):
            if module in ignored:
                return None
            index = torch.full((size,), -1, dtype=torch.long)
            index[torch.as_tensor(item.root_idxs)] = torch.as_tensor(item.idxs)
            if bool((index < 0).any()):
                return None
            for p in module.parameters(recurse=False):
                rows.append((params[id(p)], index))
                if isinstance(module, _LAYERS) and p is module.weight:
                    scored.append(params[id(p)])
        elif module not in outs:  # a layer that reads the group's channels and keeps its own outputs
            reads.append((modules[module], torch.as_tensor(item.idxs), torch.as_tensor(item.root_idxs)))
    return ChannelGroup(params[id(root.weight)], size, tuple(rows), tuple(dict.fromkeys(scored)), tuple(reads))


def _grouped(module: nn.Module) -> bool:
    """A grouped convolution other than a depthwise one (which maps channel ``j`` to channel ``j``)."""
    return isinstance(module, _CONVS) and module.groups > 1 and not module.groups == module.in_channels == module.out_channels


def _same(a: ChannelGroup, b: ChannelGroup) -> bool:
    """The same channels in the same parameters and read by the same layers."""

    def key(g: ChannelGroup) -> Any:
        rows = sorted((n, tuple(i.tolist())) for n, i in g.rows)
        reads = sorted((n, tuple(i.tolist()), tuple(r.tolist())) for n, i, r in g.reads)
        return g.size, rows, reads

    return key(a) == key(b)


def _graph(model: nn.Module, example_input: Any, training: bool) -> Any:
    """Torch-Pruning's dependency graph of one forward pass in training or eval mode (every parameter made to
    require grad: the graph is read from autograd), every tensor of the outputs traced (caches included)."""

    def forward(m: nn.Module, x: Any) -> Any:
        m.train(training)  # Torch-Pruning puts the model in eval mode before calling this
        return _call(m, x)

    def outputs(out: Any) -> list[Tensor]:
        return [t for t in _tensors(out) if t.grad_fn is not None]

    tp = _torch_pruning()
    return _traced(model, training, lambda: tp.DependencyGraph().build_dependency(
        model, example_inputs=example_input, forward_fn=forward, output_transform=outputs, verbose=False
    ))


def _traced(model: nn.Module, training: bool, trace: Any) -> Any:
    """``trace()``, a Torch-Pruning error turned into this package's, naming what it could not follow."""
    try:
        with torch.enable_grad():
            return trace()
    except Exception as err:  # noqa: BLE001 - any failure inside Torch-Pruning is reported as ours
        frames = [f.name for f in traceback.extract_tb(err.__traceback__)]
        cause = (
            "a reshape that regroups channels (such as ShuffleNet's channel shuffle), which it cannot map"
            if "update_reshape_index_mapping" in frames
            else "the model"
        )
        raise ValueError(
            f"granularity='channel' and shrink() cannot follow the channels of {type(model).__name__}: Torch-Pruning"
            f" failed to trace {cause} in {'training' if training else 'eval'} mode ({type(err).__name__}: {err});"
            f" prune it with granularity='weight' or 'N:M', or exclude the layers around it"
        ) from err


@contextmanager
def _restored(model: nn.Module) -> Iterator[None]:
    """Every parameter requires grad inside (tracing reads autograd); on exit the modes, ``requires_grad`` and
    buffers (running statistics a traced training step updates) are as they were."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    with preserved_model_state(model):
        try:
            for p in model.parameters():
                p.requires_grad_(True)
            yield
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)


def _with_folds(model: nn.Module, example_input: Any, groups: list[ChannelGroup]) -> list[ChannelGroup]:
    """The groups whose pruned channels are zero where layers read them, or a constant that moves into the
    reading layer's bias (:class:`Fold`); the others dropped (left whole).

    A pruned channel outputs zero, but an activation that is not zero at zero (sigmoid: 0.5, softplus: ln 2)
    makes the next layer read a constant instead. That constant is found by running a copy of the model in
    float64 with every group's channels pruned, in training and in eval mode, on every input of :func:`_probes`
    (the example input itself among them): it is exact where every position and sample of the channel reads
    the same value in both modes and the reading layer adds it to
    its bias unchanged (a Linear layer, or a convolution without padding, which would make it vary at the
    border)."""
    if not any(g.reads for g in groups):
        return groups
    probe = copy.deepcopy(model).to(torch.float64)
    params = dict(probe.named_parameters())
    with torch.no_grad():
        for g in groups:
            for name, index in g.rows:
                params[name][index] = 0
    layers = dict(probe.named_modules())
    seen: dict[str, list[Tensor]] = {}

    def record(name: str) -> Any:
        def hook(module: nn.Module, args: Any) -> None:
            axis = -1 if isinstance(module, nn.Linear) else 1  # a Linear's features are last, a convolution's second
            seen.setdefault(name, []).append(args[0].movedim(axis, 0).reshape(args[0].shape[axis], -1))

        return hook

    readers = {name for g in groups for name, _, _ in g.reads}
    hooks = [layers[n].register_forward_pre_hook(record(n)) for n in readers]
    try:
        with torch.no_grad():
            for x in _probes(example_input):
                for training in (True, False):
                    probe.train(training)
                    _call64(model, probe, x, training)
    finally:
        for h in hooks:
            h.remove()
    kept = []
    for g in groups:
        folds = []
        for name, index, channel in g.reads:
            if name not in seen or any(int(index.max()) >= v.shape[0] for v in seen[name]):
                break  # not read in both modes, or through an op that changes the channel count (F.glu, PixelShuffle)
            values = torch.cat([v[index] for v in seen[name]], 1)
            if not bool((values == values[:, :1]).all()):
                break  # not a constant: the group stays whole
            value = values[:, 0]
            nonzero = value != 0
            if not bool(nonzero.any()):
                continue
            layer = layers[name]
            padded = isinstance(layer, _CONVS) and (layer.padding == "same" or any(p != 0 for p in tuple(layer.padding)))
            if layer.bias is None or padded:
                break
            folds.append(Fold(f"{name}.weight" if name else "weight", f"{name}.bias" if name else "bias",
                              index[nonzero], channel[nonzero], value[nonzero]))
        else:
            kept.append(replace(g, folds=tuple(folds)))
    return kept


def _batch_of_two(example_input: Any) -> Any:
    """The example input with a batch of one made two, as it is otherwise: batch statistics (BatchNorm in
    training mode) of one sample are not defined."""
    return tree_map(lambda t: torch.cat([t, t]) if isinstance(t, Tensor) and t.dim() >= 1 and t.shape[0] == 1 else t, example_input)


def _probe_input(example_input: Any, batch: int = 8) -> Any:
    """The example input for checking exactness, repeated to a batch of at least ``batch`` (batch statistics of
    a few samples are ill-conditioned: a rounding error of the shrunk network's shorter sums would grow to a
    visible difference), floating tensors random (a fixed generator) in float64, token ids as they are."""
    gen = torch.Generator().manual_seed(0)

    def one(t: Any) -> Any:
        if not isinstance(t, Tensor):
            return t
        if t.dim() >= 1 and t.shape[0] < batch:
            t = t.repeat(-(-batch // t.shape[0]), *([1] * (t.dim() - 1)))
        if t.is_floating_point():
            return torch.randn(t.shape, generator=gen, dtype=torch.float64).to(t.device)
        return t.clone()

    return tree_map(one, example_input)


def _probes(example_input: Any) -> list[Any]:
    """The inputs that folds are found on and exactness is checked on, in float64: the example input itself (the
    path the user's data take through the model), a random one of its shape (every channel and position varied)
    and that random one at 100 times its scale (where a normalisation's error grows with the input's scale)."""
    own = tree_map(lambda t: t.double() if isinstance(t, Tensor) and t.is_floating_point() else t, _batch_of_two(example_input))
    if not any(t.is_floating_point() for t in _tensors(example_input)):
        return [own]
    probe = _probe_input(example_input)
    return [own, probe, tree_map(lambda t: t * 100 if isinstance(t, Tensor) and t.is_floating_point() else t, probe)]


def _batch(x: Any) -> int:
    """The smallest leading dimension of the input's tensors (its batch)."""
    return min([t.shape[0] for t in _tensors(x) if t.dim() >= 1] or [0])


def _call64(model: nn.Module, copy64: nn.Module, x: Any, training: bool) -> Any:
    """``copy64(x)``, a float64 copy of ``model``; a failure refused naming its cause (exactness is checked in
    float64, which a model that casts its input or makes float32 tensors itself does not run in)."""
    try:
        return _call(copy64, x)
    except Exception as err:
        raise ValueError(
            f"granularity='channel' and shrink() check on a float64 copy of {type(model).__name__} that removing"
            f" channels is exact, and a forward pass of that float64 copy failed in {'training' if training else 'eval'}"
            f" mode ({type(err).__name__}: {err}); a model that casts its input (x.float()) or makes tensors of a fixed"
            f" dtype cannot be checked: let it follow its input's dtype, or prune with granularity='weight' or 'N:M'"
        ) from err


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


def channel_mask_differences(
    model: nn.Module, masks: Mapping[str, Tensor], example_input: Any, names: Sequence[str]
) -> dict[str, list[str]]:
    """How whole-channel ``masks`` (whole rows, bool) differ from any that channel pruning of the weights ``names``
    makes: ``missing``, tensors it masks that they leave out (they would train dense); ``extra``, tensors they mask
    that it never does (an output layer, a parameter of no removable channel); ``inconsistent``, tensors keeping
    other channels than their group's root weight does (a bias kept where the channel's weights are pruned).
    All empty: the masks are ones channel pruning could have made."""
    groups = channel_groups(model, example_input, names)
    kept = {}
    for g in groups:
        rows = dict(g.rows)
        source = g.name if g.name in masks else next((n for n, _ in g.rows if n in masks), None)
        if source is None:
            kept[g.name] = torch.ones(g.size, dtype=torch.bool)
        else:
            m = masks[source].cpu()
            kept[g.name] = m.reshape(m.shape[0], -1).any(1)[rows[source]]
    expected = channel_masks(groups, kept, model)
    return {
        "missing": [n for n in expected if n not in masks],
        "extra": [n for n in masks if n not in expected],
        "inconsistent": [n for n in expected if n in masks and not torch.equal(masks[n].cpu(), expected[n].cpu())],
    }


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


class ChannelRanking(Selector):
    """Channels as units, per group of coupled ones (``kept[group]``: bool per channel): within each ranking,
    the best candidate of every group first (a layer left with no channel could not be shrunk; a per-group
    count of 0 is raised to 1), then the best candidates left. Ties to the earlier group and the lower
    channel. Its masks are the channels kept."""

    def __init__(self, kept: Mapping[str, Tensor], *, monotone: bool) -> None:
        self.names = list(kept)
        self.shapes = {n: tuple(k.shape) for n, k in kept.items()}
        self.kept = dict(kept)
        self.monotone = monotone

    @property
    def masks(self) -> dict[str, Tensor]:
        return self.kept

    def alive_counts(self) -> dict[str, int]:
        return {n: int(k.sum()) for n, k in self.kept.items()}

    def keep(self, names: list[str], scores: MutableMapping[str, Tensor], k: int) -> None:
        cands = [self.kept[n] if self.monotone else torch.ones_like(scores[n], dtype=torch.bool) for n in names]
        if k < len(names):
            if len(names) > 1:
                raise ValueError(f"cannot keep {k} channels and one in each of the {len(names)} groups of coupled channels")
            k = 1
        best = []
        for n, c in zip(names, cands):
            first = torch.zeros_like(c)
            first[int(torch.argmax(scores[n].masked_fill(~c, float("-inf"))))] = True  # argmax: the lowest index of ties
            best.append(first)
        self.kept.update(zip(names, top_k_beyond(best, [scores[n] for n in names], cands, k)))


class ChannelSelector(ChannelRanking):
    """Whole channels of ``model``: each round the weights' scores are summed per channel
    (:func:`channel_scores`), channels are kept as :class:`ChannelRanking` keeps them, and the masks cover the
    kept channels' weights, biases and normalisation parameters (:func:`channel_masks`)."""

    label = "channels"

    def __init__(self, model: nn.Module, groups: Sequence[ChannelGroup], example_input: Any, names: Sequence[str], *, monotone: bool) -> None:
        super().__init__({g.name: torch.ones(g.size, dtype=torch.bool) for g in groups}, monotone=monotone)
        self.model, self.groups, self.example_input, self.weights = model, list(groups), example_input, list(names)
        self._masks = channel_masks(self.groups, self.kept, model)

    @property
    def masks(self) -> dict[str, Tensor]:
        return self._masks

    def distribution(self, layers: Distribution) -> Distribution:
        """ERK shares channels by the shapes of the weights each group spans (:class:`GroupERK`)."""
        if not isinstance(layers, ERK):
            return layers
        params = dict(self.model.named_parameters())
        return GroupERK({g.name: [tuple(params[n].shape) for n in g.scored] for g in self.groups}, layers.power_scale)

    def unit_scores(self, scores: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: s.cpu() for n, s in channel_scores(self.groups, scores).items()}

    def end_round(self) -> None:
        self._masks = channel_masks(self.groups, self.kept, self.model)

    def finish(self, model: nn.Module, layers: Distribution, density: float) -> dict[str, Tensor]:
        """Warn where channels left whole, or the one channel every group keeps, hold the channel sparsity reached
        below the requested one by more than the budget's rounding (a channel per ranking)."""
        whole = whole_channels(model, self.example_input, self.weights, self.groups)
        total = sum(g.size for g in self.groups) + sum(whole.values())
        removed = sum(g.size - int(self.kept[g.name].sum()) for g in self.groups)
        requested = 1 - density
        budget = layers.budget(self.shapes, density, None)
        rankings = 1 if isinstance(budget, int) else len(budget)
        if removed >= requested * total - rankings:
            return self.masks
        floor = sum(int(k.sum()) for k in self.kept.values()) - (budget if isinstance(budget, int) else sum(budget.values()))
        causes = [(f"{sum(whole.values())} channels of {list(whole)[:5]}{' ...' if len(whole) > 5 else ''} are left whole"
                   f" (they reach a layer that cannot lose one exactly: lightning_synflow.selection.channels)")] if whole else []
        causes += [f"{floor} channels are kept because every group of coupled channels keeps one"] if floor > 0 else []
        warnings.warn(
            f"granularity='channel' removes {removed} of {total} channels (channel sparsity {removed / total:.3g}), below"
            f" the requested sparsity {requested:.3g}: {'; '.join(causes) or 'the budget rounds per group'}",
            stacklevel=5,
        )
        return self.masks


def select_channels(
    scores: Mapping[str, Tensor], budget: Budget, candidates: Optional[Mapping[str, Tensor]] = None
) -> dict[str, Tensor]:
    """Per group, the channels kept, as :class:`ChannelRanking` keeps them, within each ranking of ``budget``
    exactly its count among ``candidates`` (every channel if None)."""
    selector = ChannelRanking(starting_masks(scores, candidates), monotone=candidates is not None)
    select_within(selector, dict(scores), budget)
    return selector.kept


def shrink(model: nn.Module, masks: Mapping[str, Tensor], example_input: Any) -> nn.Module:
    """A copy of ``model`` with every pruned channel removed: a smaller dense network computing what the
    masked one computes. ``masks`` are :func:`compute_masks`' with ``granularity="channel"``.

    A constant that pruned channels hold where a layer reads them (an activation not zero at zero) moves into
    that layer's bias. The copy is checked against the masked model in float64 (to 1e-10 relative), in training
    and in eval mode, on ``example_input`` itself, on a random input of its shape and on that at 100 times its
    scale; anything that is not exact is refused with a ValueError,
    ``model`` untouched."""
    return _shrunk(model, masks, example_input)[0]


def shrink_(model: nn.Module, masks: Mapping[str, Tensor], example_input: Any) -> nn.Module:
    """:func:`shrink` in place: ``model``'s layers lose their pruned channels (new, smaller parameters: an
    optimizer built before holds the old ones). Everything is checked, on a copy, before anything changes."""
    _, groups, pruned = _shrunk(model, masks, example_input)
    _remove(model, groups, pruned, example_input)
    return model


def _shrunk(model: nn.Module, masks: Mapping[str, Tensor], example_input: Any) -> tuple[nn.Module, list[ChannelGroup], dict[str, list[int]]]:
    """The shrunk copy, checked to compute what the masked model computes, with the groups and the channels
    removed from each."""
    _torch_pruning()
    params = dict(model.named_parameters())
    unknown = [n for n in masks if n not in params]
    if unknown:
        raise ValueError(f"masks name tensors that {type(model).__name__} does not have: {unknown}")
    wrong = {n: (tuple(masks[n].shape), tuple(params[n].shape)) for n in masks if tuple(masks[n].shape) != tuple(params[n].shape)}
    if wrong:
        raise ValueError(
            f"shrink needs a mask of each tensor's shape; (mask shape, tensor shape) differ for {wrong}: masks of"
            f" another model, or of this one already shrunk?"
        )
    meta = [n for n, p in params.items() if p.is_meta]
    if meta:
        raise ValueError(f"shrink runs {type(model).__name__}, whose parameters {meta[:5]} are on the meta device (no values): materialise them first")
    names = [n for n in masks if masks[n].dim() >= 2]
    for name in names:
        rows = masks[name].reshape(masks[name].shape[0], -1)
        partial = torch.nonzero(rows.any(1) & ~rows.all(1)).flatten().tolist()
        if partial:
            raise ValueError(
                f"shrink removes whole channels, but the mask of {name!r} keeps part of channel(s) {partial[:10]}:"
                f" prune with granularity='channel'"
            )
    groups = channel_groups(model, example_input, names)
    rows_of = {row for g in groups for row, _ in g.rows}
    blocked = [n for n in names if n not in rows_of and not bool(masks[n].all())]
    if blocked:
        raise ValueError(
            f"shrink cannot remove the pruned channels of {blocked}: their layers' outputs are the model's outputs,"
            f" or they pass through a layer that cannot lose a channel exactly (lightning_synflow.selection.channels)"
        )
    pruned = {g.name: torch.nonzero(~masks[g.name].reshape(g.size, -1).any(1)).flatten().tolist() for g in groups if g.name in masks}
    emptied = [n for n, idxs in pruned.items() if len(idxs) == params[n].shape[0]]
    if emptied:
        raise ValueError(f"every channel of {emptied} is pruned: a network without them cannot be shrunk")
    small = copy.deepcopy(model)
    _remove(small, groups, pruned, example_input)
    _check_exact(model, masks, small, example_input, groups, pruned)
    return small, groups, pruned


def _remove(model: nn.Module, groups: Sequence[ChannelGroup], pruned: Mapping[str, list[int]], example_input: Any) -> None:
    """Fold the constants of the pruned channels into the biases that read them, then remove the channels."""
    tp = _torch_pruning()
    params = dict(model.named_parameters())
    added: dict[str, Tensor] = {}  # summed in float64 and rounded once: a float64 copy then holds it unrounded
    with torch.no_grad():
        for g in groups:
            gone = torch.zeros(g.size, dtype=torch.bool)
            gone[pruned.get(g.name, [])] = True
            for fold in g.folds:
                at = gone[fold.channel]
                if bool(at.any()):
                    weight = params[fold.weight]
                    columns = weight[:, fold.index[at].to(weight.device)].double()
                    columns = columns.sum(tuple(range(2, columns.dim()))) if columns.dim() > 2 else columns
                    total = columns @ fold.value[at].to(columns.device)
                    added[fold.bias] = added[fold.bias] + total if fold.bias in added else total
        for name, total in added.items():
            params[name].copy_((params[name].double() + total).to(params[name].dtype))
    with _restored(model):
        graph = _graph(model, _batch_of_two(example_input), training=True)
    layers = {id(m.weight): m for m in model.modules() if isinstance(m, _LAYERS)}
    for name, idxs in pruned.items():
        if idxs:
            root = layers[id(params[name])]
            handler = tp.prune_linear_out_channels if isinstance(root, nn.Linear) else tp.prune_conv_out_channels
            _traced(model, True, lambda: graph.get_pruning_group(root, handler, idxs=idxs).prune())


#: The largest difference, relative to each output's scale, of the shrunk network from the masked one in
#: float64: float64 rounding, far below what a misread channel makes (folded biases are compared unrounded).
_TOLERANCE = 1e-10
_INPUTS = ("the example input", "a random input", "a random input at 100 times its scale")


def _check_exact(
    model: nn.Module, masks: Mapping[str, Tensor], small: nn.Module, example_input: Any,
    groups: Sequence[ChannelGroup], pruned: Mapping[str, list[int]],
) -> None:
    """Raise unless ``small`` computes what ``model`` masked computes. A float64 copy of ``model`` is shrunk the
    same way (its folded biases unrounded), and must hold ``small``'s values before rounding to ``small``'s
    dtypes; it is compared with the masked model in float64 to :data:`_TOLERANCE` on every input of
    :func:`_probes`, in eval and training mode (dropout off; a model whose training-mode outputs are random is
    compared in eval mode; the example input in training mode only with 8 samples or more, the batch statistics
    of fewer being too ill-conditioned for this tolerance). Where the masked model does not run on the example input in either mode, nothing
    could be compared: refused."""
    reference = copy.deepcopy(model).to(torch.float64)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if name in masks:
                param.mul_(masks[name].to(param.device))
    probes = _probes(example_input)
    runs = []
    with _restored(reference):  # its running statistics as they were after
        for training in (False, True):
            reference.train(training)
            try:
                _seeded(reference, probes[0], 0)
                runs.append(training)
            except Exception as err:  # noqa: BLE001 - the masked model may not run in one mode; in neither is refused
                failure = err
    if not runs:
        raise ValueError(
            f"shrink checks on a float64 copy of {type(model).__name__} that removing channels is exact, and a forward"
            f" pass of that float64 copy failed on the example input in both training and eval mode"
            f" ({type(failure).__name__}: {failure}); a model that casts its input (x.float()) or makes tensors of a"
            f" fixed dtype cannot be checked: let it follow its input's dtype"
        ) from failure
    shrunk = copy.deepcopy(model).to(torch.float64)
    _remove(shrunk, groups, pruned, probes[0])
    exact, mine = shrunk.state_dict(), small.state_dict()
    differ = [n for n, t in mine.items() if n not in exact or t.shape != exact[n].shape or not torch.equal(t, exact[n].to(t.dtype))]
    if differ or set(exact) != set(mine):
        raise ValueError(f"shrink's float64 check and the network it would return differ in {differ or sorted(set(exact) ^ set(mine))}")
    for x, about in zip(probes, _INPUTS):
        for training in (False, True):
            for net in (reference, shrunk):
                net.train(training)
                for m in net.modules():
                    if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "StochasticDepth":
                        m.eval()
            mode = "training" if training else "eval"
            if x is probes[0] and training and _batch(x) < 8:
                continue  # batch statistics of a few samples are ill-conditioned; the random inputs have 8
            try:
                expected = _seeded(reference, x, 0)
            except Exception:  # noqa: S112 - not on this input, or not in this mode: compared where it runs
                if x is probes[0] and training in runs:
                    raise
                continue
            try:
                got = _seeded(shrunk, x, 0)
            except Exception as err:
                raise ValueError(
                    f"shrink cannot remove the pruned channels of {type(model).__name__} exactly: the shrunk network fails"
                    f" in {mode} mode on {about} ({type(err).__name__}: {err}); a layer reads the channels in a way the"
                    f" trace did not show. Keep the layers around it out of pruning, or train the masked model"
                ) from err
            gap = _gap(expected, got, _TOLERANCE)
            if gap > 0 and training and _gap(expected, _seeded(reference, x, 1), _TOLERANCE) > 0:
                continue  # random in training mode (functional dropout): eval mode was compared
            if gap > 0:
                raise ValueError(
                    f"shrink cannot remove the pruned channels of {type(model).__name__} exactly: the shrunk network's"
                    f" outputs differ from the masked one's by {gap:.3g} (relative, float64) in {mode} mode on {about};"
                    f" a layer reads the channels in a way the trace did not show. Keep the layers around it out of"
                    f" pruning, or train the masked model"
                )


def _seeded(model: nn.Module, x: Any, seed: int) -> Any:
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _call(model, x)


def _gap(expected: Any, got: Any, tolerance: float) -> float:
    """0 where ``got`` equals ``expected`` within ``tolerance`` relative to each output's scale, else the largest
    relative difference (inf where the outputs do not match in structure or shape)."""
    a, b = _tensors(expected), _tensors(got)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    worst = 0.0
    for x, y in zip(a, b):
        if not x.is_floating_point():
            worst = max(worst, 0.0 if torch.equal(x, y) else float("inf"))
            continue
        scale = max(float(x.abs().max()), 1e-30) if x.numel() else 1.0
        diff = float((x - y).abs().max()) / scale if x.numel() else 0.0
        worst = max(worst, diff if diff > tolerance or diff != diff else 0.0)
    return worst


def _call(model: nn.Module, example_input: Any) -> Any:
    if isinstance(example_input, Mapping):
        return model(**example_input)
    if isinstance(example_input, tuple):
        return model(*example_input)
    return model(example_input)


def _tensors(outputs: Any) -> list[Tensor]:
    return [t for t in tree_leaves(outputs) if isinstance(t, Tensor)]
