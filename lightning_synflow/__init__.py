"""Prune at initialization with SynFlow and friends, and keep the network sparse while it trains."""

from lightning_synflow import _moved
from lightning_synflow._moved import renamed_attributes
from lightning_synflow.ablations import reinitialize, shuffle_masks
from lightning_synflow.distributions import (
    Distribution,
    erk_densities,
    get_distribution,
    kept_counts,
    uniform_densities,
)
from lightning_synflow.lightning.callback import PruneAtInit
from lightning_synflow.lightning.checkpointing import load_shrunk, shrink_to_checkpoint
from lightning_synflow.lightning.diagnostics import PruningDiagnostics
from lightning_synflow.masks import BoundMasks, apply_masks, check_masks
from lightning_synflow.parameters import DEFAULT_PRUNABLE_TYPES, select_prunable
from lightning_synflow.plan import PruningPlan, resolve_plan
from lightning_synflow.pruning import compute_masks, compute_scores, prune_masks
from lightning_synflow.report import SparsityReport, TensorSparsity, sparsity_report
from lightning_synflow.schedules import density_schedule, num_kept, resolve_density
from lightning_synflow.scorers import (
    FORCE,
    NTKSAP,
    SNIP,
    ERKRandom,
    GraSP,
    GraSPAbs,
    IncrementalScorer,
    IterSNIP,
    LivingWeights,
    LossFn,
    Magnitude,
    Random,
    Scorer,
    ScoringContext,
    SNIPit,
    SynFlow,
    UniformRandom,
    available_scorers,
    cross_entropy_loss,
    get_scorer,
    register_scorer,
)
from lightning_synflow.selection.channels import shrink
from lightning_synflow.selection.granularity import NM, get_granularity
from lightning_synflow.selection.semi_structured import (
    semi_structured_plan,
    to_semi_structured,
)
from lightning_synflow.selection.topk import select_masks, top_k_mask

_moved.install()  # old module paths keep importing, with a warning

__version__ = "0.1.0"

# The old names of the random baselines stay here without a warning: jsonargparse looks up
# ``lightning_synflow.ERK`` to shorten the class path of the distribution ``distributions.ERK``, and that
# look-up must not warn a user who never used the old name (``scorers.ERK`` and ``scorers.erk.ERK`` warn).
__getattr__ = renamed_attributes(
    __name__, {"ERK": "lightning_synflow.ERKRandom", "Uniform": "lightning_synflow.UniformRandom"}, warn=False
)

__all__ = [
    "DEFAULT_PRUNABLE_TYPES",
    "Distribution",
    "ERKRandom",
    "FORCE",
    "NTKSAP",
    "SNIP",
    "BoundMasks",
    "IncrementalScorer",
    "IterSNIP",
    "LivingWeights",
    "GraSP",
    "GraSPAbs",
    "SNIPit",
    "LossFn",
    "Magnitude",
    "NM",
    "PruneAtInit",
    "PruningDiagnostics",
    "PruningPlan",
    "Random",
    "Scorer",
    "ScoringContext",
    "SparsityReport",
    "SynFlow",
    "TensorSparsity",
    "UniformRandom",
    "apply_masks",
    "available_scorers",
    "check_masks",
    "compute_masks",
    "compute_scores",
    "cross_entropy_loss",
    "density_schedule",
    "erk_densities",
    "get_distribution",
    "get_granularity",
    "get_scorer",
    "kept_counts",
    "load_shrunk",
    "shrink_to_checkpoint",
    "num_kept",
    "prune_masks",
    "register_scorer",
    "reinitialize",
    "resolve_density",
    "resolve_plan",
    "select_masks",
    "select_prunable",
    "semi_structured_plan",
    "shrink",
    "shuffle_masks",
    "sparsity_report",
    "to_semi_structured",
    "top_k_mask",
    "uniform_densities",
]
