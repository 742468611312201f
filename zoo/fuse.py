r"""Fold eval-mode BatchNorm into the Conv/Linear layer that feeds it, for inference.

    model = zoo.create("spike2former_ade20k").eval()
    fold_batchnorm(model)          # in place; every BatchNorm of our modules becomes nn.Identity

An eval-mode BN is the affine map ``y = s * x + t`` per channel
(``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``). When it directly
follows a Conv/Linear ``x = W u + b``, ``y = (s W) u + (s b + t)``: one layer
with scaled weights and a new bias. The weights are scaled in place (unlike
:func:`neurons.spike_driven.fold_batchnorm`, which returns a copy of the layer),
so folding a model allocates no second copy of its weights.
The pairs are read from the modules' structure (:data:`FOLD_PAIRS`), not
guessed: only a BN that the module's ``forward`` applies to the layer's output
with nothing in between is folded.

``RepConv``'s ``BNAndPad`` (``pw_in -> BNAndPad -> dw3x3 without padding``) pads
the BN output with ``t``, the BN image of zero. Folding it into ``pw_in`` gives
``pw_in' = s W u + t`` padded with ``t``; since ``dw`` is linear,
``dw(pad_t(W' u + t)) = dw(pad_0(W' u)) + t * sum(kernel)`` per channel, so the
fold is exact as ``pw_in`` with weight ``s W`` and no bias, then ``dw`` with zero
padding and bias ``t * sum(kernel)``. ``RepConvBN`` then has two BNs in series
after ``pw_out``; both fold into it (inner first).

What does not fold stays: BN in training mode raises before anything changes (fold
after ``model.eval()``), and a BN that no pair names is left as it is (``remaining_batchnorms`` lists them;
our models have none).
"""
from __future__ import annotations

from typing import Dict, List, Tuple, Type

import torch
import torch.nn as nn

from neurons.spike_driven import batchnorm_affine

from .backbones.meta_spikeformer import BNAndPad, RepConv, RepConvBN, SepConv, SpikeConvBN
from .spike2former.pixel_decoder import ChannelMLP, MultiLevelConvBN
from .spike2former.sdme import SDME
from .spike2former.transformer_decoder import SpikingLinearBN

__all__ = ["FOLD_PAIRS", "fold_batchnorm", "remaining_batchnorms"]

# (layer, BN that the module's forward applies to that layer's output), as attribute paths.
FOLD_PAIRS: Dict[Type[nn.Module], Tuple[Tuple[str, str], ...]] = {
    SpikeConvBN: (("conv", "bn"),),  # backbone downsamples, ConvBlock MLPs, token MLPs; SpikeFPN neck and head
    SepConv: (("pw1", "bn1"), ("pw2", "bn2")),
    RepConv: (("pw_out", "bn"),),  # its BNAndPad is handled by _fold_bn_and_pad
    RepConvBN: (("repconv.pw_out", "bn"),),  # after RepConv's own BN has been folded into pw_out
    MultiLevelConvBN: (("conv", "bn"),),  # pixel decoder: ESC, SDDA, projections, laterals, FPN outputs
    ChannelMLP: (("fc1", "bn1"), ("fc2", "bn2")),
    SpikingLinearBN: (("linear", "bn"),),  # transformer decoder attention projections and FFN
    SDME: (("shortcut_conv.conv", "shortcut_conv.bn"),),
}

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _get(module: nn.Module, path: str):
    for attr in path.split("."):
        if module is None:
            return None
        module = getattr(module, attr)
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(_get(module, parent) if parent else module, attr, value)


@torch.no_grad()
def _fold_into_layer(layer: nn.Module, bn: _BatchNorm, where: str) -> None:
    """``layer`` (Conv/Linear, output channels first in its weight) absorbs the eval-mode ``bn`` in place."""
    if bn.running_var is None:
        raise ValueError(f"{where} keeps no running statistics and cannot be folded")
    if bn.num_features != layer.weight.shape[0]:
        raise ValueError(f"{where} has {bn.num_features} features, the layer has {layer.weight.shape[0]} outputs")
    scale, shift = batchnorm_affine(bn)
    layer.weight.mul_(scale.view(-1, *([1] * (layer.weight.dim() - 1))))
    bias = shift if layer.bias is None else layer.bias * scale + shift
    layer.bias = nn.Parameter(bias.to(layer.weight.dtype), requires_grad=layer.weight.requires_grad)


@torch.no_grad()
def _fold_bn_and_pad(repconv: RepConv, where: str) -> None:
    """``pw_in -> BNAndPad -> dw (no padding)`` -> ``pw_in (scaled, no bias) -> dw (zero padding, bias)``."""
    bn = repconv.bn_pad
    dw = repconv.dw
    if dw.padding != (0, 0) or dw.padding_mode != "zeros":
        raise ValueError(f"{where}.dw must be unpadded for its BNAndPad to fold")
    pw_in = repconv.pw_in
    _fold_into_layer(pw_in, bn, f"{where}.bn_pad")
    pad_value = pw_in.bias  # the folded pw_in's output for a zero input = BNAndPad's pad value
    dw_bias = pad_value * dw.weight.sum(dim=(1, 2, 3))
    if dw.bias is not None:
        dw_bias = dw_bias + dw.bias
    dw.bias = nn.Parameter(dw_bias, requires_grad=dw.weight.requires_grad)
    pw_in.bias = None
    dw.padding = (bn.pad, bn.pad)
    repconv.bn_pad = nn.Identity()


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BN of :data:`FOLD_PAIRS` into its layer, **in place**; returns ``model``.

    Folded BNs become ``nn.Identity``, so state_dict keys change: save the
    unfolded model. Modules are visited children first, so a BN that follows
    another BN (``RepConvBN``) folds after the inner one. A BatchNorm in training mode
    raises ``RuntimeError`` before anything is changed.
    """
    named = list(model.named_modules())
    training = [name for name, m in named if isinstance(m, _BatchNorm) and m.training]
    if training:
        raise RuntimeError(f"{len(training)} BatchNorm modules are in training mode (e.g. {training[0]}); "
                           "BatchNorm folds only with running statistics: call model.eval() first")
    for name, module in reversed(named):
        where = name or type(model).__name__
        if isinstance(module, RepConv) and isinstance(module.bn_pad, BNAndPad):
            _fold_bn_and_pad(module, where)
        for layer_path, bn_path in FOLD_PAIRS.get(type(module), ()):
            bn = _get(module, bn_path)
            if not isinstance(bn, _BatchNorm):  # already folded, or built without BN / without that layer
                continue
            _fold_into_layer(_get(module, layer_path), bn, f"{where}.{bn_path}")
            _set(module, bn_path, nn.Identity())
    return model


def remaining_batchnorms(model: nn.Module) -> List[str]:
    """Names of the BatchNorm modules still in ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
