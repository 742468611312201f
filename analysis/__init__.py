"""Analyses of spiking segmentation models (paper section 5): firing rates, spike degradation,
query mask patterns and theoretical energy.

- :mod:`analysis.firing`: :class:`FiringRateMonitor`, :func:`measure_firing` (per layer and per module group).
- :mod:`analysis.degradation`: firing rate against depth, one line per model (:func:`spike_degradation`).
- :mod:`analysis.masks`: each query's average mask and class histogram (:func:`query_mask_patterns`).
- :mod:`analysis.energy`: MACs/ACs and energy per layer (:func:`estimate`) under the energy convention of its docstring.

``python -m analysis firing|degradation|masks|energy ...`` runs each on a model and a dataset.

Submodules are imported on first use (PEP 562), so that ``python -m analysis`` can set up OpenMP
(:mod:`recipes.runtime`) before PyTorch is loaded.
"""
import importlib

_EXPORTS = {
    "degradation": ["plot_spike_degradation", "spike_degradation"],
    "energy": ["EnergyReport", "estimate"],
    "firing": ["FiringRateMonitor", "FiringReport", "measure_firing"],
    "masks": ["QueryMaskPatterns", "query_mask_patterns", "write_query_mask_patterns"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted([*_MODULE_OF, *_EXPORTS])


def __getattr__(name: str):
    if name in _EXPORTS:
        return importlib.import_module(f".{name}", __name__)
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
