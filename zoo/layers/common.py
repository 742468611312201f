"""Conventions shared by every spikezoo model.

- Activations carry a leading time axis: [T, B, C, H, W] for maps, [T, B, N, C]
  for token sequences. Per-frame layers (Conv, BN, Linear) run on the
  T*B-folded tensor through :func:`multistep`.
- Every spiking module takes ``neuron``, a :data:`NeuronFactory`: a callable with
  no arguments that returns a fresh multi-step neuron (``step_mode='m'``). The
  paper's "SN" is one call of it. :func:`neuron_factory` builds one from a kind
  and its parameters, so a whole model swaps its neuron by one argument.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn as nn
from spikingjelly.activation_based import base

import neurons

__all__ = ["NeuronFactory", "neuron_factory", "model_neuron", "multistep", "reset_neurons"]


def reset_neurons(module: nn.Module) -> None:
    """Reset every stateful module under ``module``: SpikingJelly's ``functional.reset_net`` without
    its per-network module cache, which ``torch.compile`` would guard on (and recompile for)."""
    for child in module.modules():
        if isinstance(child, base.MemoryModule):
            child.reset()

NeuronFactory = Callable[[], nn.Module]


def neuron_factory(kind: str = "nilif", **kwargs) -> NeuronFactory:
    """A factory of multi-step neurons of ``kind`` (see :func:`neurons.build`)."""
    kwargs.setdefault("step_mode", "m")
    factory = functools.partial(neurons.build, kind, **kwargs)
    factory()  # fail here, with the neuron's own message, rather than deep inside a model
    return factory


def model_neuron(kind: str = "nilif", D: int = 4, beta: float = 0.25) -> NeuronFactory:
    """The neuron factory a model builds from its ``neuron``/``D``/``beta`` arguments.

    'official' fixes D=8 and beta=1 itself; 'lif' is binary and takes no D.
    """
    if kind == "official":
        return neuron_factory("official")
    if kind == "lif":
        return neuron_factory("lif", beta=beta)
    return neuron_factory(kind, D=D, beta=beta)


def multistep(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a per-frame module to [T, B, ...] by folding T into the batch."""
    y = module(x.flatten(0, 1))
    return y.reshape(x.shape[0], x.shape[1], *y.shape[1:])
