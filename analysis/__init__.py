"""Analyses of spiking segmentation models (paper section 5): firing rates, spike degradation,
query mask patterns and theoretical energy.

- :mod:`analysis.firing`: :class:`FiringRateMonitor`, :func:`measure_firing` (per layer and per module group).
- :mod:`analysis.degradation`: firing rate against depth, one line per model (:func:`spike_degradation`).
- :mod:`analysis.masks`: each query's average mask and class histogram (:func:`query_mask_patterns`).
- :mod:`analysis.energy`: MACs/ACs and energy per layer (:func:`estimate`), DESIGN.md section 7.

``python -m analysis firing|degradation|masks|energy ...`` runs each on a model and a dataset.
"""
from . import degradation, energy, firing, masks
from .degradation import plot_spike_degradation, spike_degradation
from .energy import EnergyReport, estimate
from .firing import FiringRateMonitor, FiringReport, measure_firing
from .masks import QueryMaskPatterns, query_mask_patterns, write_query_mask_patterns

__all__ = ["FiringRateMonitor", "FiringReport", "measure_firing", "plot_spike_degradation", "spike_degradation",
           "QueryMaskPatterns", "query_mask_patterns", "write_query_mask_patterns", "EnergyReport", "estimate",
           "degradation", "energy", "firing", "masks"]
