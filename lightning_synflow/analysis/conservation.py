"""Conservation diagnostics (SynFlow paper, Figs. 3-4), for any scorer.

* **Per neuron**: for a hidden unit (a channel) the summed score of the weights entering it against the
  summed score of the weights leaving it. For SynFlow on a network of positively homogeneous layers
  without biases the two are equal (Theorem 1 of the paper), and every layer carries the same total R.
* **Per layer**: average score against layer size. Equal totals mean ``mean ∝ 1 / size``, a slope of -1
  in log-log: large layers get small per-weight scores, which is why single-shot pruning empties them.

Neuron pairs are found along the masks' order: a tensor and the next one whose input dimension matches
its output channels (``in == C``, or ``in == C * k`` after a channel-major flatten of a ``k``-pixel
map). That is right for chains (MLPs, VGG); for graphs with skip connections pass ``pairs`` explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

from lightning_synflow.pruning import compute_scores
from lightning_synflow.scorers.base import ExampleInput, Scorer

_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


@dataclass(frozen=True)
class NeuronConservation:
    """Per-channel incoming (scores into ``layer``'s outputs) and outgoing (scores of ``next_layer``
    reading them) sums."""

    layer: str
    next_layer: str
    incoming: Tensor
    outgoing: Tensor

    @property
    def max_relative_error(self) -> float:
        """max |in - out| / max(|in|, |out|) over the channels (0 when the law holds exactly)."""
        scale = torch.maximum(self.incoming.abs(), self.outgoing.abs()).max()
        if scale == 0:
            return 0.0
        return float((self.incoming - self.outgoing).abs().max() / scale)


@dataclass(frozen=True)
class LayerScore:
    """Total and mean score of one prunable tensor."""

    name: str
    size: int
    total: float
    mean: float


@dataclass(frozen=True)
class ConservationResult:
    """Per-neuron and per-layer score conservation of one scorer (:func:`conservation`)."""
    scorer: str
    neurons: tuple[NeuronConservation, ...]
    layers: tuple[LayerScore, ...]

    @property
    def max_relative_error(self) -> float:
        """Largest per-neuron relative mismatch of incoming and outgoing score over all pairs."""
        return max((n.max_relative_error for n in self.neurons), default=0.0)

    @property
    def total_spread(self) -> float:
        """max / min of the per-layer total scores (1 when every layer carries the same total)."""
        totals = [l.total for l in self.layers if l.total > 0]
        return max(totals) / min(totals) if totals else float("nan")

    @property
    def size_slope(self) -> float:
        """Least-squares slope of log10(mean score) against log10(layer size) (-1 for SynFlow)."""
        pts = [(math.log10(l.size), math.log10(l.mean)) for l in self.layers if l.mean > 0]
        if len(pts) < 2:
            return float("nan")
        mx = sum(p[0] for p in pts) / len(pts)
        my = sum(p[1] for p in pts) / len(pts)
        var = sum((p[0] - mx) ** 2 for p in pts)
        return sum((p[0] - mx) * (p[1] - my) for p in pts) / var if var > 0 else float("nan")

    def as_metrics(self, prefix: str = "conservation") -> dict[str, float]:
        """The three summary figures, flat, for a logger."""
        return {
            f"{prefix}/{self.scorer}/max_neuron_relative_error": self.max_relative_error,
            f"{prefix}/{self.scorer}/layer_total_spread": self.total_spread,
            f"{prefix}/{self.scorer}/mean_vs_size_slope": self.size_slope,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One row per layer (scorer, tensor, size, total, mean) for a CSV."""
        return [{"scorer": self.scorer, "tensor": l.name, "size": l.size, "total": l.total, "mean": l.mean} for l in self.layers]


def _dims(model: nn.Module, name: str) -> tuple[int, int]:
    """(output dim, input dim) of a weight."""
    owner = dict(model.named_modules()).get(name.rpartition(".")[0])
    return (1, 0) if isinstance(owner, _TRANSPOSED) else (0, 1)


def _sum_except(t: Tensor, dim: int) -> Tensor:
    return t.movedim(dim, 0).reshape(t.shape[dim], -1).sum(1)


def _outgoing(score: Tensor, in_dim: int, channels: int) -> Optional[Tensor]:
    n_in = score.shape[in_dim]
    if n_in % channels:
        return None
    per_in = _sum_except(score, in_dim)
    return per_in.reshape(channels, n_in // channels).sum(1)


def conservation(
    model: nn.Module,
    scorer: Union[str, Scorer] = "synflow",
    *,
    masks: Optional[Mapping[str, Tensor]] = None,
    example_input: Optional[ExampleInput] = None,
    dataloader: Optional[Iterable[Any]] = None,
    scores: Optional[Mapping[str, Tensor]] = None,
    pairs: Optional[Sequence[tuple[str, str]]] = None,
) -> ConservationResult:
    """Per-neuron incoming/outgoing score sums and per-layer mean score vs size for ``scorer``.

    Args:
        scores: Precomputed scores (skip scoring); otherwise :func:`~lightning_synflow.compute_scores`
            with ``scorer``, ``masks``, ``example_input``, ``dataloader``.
        pairs: ``(layer, next_layer)`` tensor names whose neurons to compare; default: consecutive
            tensors whose shapes chain (see the module docstring).
    """
    name = scorer if isinstance(scorer, str) else (scorer.name or type(scorer).__name__)
    if scores is None:
        scores = compute_scores(model, scorer, masks=masks, example_input=example_input, dataloader=dataloader)
    names = list(scores)
    s = {n: scores[n].detach().double() for n in names}
    layers = tuple(LayerScore(n, s[n].numel(), float(s[n].sum()), float(s[n].mean())) for n in names)
    if pairs is None:
        pairs = list(zip(names[:-1], names[1:]))
        strict = False
    else:
        strict = True
    neurons = []
    for a, b in pairs:
        out_a, _ = _dims(model, a)
        _, in_b = _dims(model, b)
        channels = s[a].shape[out_a]
        outgoing = _outgoing(s[b], in_b, channels)
        if outgoing is None:
            if strict:
                raise ValueError(f"{b!r} has {s[b].shape[in_b]} inputs, not a multiple of {a!r}'s {channels} outputs")
            continue
        neurons.append(NeuronConservation(a, b, _sum_except(s[a], out_a), outgoing))
    return ConservationResult(name, tuple(neurons), layers)
