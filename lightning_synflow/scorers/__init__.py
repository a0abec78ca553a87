"""Scorers by name: ``"synflow"``, ``"magnitude"``, ``"random"``; a user's own by subclassing :class:`Scorer`."""

from lightning_synflow.scorers.base import (
    Scorer,
    ScoringContext,
    available_scorers,
    get_scorer,
    register_scorer,
)
from lightning_synflow.scorers.baselines import Magnitude, Random
from lightning_synflow.scorers.synflow import SynFlow

__all__ = [
    "Magnitude",
    "Random",
    "Scorer",
    "ScoringContext",
    "SynFlow",
    "available_scorers",
    "get_scorer",
    "register_scorer",
]
