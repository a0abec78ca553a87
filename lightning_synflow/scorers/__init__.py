"""Scorers by name (``"synflow"``, ``"snip"``, ...); a user's own by subclassing :class:`Scorer`."""

from lightning_synflow._moved import renamed_attributes
from lightning_synflow.scorers.base import (
    IncrementalScorer,
    LivingWeights,
    LossFn,
    Scorer,
    ScoringContext,
    available_scorers,
    cross_entropy_loss,
    get_scorer,
    register_scorer,
)
from lightning_synflow.scorers.baselines import Magnitude, Random
from lightning_synflow.scorers.erk import ERKRandom, UniformRandom
from lightning_synflow.scorers.force import FORCE, IterSNIP
from lightning_synflow.scorers.grasp import GraSP, GraSPAbs
from lightning_synflow.scorers.ntksap import NTKSAP
from lightning_synflow.scorers.snip import SNIP
from lightning_synflow.scorers.snip_it import SNIPit
from lightning_synflow.scorers.synflow import SynFlow

__all__ = [
    "ERKRandom",
    "FORCE",
    "NTKSAP",
    "SNIP",
    "IterSNIP",
    "GraSP",
    "GraSPAbs",
    "SNIPit",
    "IncrementalScorer",
    "LivingWeights",
    "LossFn",
    "Magnitude",
    "Random",
    "Scorer",
    "ScoringContext",
    "SynFlow",
    "UniformRandom",
    "available_scorers",
    "cross_entropy_loss",
    "get_scorer",
    "register_scorer",
]

__getattr__ = renamed_attributes(__name__, {"ERK": "lightning_synflow.scorers.ERKRandom", "Uniform": "lightning_synflow.scorers.UniformRandom"})
