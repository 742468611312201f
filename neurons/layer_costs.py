"""What a synaptic layer costs per output element: one place for the MAC convention that MAC counting
(``zoo.complexity``), the spike-driven statistics (``zoo.spike_driven``), the energy report and the
saved-spike recomputation rule (``neurons.saved_spikes``) share."""
from __future__ import annotations

import math

import torch.nn as nn

__all__ = ["SYNAPTIC_LAYERS", "macs_per_output"]

SYNAPTIC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear)


def macs_per_output(layer: nn.Module) -> int:
    """Multiply-adds per output element of a Conv1d/Conv2d/Linear layer (its fan-in); no bias, no BN."""
    if isinstance(layer, nn.Linear):
        return layer.in_features
    if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
        return layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    raise TypeError(f"macs_per_output counts Conv1d, Conv2d and Linear layers, got {type(layer).__name__}")
