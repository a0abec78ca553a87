"""Diagnostics for pruning at initialization: signal propagation, layer collapse, effective sparsity,
conservation, and figures of them.

Every function takes a model, masks and tensors and returns a small result object (``.as_metrics()``
gives a flat ``dict[str, float]`` for a logger); figures are :class:`matplotlib.figure.Figure` objects
from :mod:`lightning_synflow.analysis.figures` (matplotlib is imported only there, lazily).

- :func:`approximate_isometry` (and :func:`isometry_penalty`): Lee et al. 2020, data-free.
- :func:`jacobian_singular_values` (and :func:`singular_value_stats`, :func:`input_output_jacobians`).
- :func:`effective_masks` (and :func:`effective_sparsity_report`): weights on an input-output path.
- :func:`critical_compression`: the largest 10^x without layer collapse (SynFlow paper, Fig. 1).
- :func:`conservation`: per-neuron and per-layer score conservation (SynFlow paper, Figs. 3-4).
"""

from lightning_synflow.analysis.conservation import (
    ConservationResult,
    LayerScore,
    NeuronConservation,
    conservation,
)
from lightning_synflow.analysis.critical import (
    CriticalCompressionResult,
    CriticalRun,
    SweepPoint,
    critical_compression,
    default_grid,
    exact_one_shot_log10,
    max_compression_log10,
)
from lightning_synflow.analysis.effective import (
    EffectiveSparsityReport,
    effective_masks,
    effective_sparsity_report,
)
from lightning_synflow.analysis.isometry import (
    IsometryResult,
    approximate_isometry,
    isometry_penalty,
)
from lightning_synflow.analysis.jacobian import (
    SingularValueStats,
    input_output_jacobians,
    jacobian_singular_values,
    singular_value_stats,
)

__all__ = [
    "ConservationResult",
    "CriticalCompressionResult",
    "CriticalRun",
    "EffectiveSparsityReport",
    "IsometryResult",
    "LayerScore",
    "NeuronConservation",
    "SingularValueStats",
    "SweepPoint",
    "approximate_isometry",
    "conservation",
    "critical_compression",
    "default_grid",
    "effective_masks",
    "effective_sparsity_report",
    "exact_one_shot_log10",
    "input_output_jacobians",
    "isometry_penalty",
    "jacobian_singular_values",
    "max_compression_log10",
    "singular_value_stats",
]
