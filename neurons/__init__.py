"""Spiking neurons for spikezoo.

- :class:`NILIFNode`: Spike2Former's normalised integer LIF neuron (eqs. 16-18),
  a SpikingJelly ``BaseNode`` with 'torch' and 'cupy' backends.
- :func:`build`: the neurons of the paper's ablations by name
  ('nilif', 'ilif', 'nilif_const', 'lif', 'official').
- :func:`set_backend`: switch every NILIFNode of a model to a backend.
- :mod:`neurons.spike_driven`: integer counts as binary events (eqs. 19-21).
"""
from . import spike_driven
from .factory import NEURON_KINDS, build, set_backend
from .nilif import BACKENDS, NILIFNode

__all__ = ["NILIFNode", "BACKENDS", "NEURON_KINDS", "build", "set_backend", "spike_driven"]
