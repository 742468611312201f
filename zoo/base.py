"""What every registered segmentor shares: input checks, padding, time replication, reset, saving."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import ContextManager, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from neurons import NILIFNode
from neurons.saved_spikes import compact_saved_spikes

from . import hub

__all__ = ["SegmentationModel"]


class SegmentationModel(nn.Module):
    """Base of spikezoo segmentors.

    Input: ``images`` [B, 3, H, W], float, normalised with the config's mean/std.
    Any H x W works: the image is zero-padded at the bottom/right to a multiple of
    ``size_divisor`` and predictions are cropped back. The image is replicated over
    the T time steps (``[T, B, 3, H, W]``). Every forward starts by resetting all
    neurons, so no membrane state leaks from one batch into the next.

    ``official=True`` folds T into the batch as the released code does (each
    replica is processed independently: no recurrence across T).
    """

    size_divisor = 32
    # Neurons are reset before every forward, so their final membrane states are never read;
    # set True to inspect ``v`` after a forward (costs memory and two passes per neuron).
    keep_neuron_states = False
    # In training, spikes kept for backward are stored as 1-byte counts (neurons.saved_spikes):
    # identical gradients, a quarter of their memory, two cheap conversions per saved spike tensor.
    compact_saved_spikes = True
    # ... and the outputs of Conv/Linear layers costing at most this many multiply-adds per element
    # (depth-wise and thin 1x1 convs) are recomputed in backward instead of kept (BatchNorm inputs):
    # same gradients, about 0.25 GB less for spike2former_ade20k at 512x512; 0 turns it off.
    recompute_macs_per_output = 64

    def __init__(self, T: int = 1, official: bool = False):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T (time steps) must be an int >= 1, got {T!r}")
        self.T = T
        self.official = official

    def check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor [B, 3, H, W], got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must have shape [B, 3, H, W], got {list(images.shape)}; "
                             "add a batch axis with images[None] for a single image")
        if not images.is_floating_point():
            raise TypeError(f"images must be float and normalised with the model's mean/std, got {images.dtype}")

    def saving_memory_for_backward(self) -> ContextManager:
        """The context a training forward runs in (see ``compact_saved_spikes``)."""
        if self.compact_saved_spikes and self.training and torch.is_grad_enabled():
            return compact_saved_spikes(self, self.recompute_macs_per_output)
        return contextlib.nullcontext()

    def to_sequence(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Reset neurons, pad to the size divisor, replicate over T: -> ([T', B', 3, Hp, Wp], (H, W)).

        In official mode T' = 1 and B' = T * B (time folded into the batch).
        """
        self.check_images(images)
        functional.reset_net(self)
        for node in self.modules():
            if isinstance(node, NILIFNode):
                node.keep_state = self.keep_neuron_states
        height, width = images.shape[-2:]
        pad_h = -height % self.size_divisor
        pad_w = -width % self.size_divisor
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        x = images.unsqueeze(0).expand(self.T, *images.shape)
        if self.official:
            x = x.reshape(1, self.T * images.shape[0], *images.shape[1:])
        return x, (height, width)

    def time_mean(self, y: torch.Tensor, axis: int) -> torch.Tensor:
        """Average over time an output that the head left per replica (official mode folded T into B)."""
        if not self.official or self.T == 1:
            return y
        batch = y.shape[axis] // self.T
        return y.unflatten(axis, (self.T, batch)).mean(axis)

    def save_pretrained(self, directory) -> Path:
        """Write ``config.json`` + ``model.safetensors``; ``zoo.create(directory)`` rebuilds the model."""
        return hub.save_pretrained(self, directory)
