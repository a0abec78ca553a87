"""Iter-SNIP and FORCE (de Jorge et al., "Progressive Skeletonization: Trimming more fat from a network at
initialization", ICLR 2021): SNIP's saliency re-computed on the network as it is being pruned.

Both prune iteratively with the exponential schedule ``d_t = d ** (t / T)``, ``T = 60`` by default (the
authors' README: 60 steps, 1 batch of 128 on CIFAR-10, 10 on CIFAR-100, 20 on Tiny ImageNet). They differ in
which weights compete at each step:

- **Iter-SNIP** scores ``|(θ⊙c_t) ⊙ ∇L(θ⊙c_t)|`` on the current sparse net; a pruned weight scores 0 and
  stays pruned (monotone).
- **FORCE** ("foresight connection sensitivity") scores *every* weight, pruned ones included, by
  ``|θ₀ ⊙ ∇L(θ₀⊙c_t)|``: the gradient is taken at the sparse net, the weight is the dense initial one.
  All weights are ranked again at every step, so a weight pruned earlier can come back.

Differences from the published code (``naver/force``, ``pruning/pruning_algos.py``), on purpose:

- The loss is the real one: the loop's ``loss_fn`` (cross-entropy on logits in the functional API, the
  LightningModule's own ``training_step`` loss in the callback). The published code applies
  ``F.nll_loss`` to the raw logits of its VGG/ResNet, i.e. ``-mean(logit[y])`` without the log-softmax,
  which is not cross-entropy and gives different gradients.
- Exactly ``round(d_t·N)`` weights are kept at each step (their ``>=`` threshold keeps every tie).
- The same scoring batches are used at every step (the loop fetches them once); the published code draws a
  new random batch at every step (``next(iter(loader))``). Gradients are summed over the batches and over
  all ranks (theirs are averaged over batches: the same ranking).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from lightning_synflow.scorers.base import Scorer, ScoringContext, register_scorer
from lightning_synflow.scorers.functional import Mode, check_mode, loss_gradients


@register_scorer("iter_snip")
class IterSNIP(Scorer):
    """Iterative SNIP: ``|(θ⊙c) ⊙ ∇L(θ⊙c)|`` on the network as currently masked, gradients summed over the
    scoring batches and over all ranks; 60 exponential steps by default, pruned weights stay pruned.

    Args:
        mode: The model's mode while scoring. ``"train"`` (BatchNorm on batch statistics) follows the
            published code, which prunes the freshly built network without ever calling ``eval()``;
            ``"eval"`` uses the running statistics. Running statistics are never updated by scoring.
    """

    default_iterations = 60
    needs_data = True
    supports_sharding = True

    def __init__(self, mode: Mode = "train") -> None:
        self.mode = check_mode(mode)

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        weights, grads = loss_gradients(model, masks, context, self.mode)
        return {n: weights[n].mul_(grads.pop(n)).abs_() for n in masks}  # in place: w is a copy


@register_scorer("force")
class FORCE(Scorer):
    """FORCE: ``|θ₀ ⊙ ∇L(θ₀⊙c)|`` for every weight, pruned ones included (gradient at the sparse net, weight
    from the dense initialization ``θ₀``, the model's own weights, which scoring never changes). Gradients
    are summed over the scoring batches and over all ranks; 60 exponential steps by default. Not monotone:
    every weight competes at every step, so pruned weights can return.

    Args:
        mode: The model's mode while scoring. ``"train"`` (BatchNorm on batch statistics) follows the
            published code, which prunes the freshly built network without ever calling ``eval()``;
            ``"eval"`` uses the running statistics. Running statistics are never updated by scoring.
    """

    default_iterations = 60
    monotone = False
    needs_data = True
    supports_sharding = True

    def __init__(self, mode: Mode = "train") -> None:
        self.mode = check_mode(mode)

    def score(self, model: nn.Module, masks: Mapping[str, Tensor], context: ScoringContext) -> dict[str, Tensor]:
        _, grads = loss_gradients(model, masks, context, self.mode)
        params = dict(model.named_parameters())
        return {n: grads[n].mul_(params[n].detach()).abs_() for n in masks}
