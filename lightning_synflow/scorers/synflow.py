"""SynFlow (Tanaka et al., NeurIPS 2020): data-free scores from the synaptic flow of the network.

Every parameter, and every floating buffer of a normalisation layer, is replaced by its absolute value, the
network runs in eval mode on an all-ones input of batch size 1, ``R`` is the sum of all floating outputs, and
the score is ``|θ ⊙ ∂R/∂θ|``. Other buffers (attention masks, position tables) enter as they are: a causal
mask of ``-inf`` made positive would be no mask at all.

Token inputs: an embedding is a linear map from one-hot tokens, so the all-ones input activates every token
and an ``nn.Embedding`` that reads the model's token input gives ``Σ_v |W_v|`` at every position (gradients
flow into ``|W|``, so a tied embedding is scored through both its uses). Embeddings looked up with other
indices (position ids from ``arange``, token-type ids from a buffer) give their absolute rows, as biases do.

Numerics: ``∂R/∂θ`` is taken with the output scaled by an exact power of two that brings ``|R|`` to
[0.5, 1): every score is scaled by the same constant without rounding, so the ranking is that of the
unscaled scores while the scores and gradients stay far from overflow. ``R`` itself is a product of
layer gains: it overflows float32 (3.4e38) from CIFAR ResNet-32 on (1e139 on ResNet-110, 1e220 on
ImageNet ResNet-152). Scoring runs in float32 (the model's precision and the published code's) and
switches to float64 for the rest of the run the first time ``R`` or a score is not finite.

Speed and memory: SynFlow is an :class:`~lightning_synflow.scorers.base.IncrementalScorer`: the linearised
weights (:class:`Linearised`) are built once per pruning run. Each tensor is scored the moment backward has
its gradient, in place of its linearised weights, and the gradient is freed: a round holds one copy of the
weights plus one tensor's gradient. The next round restores the living weights from the model with one
``copysign`` (pruned ones are kept as ``-0.0``) and marks just the newly pruned; once few weights are
alive, only those are scored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Literal, Optional

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils._pytree import tree_leaves

from lightning_synflow.distributed.scoring import is_sharded_model
from lightning_synflow.distributed.sharding import is_sharded, like, local
from lightning_synflow.model_state import overwritten
from lightning_synflow.scorers.base import (
    ExampleInput,
    IncrementalScorer,
    LivingWeights,
    ScoringContext,
    register_scorer,
)
from lightning_synflow.validation import check_choice

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def is_tokens(x: object) -> bool:
    """An int32/int64 tensor: token ids (the index dtypes of ``nn.Embedding``; uint8 images are not)."""
    return isinstance(x, Tensor) and x.dtype in (torch.int32, torch.int64)


def all_ones_input(example_input: ExampleInput, dtype: torch.dtype) -> ExampleInput:
    """The SynFlow input: ones of the example's shape with batch size 1, per tensor for tuples and for dicts
    (keyword inputs, as in Lightning's ``example_input_array``). Integer tensors stay integer: ones are valid
    token ids, whose embeddings :func:`_one_hot_tokens` replaces, and an all-ones attention mask attends
    everywhere."""
    if isinstance(example_input, Tensor):
        shape = (1, *example_input.shape[1:])
        return torch.ones(shape, dtype=example_input.dtype if is_tokens(example_input) else dtype, device=example_input.device)
    if isinstance(example_input, (tuple, list)) and all(isinstance(x, Tensor) for x in example_input):
        return tuple(all_ones_input(x, dtype) for x in example_input)
    if isinstance(example_input, Mapping) and all(isinstance(x, Tensor) for x in example_input.values()):
        return {k: all_ones_input(x, dtype) for k, x in example_input.items()}
    raise TypeError(
        f"SynFlow needs a tensor, a tuple of tensors or a dict of tensors (keyword inputs) as example input,"
        f" got {type(example_input).__name__}"
    )


@contextmanager
def _one_hot_tokens(model: nn.Module, inputs: tuple[Tensor, ...]) -> Iterator[None]:
    """Every ``nn.Embedding`` that looks up the token input itself (same storage, views included) gives
    ``|W|.sum(0)`` at each position: its rows summed over the all-ones one-hot input. Raises if token input
    is given and no embedding reads it."""
    tokens = {x.untyped_storage().data_ptr() for x in inputs if is_tokens(x)}
    if not tokens:
        yield
        return
    readers: list[nn.Embedding] = []

    def every_token(module: nn.Embedding, args: tuple[Tensor, ...], output: Tensor) -> Optional[Tensor]:
        indices = args[0]
        if indices.untyped_storage().data_ptr() not in tokens:
            return None
        readers.append(module)
        return module.weight.sum(0).expand(*indices.shape, -1).contiguous()  # module.weight: the linearised |W|

    handles = [m.register_forward_hook(every_token) for m in model.modules() if isinstance(m, nn.Embedding)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
    if not readers:
        raise ValueError(
            f"SynFlow was given integer (token) input, but no nn.Embedding of {type(model).__name__} looks it up:"
            f" token ids are scored through the embeddings that read them as given (a copy such as .clone() or"
            f" .long() of an int32 input is not recognised); give int64 token ids, or a floating example input"
        )


def _normalisation_buffers(model: nn.Module) -> set[str]:
    """The floating buffers of normalisation layers (modules with a ``running_var``: BatchNorm, InstanceNorm,
    torchvision's FrozenBatchNorm2d), their per-channel scale and shift, linearised like parameters."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(getattr(module, "running_var", None), Tensor):
            names.update(f"{prefix}.{n}" if prefix else n for n, b in module.named_buffers(recurse=False) if b.is_floating_point())
    return names


@dataclass
class Linearised:
    """SynFlow's state over one pruning run: the linearised network, built in the first round.

    Attributes:
        dtype: Precision of scoring; float64 for the rest of the run once float32 overflowed.
        tensors: |parameters|, |normalisation buffers| and the other buffers as they are, in ``dtype``; the
            prunable tensors are leaves that require grad, their pruned weights ``-0.0``: zero to the network,
            and the sign bit marks them pruned where a round overwrote the tensor with scores (``w * |g|``
            keeps it), so that one ``copysign`` restores every living weight.
        scored_in_place: The last round wrote its scores over ``tensors`` (restore them before the next).
    """

    dtype: torch.dtype
    tensors: Optional[dict[str, Tensor]] = None
    scored_in_place: bool = False


@register_scorer("synflow")
class SynFlow(IncrementalScorer[Linearised]):
    """Iterative Synaptic Flow Pruning: ``|θ ⊙ ∂R/∂θ|`` on the linearised network (data-free).

    Args:
        dtype: Precision of the scoring pass, whatever the model's own dtype. ``"float32"`` (default) is
            2-3x faster on CPU and moves to float64 by itself when ``R`` overflows; ``"float64"`` also ranks
            scores that float32 cannot tell apart (relative gaps below ~1e-6). One-shot masks agree; over
            many rounds a single near-tie decided differently cascades (VGG-16-bn, 100 rounds: 5.6% of the
            kept weights differ), as any change of arithmetic (another BLAS, a GPU) does.
    """

    default_iterations = 100
    needs_input = True
    checks_finite = True
    supports_sharding = True

    def __init__(self, dtype: Literal["float32", "float64"] = "float32") -> None:
        self.dtype = check_choice("dtype", dtype, list(_DTYPES), owner="SynFlow")

    def start(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> Linearised:
        if context.example_input is None:
            raise ValueError("SynFlow needs `example_input` (any tensor of the model's input shape)")
        return Linearised(_DTYPES[self.dtype])

    def score_round(
        self, model: nn.Module, living: LivingWeights, state: Linearised, context: ScoringContext
    ) -> dict[str, Tensor]:
        model.eval()
        if is_sharded_model(living.masks):
            return _sharded_scores(model, living.masks, context.example_input, state.dtype)
        while True:
            _refresh(model, living, state)
            scores = _scores(model, state.tensors, living.masks, context.example_input, living.positions)
            if scores is not None:
                state.scored_in_place = living.positions is None
                return scores
            if state.dtype == torch.float64:
                bad = [n for n, t in state.tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
                if bad:
                    raise FloatingPointError(
                        f"SynFlow cannot score {type(model).__name__}: {bad[:5]} hold NaN or inf values; initialise"
                        f" (or load) finite weights first"
                    )
                raise FloatingPointError(
                    f"SynFlow overflowed in float64: the synaptic flow R of {type(model).__name__} exceeds the"
                    f" float64 range on an all-ones input"
                )
            state.dtype, state.tensors = torch.float64, None  # for the rest of the run


@torch.no_grad()
def _refresh(model: nn.Module, living: LivingWeights, state: Linearised) -> None:
    """Make ``state.tensors`` the linearised network under ``living.masks``: built on first use (or after a
    switch of dtype), later restored where the last round scored in place and marked where weights were
    pruned since (just the listed positions when ``living.pruned`` lists them)."""
    if state.tensors is None:
        tensors = {  # contiguous, so that gradients (laid out like their tensor) are scored in place
            name: p.detach().to(state.dtype, memory_format=torch.contiguous_format, copy=True).abs_()
            for name, p in model.named_parameters()
        }
        norms = _normalisation_buffers(model)
        for name, b in model.named_buffers():
            if b.is_floating_point():
                b = b.detach().to(state.dtype, copy=True)
                tensors[name] = b.abs_() if name in norms else b
            else:
                tensors[name] = b
        for name, m in living.masks.items():
            tensors[name].masked_fill_(~m, -0.0).requires_grad_(True)
        state.tensors, state.scored_in_place = tensors, False
        return
    params = dict(model.named_parameters())
    for name, m in living.masks.items():
        w = state.tensors[name]
        if state.scored_in_place:  # |θ| where the score was >= +0, -0.0 where it was -0.0
            torch.copysign(params[name].detach(), w, out=w).clamp_min_(-0.0)
        if living.pruned is None:
            w.masked_fill_(~m, -0.0)
        else:
            w.view(-1).index_fill_(0, living.pruned[name].long(), -0.0)
    state.scored_in_place = False


def _scores(
    model: nn.Module,
    state: Mapping[str, Tensor],
    masks: Mapping[str, Tensor],
    example_input: ExampleInput,
    alive: Optional[Mapping[str, Tensor]],
) -> Optional[dict[str, Tensor]]:
    """``|θ ⊙ ∂R/∂θ|`` scaled by the power of two that brings ``|R|`` to [0.5, 1), or ``None`` if anything
    overflowed. With ``alive`` (flat positions of the living weights) only those are scored, as 1-D tensors.

    Each tensor is scored the moment backward has its gradient (a post-accumulate hook), which is freed
    right away: without ``alive`` the scores overwrite the linearised weights (restored next round), so
    scoring holds one tensor's gradient at a time instead of a second copy of every weight."""
    weights = [state[n] for n in masks]
    inputs = all_ones_input(example_input, weights[0].dtype)
    args, kwargs = ((), inputs) if isinstance(inputs, Mapping) else (inputs if isinstance(inputs, tuple) else (inputs,), {})
    with _one_hot_tokens(model, (*args, *kwargs.values())):
        outputs = functional_call(model, dict(state), args, kwargs)
    R = sum(t.sum() for t in tree_leaves(outputs) if isinstance(t, Tensor) and t.is_floating_point())
    if not isinstance(R, Tensor):
        raise TypeError(f"{type(model).__name__} returned no floating tensor, so SynFlow has no R to differentiate")
    r = float(R.detach())
    if not math.isfinite(r):
        return None
    scale = 2.0 ** -math.frexp(r)[1] if r else 1.0  # exact: |R| * scale in [0.5, 1) (R < 0 after a signed buffer or LayerNorm)
    scores: dict[str, Tensor] = {}
    sums: list[Tensor] = []  # each layer's scores sum to about |R| * scale <= 1: a non-finite sum is an overflow
    if alive is not None:  # allocated before backward, so that no score lands between two gradients in the heap
        sizes = [alive[n].numel() for n in masks]
        gathered = dict(zip(masks, weights[0].new_empty(sum(sizes)).split(sizes)))
        scratch = weights[0].new_empty(max(sizes))

    def to_scores(name: str) -> Callable[[Tensor], None]:
        def hook(w: Tensor) -> None:
            g, w.grad = w.grad, None
            if alive is None:  # w >= 0 (-0.0 if pruned), so w * |g| = |w * g| and pruned stay -0.0
                scores[name] = w.detach().mul_(g.abs_())
            else:
                at, out = alive[name], gathered[name]
                torch.index_select(g.view(-1), 0, at, out=out).abs_()
                scores[name] = out.mul_(torch.index_select(w.detach().view(-1), 0, at, out=scratch[: at.numel()]))
            sums.append(scores[name].sum())

        return hook

    handles = [w.register_post_accumulate_grad_hook(to_scores(n)) for n, w in zip(masks, weights)]
    try:
        R.backward(torch.tensor(scale, dtype=R.dtype))
    finally:
        for h in handles:
            h.remove()
        for w in weights:
            w.grad = None
    if sums and not torch.isfinite(torch.stack(sums)).all():
        return None
    for name, w in zip(masks, weights):  # not reached from the output: no flow through them
        if name not in scores:
            scores[name] = w.new_zeros(w.shape, requires_grad=False) if alive is None else gathered[name].zero_()
    return {name: scores[name] for name in masks}


def _sharded_scores(
    model: nn.Module, masks: Mapping[str, Tensor], example_input: ExampleInput, dtype: torch.dtype
) -> dict[str, Tensor]:
    """SynFlow on a sharded model: its own parameters' local shards (and normalisation buffers) hold the
    linearised network for one pass, FSDP2 gathering layer by layer as in training; scores are DTensors laid
    out as the parameters. Scoring runs in the parameters' dtype, which must be the scorer's."""
    params = dict(model.named_parameters())
    wrong = sorted({str(p.dtype) for p in params.values() if p.is_floating_point() and p.dtype != dtype})
    if wrong:
        raise ValueError(
            f"SynFlow(dtype={str(dtype).removeprefix('torch.')!r}) scores a sharded model in its parameters' dtype,"
            f" which is {wrong}: pass SynFlow(dtype=...) matching the parameters"
        )
    norms = _normalisation_buffers(model)
    linearised = [local(p) for p in params.values()] + [b for n, b in model.named_buffers() if n in norms]
    prunable = [params[n] for n in masks]
    for p in model.parameters():
        p.grad = None
    with overwritten(linearised):
        with torch.no_grad():
            for t in linearised:
                t.abs_()
            for p, m in zip(prunable, masks.values()):
                local(p).mul_(local(m))
        for p in prunable:
            p.requires_grad_(True)
        inputs = all_ones_input(example_input, dtype)
        args, kwargs = ((), inputs) if isinstance(inputs, Mapping) else (inputs if isinstance(inputs, tuple) else (inputs,), {})
        with _one_hot_tokens(model, (*args, *kwargs.values())):
            outputs = model(*args, **kwargs)
        R = sum(t.sum() for t in tree_leaves(outputs) if isinstance(t, Tensor) and t.is_floating_point())
        if not isinstance(R, Tensor):
            raise TypeError(f"{type(model).__name__} returned no floating tensor, so SynFlow has no R to differentiate")
        if is_sharded(R):
            R = R.full_tensor()  # a scalar
        r = float(R.detach())
        if not math.isfinite(r):
            raise FloatingPointError(
                f"SynFlow's R overflowed {dtype} on {type(model).__name__}; a sharded model is scored in its"
                f" parameters' dtype: build it in float64 to prune it with SynFlow(dtype='float64')"
            )
        scale = 2.0 ** -math.frexp(r)[1] if r else 1.0
        R.backward(torch.tensor(scale, dtype=R.dtype, device=R.device))
        scores = {
            n: like(p, local(p.grad).abs_().mul_(local(p).detach()) if p.grad is not None else torch.zeros_like(local(p)))
            for n, p in zip(masks, prunable)
        }
    for p in prunable:
        p.grad = None
    return scores
