r"""Fold eval-mode BatchNorm into the Conv/Linear layer that feeds it, for inference.

    model = zoo.create("spike2former_ade20k").eval()
    fold_batchnorm(model)          # in place; every BatchNorm of our modules becomes nn.Identity

An eval-mode BN is the affine map ``y = s * x + t`` per channel
(``s = gamma / sqrt(var + eps)``, ``t = beta - mean * s``). When it directly
follows a Conv/Linear ``x = W u + b``, ``y = (s W) u + (s b + t)``: one layer
with scaled weights and a new bias (:func:`neurons.spike_driven.fold_batchnorm_`, in place, so
folding a model allocates no second copy of its weights).

Which BN folds into which layer is declared by the module that owns both, beside its ``forward``:
``batchnorm_folds = (("conv", "bn"), ...)`` lists ``(layer, BN)`` attribute paths where ``forward``
applies the BN to the layer's output with nothing in between, and
``padded_batchnorm_folds = (("pw_in", "bn_pad", "dw"),)`` the padding BNs (below). Nothing is guessed
from the module tree: a BatchNorm that no module declares is an error (raised before anything
changes), so a new module cannot leave its BNs silently unfolded.

``RepConv``'s ``BNAndPad`` (``pw_in -> BNAndPad -> dw3x3 without padding``) pads
the BN output with ``t``, the BN image of zero. Folding it into ``pw_in`` gives
``pw_in' = s W u + t`` padded with ``t``; since ``dw`` is linear,
``dw(pad_t(W' u + t)) = dw(pad_0(W' u)) + t * sum(kernel)`` per channel, so the
fold is exact as ``pw_in`` with weight ``s W`` and no bias, then ``dw`` with zero
padding and bias ``t * sum(kernel)``. ``RepConvBN`` then has two BNs in series
after ``pw_out``; both fold into it (inner first).

A BN in training mode raises before anything changes (fold after ``model.eval()``).
"""
from __future__ import annotations

from typing import Iterator, List, Tuple

import torch
import torch.nn as nn

from neurons.spike_driven import fold_batchnorm_

__all__ = ["fold_batchnorm", "remaining_batchnorms", "UndeclaredBatchNormError"]

_BatchNorm = nn.modules.batchnorm._BatchNorm


class UndeclaredBatchNormError(TypeError):
    """A BatchNorm that no module's ``batchnorm_folds``/``padded_batchnorm_folds`` names."""


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
def _fold_padded(module: nn.Module, layer_path: str, bn_path: str, conv_path: str, where: str) -> None:
    """``layer -> BN padding with its own pad value -> conv (no padding)`` -> ``layer (scaled, no bias) ->
    conv (zero padding, bias)``."""
    bn, conv, layer = _get(module, bn_path), _get(module, conv_path), _get(module, layer_path)
    if conv.padding != (0, 0) or conv.padding_mode != "zeros":
        raise ValueError(f"{where}.{conv_path} must be unpadded for {where}.{bn_path} to fold")
    fold_batchnorm_(layer, bn, f"{where}.{bn_path}")
    pad_value = layer.bias  # the folded layer's output for a zero input = the BN's pad value
    conv_bias = pad_value * conv.weight.sum(dim=(1, 2, 3))
    if conv.bias is not None:
        conv_bias = conv_bias + conv.bias
    conv.bias = nn.Parameter(conv_bias, requires_grad=conv.weight.requires_grad)
    layer.bias = None
    conv.padding = (bn.pad, bn.pad)
    _set(module, bn_path, nn.Identity())


def _declared(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str, Tuple[str, ...]]]:
    """``(module name, module, kind, paths)`` for every fold a module declares, children first."""
    for name, module in reversed(list(model.named_modules())):
        for paths in getattr(module, "padded_batchnorm_folds", ()):
            yield name, module, "padded", paths
        for paths in getattr(module, "batchnorm_folds", ()):
            yield name, module, "plain", paths


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BN into the layer its module declares, **in place**; returns ``model``.

    Folded BNs become ``nn.Identity``, so state_dict keys change: save the unfolded model. Modules
    are visited children first, so a BN that follows another BN (``RepConvBN``) folds after the inner
    one. Before anything changes, a BatchNorm in training mode raises ``RuntimeError`` and one that no
    module declares raises :class:`UndeclaredBatchNormError`.
    """
    named = [(name, m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
    training = [name for name, m in named if m.training]
    if training:
        raise RuntimeError(f"{len(training)} BatchNorm modules are in training mode (e.g. {training[0]}); "
                           "BatchNorm folds only with running statistics: call model.eval() first")
    declared = {f"{name}.{paths[1]}" if name else paths[1] for name, _, _, paths in _declared(model)}
    undeclared = [name for name, _ in named if name not in declared]
    if undeclared:
        raise UndeclaredBatchNormError(
            f"{len(undeclared)} BatchNorm modules are declared by no module, e.g. {undeclared[:3]}: list each as "
            "(layer, bn) in its parent module's batchnorm_folds (zoo.fuse explains the declaration)")
    for name, module, kind, paths in _declared(model):
        where = name or type(model).__name__
        if not isinstance(_get(module, paths[1]), _BatchNorm):  # already folded, or built without this BN
            continue
        if kind == "padded":
            _fold_padded(module, *paths, where)
        else:
            layer_path, bn_path = paths
            fold_batchnorm_(_get(module, layer_path), _get(module, bn_path), f"{where}.{bn_path}")
            _set(module, bn_path, nn.Identity())
    return model


def remaining_batchnorms(model: nn.Module) -> List[str]:
    """Names of the BatchNorm modules still in ``model``."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm)]
