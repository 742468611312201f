r"""Spike-driven inference: integer counts as binary events (paper eqs. 19-21).

A normalised NI-LIF output :math:`S = C / D` with :math:`C \in \{0..D\}` is sent
as D binary events per logical step in thermometer code,
:math:`b_d = [C > d]` for :math:`d = 0..D-1`, so :math:`C = \sum_d b_d`.
A synaptic layer then accumulates :math:`W / D` once per event:

.. math::

    W S + b = W \frac{C}{D} + b = \sum_{d=0}^{D-1} \frac{W}{D} b_d + b

The paper writes the folded weight as "W x D"; with normalised S and unit
events the factor that preserves the output is 1/D (the tests check this
against the integer path). The bias is added once per logical step, not once
per event, and BatchNorm is folded into the weights before the expansion
(:func:`fold_batchnorm`).

Layout: a multi-step tensor [T, ...] becomes [T * D, ...] with event slot
``t * D + d``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["to_events", "from_events", "SpikeDrivenSynapse", "fold_batchnorm", "fold_batchnorm_", "batchnorm_affine"]


def _check_D(D) -> int:
    if isinstance(D, bool) or not isinstance(D, int) or D < 1:
        raise ValueError(f"D must be an int >= 1, got {D!r}")
    return D


def to_events(s_seq: torch.Tensor, D: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
    """Normalised counts [T, ...] (values k/D) -> binary events [T*D, ...] (thermometer code)."""
    D = _check_D(D)
    counts = torch.round(s_seq * D)
    if not torch.equal(counts.clamp(0, D), counts) or not torch.allclose(counts, s_seq * D, atol=1e-3):
        raise ValueError(f"input is not a normalised count: expected values k/{D} with k in 0..{D}")
    slots = torch.arange(D, device=s_seq.device).view(1, D, *([1] * (s_seq.dim() - 1)))
    events = counts.unsqueeze(1) > slots
    return events.reshape(s_seq.shape[0] * D, *s_seq.shape[1:]).to(dtype)


def from_events(events: torch.Tensor, D: int) -> torch.Tensor:
    """Binary events [T*D, ...] -> normalised counts [T, ...] (float32)."""
    D = _check_D(D)
    if events.shape[0] % D:
        raise ValueError(f"the event axis ({events.shape[0]}) is not a multiple of D={D}")
    grouped = events.reshape(events.shape[0] // D, D, *events.shape[1:])
    return grouped.sum(1, dtype=torch.float32) / D


class SpikeDrivenSynapse(nn.Module):
    """Evaluate a Conv1d/Conv2d/Linear layer on binary events.

    Input: events [T*D, B, ...] from :func:`to_events`. Every event slot goes
    through the layer with weight ``W / D`` and no bias (pure accumulation);
    the D slots of each logical step are summed and the bias is added once.
    Output: [T, B, ...], equal to the layer applied to the normalised counts.
    """

    def __init__(self, layer: nn.Module, D: int):
        super().__init__()
        if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            raise TypeError(f"SpikeDrivenSynapse wraps Conv1d, Conv2d or Linear, got {type(layer).__name__}")
        self.layer = layer
        self.D = _check_D(D)

    def _accumulate(self, events: torch.Tensor) -> torch.Tensor:
        weight = self.layer.weight / self.D
        if isinstance(self.layer, nn.Linear):
            return F.linear(events, weight)
        flat = events.flatten(0, 1)
        out = self.layer._conv_forward(flat, weight, None)
        return out.reshape(*events.shape[:2], *out.shape[1:])

    def forward(self, events: torch.Tensor) -> torch.Tensor:
        if events.shape[0] % self.D:
            raise ValueError(f"the event axis ({events.shape[0]}) is not a multiple of D={self.D}")
        out = self._accumulate(events.to(self.layer.weight.dtype))
        out = out.reshape(out.shape[0] // self.D, self.D, *out.shape[1:]).sum(1)
        bias = self.layer.bias
        if bias is not None:
            channel_axis = -1 if isinstance(self.layer, nn.Linear) else 2
            shape = [1] * out.dim()
            shape[channel_axis] = -1
            out = out + bias.view(shape)
        return out


@torch.no_grad()
def batchnorm_affine(bn: nn.modules.batchnorm._BatchNorm):
    """An eval-mode BatchNorm as ``y = scale * x + shift`` per channel: returns ``(scale, shift)``."""
    if bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


@torch.no_grad()
def fold_batchnorm_(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, where: str = "BatchNorm") -> nn.Module:
    """Fold an eval-mode BatchNorm that follows ``layer`` (Conv/Linear) into it, **in place**; returns ``layer``.

    ``y = s (W u + b) + t = (s W) u + (s b + t)`` per output channel (:func:`batchnorm_affine`): the
    weights are scaled where they lie (no second copy) and the bias is replaced.
    """
    if not isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        raise TypeError(f"{where} folds into Conv1d, Conv2d or Linear, got {type(layer).__name__}")
    out_features = layer.weight.shape[0]
    if bn.num_features != out_features:
        raise ValueError(f"{where} has {bn.num_features} features, the layer has {out_features} outputs")
    scale, shift = batchnorm_affine(bn)
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    bias = shift if layer.bias is None else layer.bias * scale + shift
    layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)
    return layer


def fold_batchnorm(layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``layer`` (Conv/Linear) with an eval-mode BatchNorm that follows it folded in
    (:func:`fold_batchnorm_` on a copy; ``layer`` is unchanged)."""
    return fold_batchnorm_(copy.deepcopy(layer), bn)
