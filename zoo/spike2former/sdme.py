r"""SDME: spike-driven mask embedding with ME-Shortcut (paper eqs 14-15; the released head's code).

For query states ``q`` ``[L, T, B, Q, C]`` (the initial queries and every decoder
layer's output) and real-valued mask features ``P`` ``[T, B, C, H, W]``::

    z       = sigmoid(q)
    s       = alpha * SN(z)                                   (alpha = 4; {0, alpha/D} after a sigmoid)
    cls     = mean_T  Linear(C, K+1)(s)                       [L, B, Q, K+1]
    m       = fc_out(alpha * SN(fc2(alpha * SN(fc1(s)))))     (fc1, fc2 without bias)
    e       = alpha * SN(m + w * BN_Q(Conv1d_{Q->Q}(s)))      (ME-Shortcut; the conv mixes QUERIES)
    masks   = mean_T  einsum('qc,chw->qhw', e, P)             [L, B, Q, H, W]

The pixel decoder makes ``P = W x + b`` with a 1x1 conv of its last spikes ``x``; given
that conv as ``feature_projection`` (and ``x`` in place of ``P``), the product is
associated the other way, ``masks = (e W) x + e b``: the same numbers up to rounding,
without the C x C x H x W conv when ``L Q < C`` (inference: L = 1, Q = 100, C = 256).

Ablations (paper Table 3): ``me_shortcut=False`` gives the vanilla ``e = alpha * SN(m)``;
``shortcut_conv=False`` keeps the shortcut without its conv, ``e = alpha * SN(m + w * s)``.

The release computes ``alpha * SN(z)`` twice with two neuron instances (for the MLP
and for the shortcut); their outputs are identical, so ``s`` is spiked once here.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from ..hub import UnknownKeysError
from ..layers.common import NeuronFactory, neuron_factory

__all__ = ["MaskEmbeddingMLP", "SDME", "convert_official_sdme", "mask_product"]


class _MaskProduct(torch.autograd.Function):
    """``masks[l,b,q] = (1/T) sum_t e[t,l,b,q] . P[t,b] + offset[l,b,q]``; backward skips queries whose
    mask gradient is zero.

    In training only the queries matched to a ground-truth mask receive a mask loss
    (about 10-20 of 100 per image and state), so most rows of the incoming gradient
    are exactly zero. Both gradient products are formed from the non-zero rows only,
    which removes most of the largest matrix products of the training step; the
    result is the same as the dense products' (zero rows contribute exact zeros).
    """

    @staticmethod
    def forward(ctx, embedding, features, offset):
        ctx.save_for_backward(embedding, features)
        # summing over t and c at once = mean over T of the per-step mask logits
        masks = torch.einsum("tlbqc,tbchw->lbqhw", embedding, features)
        if embedding.shape[0] > 1:
            masks.div_(embedding.shape[0])
        return masks if offset is None else masks.add_(offset[..., None, None])

    @staticmethod
    def backward(ctx, grad):
        embedding, features = ctx.saved_tensors
        steps, batch, channels = features.shape[0], features.shape[1], features.shape[2]
        grad_rows = grad.flatten(3)  # [L, B, Q, HW]
        nonzero = grad_rows.abs().amax(-1) > 0  # [L, B, Q]
        grad_embedding = torch.zeros_like(embedding) if ctx.needs_input_grad[0] else None
        grad_features = torch.zeros_like(features) if ctx.needs_input_grad[1] else None
        grad_offset = grad_rows.sum(-1) if ctx.needs_input_grad[2] else None
        for b in range(batch):
            layer_idx, query_idx = nonzero[:, b].nonzero(as_tuple=True)
            if layer_idx.numel() == 0:
                continue
            # under autocast the incoming gradient may be half precision while the saved inputs are not
            rows = grad_rows[layer_idx, b, query_idx].to(features.dtype) / steps  # [n, HW]
            flat_features = features[:, b].reshape(steps, channels, -1)  # [T, C, HW]
            if grad_embedding is not None:
                grad_embedding[:, layer_idx, b, query_idx] = torch.matmul(rows, flat_features.transpose(1, 2))
            if grad_features is not None:
                selected = embedding[:, layer_idx, b, query_idx].to(features.dtype)  # [T, n, C]
                grad_features[:, b] = torch.matmul(selected.transpose(1, 2), rows).view_as(features[:, b])
        return grad_embedding, grad_features, grad_offset


def mask_product(embedding: torch.Tensor, features: torch.Tensor, offset: Optional[torch.Tensor] = None
                 ) -> torch.Tensor:
    """Mask logits ``[L, B, Q, H, W]`` = mean over T of ``einsum('lbqc,bchw->lbqhw')`` per step (+ ``offset``).

    ``embedding``: mask embeddings ``[T, L, B, Q, C]``; ``features``: mask features ``[T, B, C, H, W]``;
    ``offset``: ``[L, B, Q]``, added to every pixel of each mask.
    Under ``torch.compile`` the product is left to autograd (dense backward): the sparse backward
    selects rows by their values, which a compiled graph cannot express.
    """
    if torch.compiler.is_compiling():
        masks = torch.einsum("tlbqc,tbchw->lbqhw", embedding, features) / embedding.shape[0]
        return masks if offset is None else masks + offset[..., None, None]
    return _MaskProduct.apply(embedding, features, offset)


class MaskEmbeddingMLP(nn.Module):
    """``fc_out(alpha * SN(fc2(alpha * SN(fc1(s)))))`` on the last axis; fc1 and fc2 have no bias."""

    def __init__(self, dim: int = 256, neuron: Optional[NeuronFactory] = None, alpha: float = 4.0):
        super().__init__()
        neuron = neuron or neuron_factory()
        self.alpha = alpha
        self.fc1 = nn.Linear(dim, dim, bias=False)
        self.spike1 = neuron()
        self.fc2 = nn.Linear(dim, dim, bias=False)
        self.spike2 = neuron()
        self.fc_out = nn.Linear(dim, dim)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """``s``: spikes with the time axis first."""
        h = self.alpha * self.spike1(self.fc1(s))
        h = self.alpha * self.spike2(self.fc2(h))
        return self.fc_out(h)


class SDME(nn.Module):
    """Spike-driven mask embedding head: class logits and mask logits for every query state.

    ``forward(query_states [L, T, B, Q, C], mask_features [T, B, C, H, W], last_only=False)
    -> (class_logits [L, B, Q, K+1], mask_logits [L, B, Q, H, W])``, both averaged over T.
    ``last_only=True`` predicts from the last state only (inference) and returns L = 1;
    in eval mode it equals the last row of the full output (in training mode the
    shortcut's BatchNorm statistics would cover one state instead of all).
    """

    batchnorm_folds = (("shortcut_conv.conv", "shortcut_conv.bn"),)  # for zoo.fuse
    product_kind = "mask_einsum"  # the mask product, for zoo.complexity

    def __init__(self, dim: int = 256, num_queries: int = 100, num_classes: int = 150,
                 neuron: Optional[NeuronFactory] = None, alpha: float = 4.0, me_shortcut: bool = True,
                 shortcut_conv: bool = True):
        super().__init__()
        neuron = neuron or neuron_factory()
        self.num_queries = num_queries
        self.num_classes = num_classes
        self.alpha = alpha
        self.query_spike = neuron()
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.mask_mlp = MaskEmbeddingMLP(dim, neuron, alpha)
        self.me_shortcut = me_shortcut
        if me_shortcut and shortcut_conv:
            self.shortcut_conv = nn.Sequential(OrderedDict(
                conv=nn.Conv1d(num_queries, num_queries, kernel_size=1, bias=False),
                bn=nn.BatchNorm1d(num_queries)))
        else:
            self.shortcut_conv = None
        self.shortcut_weight = nn.Parameter(torch.ones(1)) if me_shortcut else None
        self.embed_spike = neuron()
        # initialisation of the official head
        nn.init.trunc_normal_(self.class_embed.weight, std=0.02)
        nn.init.zeros_(self.class_embed.bias)
        nn.init.trunc_normal_(self.mask_mlp.fc_out.weight, std=0.02)
        nn.init.zeros_(self.mask_mlp.fc_out.bias)

    def extra_repr(self) -> str:
        return (f"num_queries={self.num_queries}, num_classes={self.num_classes}, alpha={self.alpha}, "
                f"me_shortcut={self.me_shortcut}, shortcut_conv={self.shortcut_conv is not None}")

    def mask_embedding(self, s: torch.Tensor) -> torch.Tensor:
        """``e = alpha * SN(MLP(s) + w * BN(Conv_Q(s)))`` for spikes ``s`` ``[T, L, B, Q, C]``."""
        embedding = self.mask_mlp(s)
        if self.me_shortcut:
            shortcut = s
            if self.shortcut_conv is not None:
                # queries are the Conv1d's channels: [T*L*B, Q, C]
                shortcut = self.shortcut_conv(s.flatten(0, 2)).view_as(s)
            embedding = embedding + self.shortcut_weight * shortcut
        return self.alpha * self.embed_spike(embedding)

    def forward(self, query_states: torch.Tensor, mask_features: torch.Tensor, last_only: bool = False,
                feature_projection: Optional[nn.Conv2d] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``feature_projection``: the 1x1 conv that would make ``mask_features`` from the given
        tensor; it is then applied to the embeddings instead (``(e W) x + e b``, see the module doc)."""
        if query_states.dim() != 5 or query_states.shape[3] != self.num_queries:
            raise ValueError(f"query_states must be [L, T, B, {self.num_queries}, C], "
                             f"got {tuple(query_states.shape)}")
        if mask_features.dim() != 5 or mask_features.shape[:2] != query_states.shape[1:3]:
            raise ValueError(f"mask_features must be [T, B, C, H, W] with the T, B of query_states, "
                             f"got {tuple(mask_features.shape)}")
        if last_only:
            query_states = query_states[-1:]
        # time leads for the neurons: [T, L, B, Q, C]
        s = self.alpha * self.query_spike(torch.sigmoid(query_states).transpose(0, 1))
        class_logits = self.class_embed(s).mean(0)
        embedding = self.mask_embedding(s)
        if feature_projection is None:
            return class_logits, mask_product(embedding, mask_features)
        weight, bias = feature_projection.weight.flatten(1), feature_projection.bias  # [C, C_in], [C]
        offset = None if bias is None else (embedding @ bias.to(embedding.dtype)).mean(0)  # [L, B, Q]
        return class_logits, mask_product(embedding @ weight.to(embedding.dtype), mask_features, offset)

    @staticmethod
    def projection_first_is_cheaper(states: int, queries: int, channels: int, in_channels: int) -> bool:
        """Whether ``(e W) x`` costs fewer multiply-adds per pixel than ``e (W x)`` for ``states`` states."""
        return states * queries * in_channels < channels * in_channels + states * queries * channels


# The official decode_head modules (a key's first name) that make up the SDME.
OFFICIAL_SDME_ROOTS = ("cls_embed", "mask_embed", "shortcut_conv", "w")
_OFFICIAL_SDME_KEY = re.compile(r"(cls_embed|mask_embed|shortcut_conv\.[01]|w)(\..+)?")
_OFFICIAL_SDME_MODULES = {
    "cls_embed": "class_embed",
    "mask_embed": "mask_mlp",
    "shortcut_conv.0": "shortcut_conv.conv",
    "shortcut_conv.1": "shortcut_conv.bn",
    "w": "shortcut_weight",
}


def convert_official_sdme(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official ``decode_head.`` keys (prefix stripped) -> :class:`SDME` keys (default config).

    Only ``cls_embed.*``, ``mask_embed.*``, ``shortcut_conv.*`` and ``w`` are taken; the
    keys of the other modules (pixel decoder, transformer decoder) are ignored, and a key of
    these modules that the official SDME does not have raises :class:`~zoo.hub.UnknownKeysError`.
    The official layers have the same types and shapes as ours (Linear MLP, Conv1d 1x1 +
    BatchNorm1d over queries), so values are passed through.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        match = _OFFICIAL_SDME_KEY.fullmatch(key)
        if match:
            module, rest = match.groups()
            converted[_OFFICIAL_SDME_MODULES[module] + (rest or "")] = value
        elif key.split(".", 1)[0] in OFFICIAL_SDME_ROOTS:
            unknown.append(key)
    if unknown:
        raise UnknownKeysError("an official SDME", unknown)
    return converted
