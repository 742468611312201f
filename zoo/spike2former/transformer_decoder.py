r"""Spike-driven transformer decoder (SDTD) of Spike2Former.

Token tensors are ``[T, B, N, C]``; ``SN`` is one neuron of the ``neuron`` factory.

SDSA / SDCA (paper eqs 12-13; one class, :class:`SpikeDrivenAttention`)::

    Q, K, V = SN(BN(W_q SN(query))), SN(BN(W_k SN(key))), SN(BN(W_v SN(value)))
    head h reads channels h*d .. h*d + d-1                  (d = C / heads)
    A_h     = (Q_h K_h^T) V_h / sqrt(C)  =  Q_h (K_h^T V_h) / sqrt(C)   (no softmax)
    out     = BN(W_o SN(concat_h A_h))

SDTD layer (eqs 9-11, order of the official code: cross, self, FFN; no norm)::

    q = q + SDCA(q + q_pos, F + F_pos, F)
    q = q + SDSA(q + q_pos, q + q_pos, q)
    q = q + FFN(q),        FFN(x) = BN(W_2 SN(BN(W_1 SN(x))))   per query

The 1x1 Conv1d projections of the release are ``nn.Linear`` here: on
channels-last tokens a Linear followed by BatchNorm1d over the flattened tokens
computes exactly Conv1d + BatchNorm1d on ``[T*B, C, N]`` without two transposed
copies per projection. :func:`convert_official_decoder` drops the trailing 1 of
the official ``[out, in, 1]`` weights.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..execution import PRODUCT_ORDERS
from ..hub import UnknownKeysError
from ..layers.common import NeuronFactory, neuron_factory
from ..layers.position import SinePositionalEncoding

__all__ = [
    "SpikingLinearBN", "SpikeDrivenAttention", "spike_driven_attention_product", "SpikingFFN",
    "SDTDLayer", "SpikeTransformerDecoder", "convert_official_decoder",
]



class SpikingLinearBN(nn.Module):
    """``y = BN(W SN(x) + b)`` on tokens ``[T, B, N, C_in] -> [T, B, N, C_out]``.

    BatchNorm1d runs on the tokens flattened to ``[T*B*N, C_out]``: the same statistics
    as the official BatchNorm1d over ``[T*B, C_out, N]``.
    """

    batchnorm_folds = (("linear", "bn"),)  # zoo.fuse folds the BN into the linear layer

    def __init__(self, in_channels: int, out_channels: int, neuron: NeuronFactory):
        super().__init__()
        self.spike = neuron()
        self.linear = nn.Linear(in_channels, out_channels)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(self.spike(x))
        return self.bn(y.flatten(0, -2)).view_as(y)


def spike_driven_attention_product(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                                   order: str = "auto") -> torch.Tensor:
    r"""``(Q K^T) V * scale`` over the last two axes (``[..., n, d]``), without softmax.

    Without softmax the product is associative, so ``Q (K^T V)`` gives the same result.
    Per head, ``(Q K^T) V`` costs ``2 n_q n_k d`` multiply-adds and ``Q (K^T V)`` costs
    ``(n_q + n_k) d^2``; ``order='auto'`` picks the cheaper one. In Spike2Former
    (d = 32) that is ``Q (K^T V)`` both for cross-attention (100 queries, 1k-16k
    memory tokens) and for self-attention (n_q = n_k = 100 > d).
    """
    n_q, d = q.shape[-2:]
    n_k = k.shape[-2]
    if order == "auto":
        order = "kv_first" if (n_q + n_k) * d < 2 * n_q * n_k else "qk_first"
    if order == "kv_first":
        return q @ (k.transpose(-2, -1) @ v * scale)
    if order == "qk_first":
        return (q @ k.transpose(-2, -1) * scale) @ v
    raise ValueError(f"order must be one of {PRODUCT_ORDERS}, got {order!r}")


class SpikeDrivenAttention(nn.Module):
    r"""Spike-driven multi-head attention: SDSA (``query = key``) and SDCA alike.

    .. math::

        Q = SN(BN(W_q SN(x_q))),\ K = SN(BN(W_k SN(x_k))),\ V = SN(BN(W_v SN(x_v))) \\
        \mathrm{out} = BN(W_o\, SN(\operatorname{concat}_h\, Q_h K_h^T V_h / \sqrt{C}))

    The scale is :math:`1/\sqrt{C}` of the full width (1/16 for C = 256), not per head,
    as in the official code. ``product_order`` selects how :math:`Q K^T V` is
    multiplied (see :func:`spike_driven_attention_product`).
    """

    product_kind = "attention_product"  # zoo.complexity counts its Q K^T / K^T V products so

    def __init__(self, dim: int = 256, num_heads: int = 8, neuron: Optional[NeuronFactory] = None,
                 product_order: str = "auto"):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        if product_order not in PRODUCT_ORDERS:
            raise ValueError(f"product_order must be one of {PRODUCT_ORDERS}, got {product_order!r}")
        neuron = neuron or neuron_factory()
        self.num_heads = num_heads
        self.scale = dim ** -0.5
        self.product_order = product_order
        self.q_proj, self.q_spike = SpikingLinearBN(dim, dim, neuron), neuron()
        self.k_proj, self.k_spike = SpikingLinearBN(dim, dim, neuron), neuron()
        self.v_proj, self.v_spike = SpikingLinearBN(dim, dim, neuron), neuron()
        self.out_proj = SpikingLinearBN(dim, dim, neuron)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, scale={self.scale:.6g}, product_order={self.product_order}"

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, N, C] -> [T, B, heads, N, d]; channel c = head * d + j."""
        return x.unflatten(-1, (self.num_heads, -1)).transpose(2, 3)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """query ``[T, B, Nq, C]``, key and value ``[T, B, Nk, C]`` -> ``[T, B, Nq, C]``."""
        q = self._split_heads(self.q_spike(self.q_proj(query)))
        k = self._split_heads(self.k_spike(self.k_proj(key)))
        v = self._split_heads(self.v_spike(self.v_proj(value)))
        heads = spike_driven_attention_product(q, k, v, self.scale, self.product_order)
        return self.out_proj(heads.transpose(2, 3).flatten(3))


class SpikingFFN(nn.Module):
    r"""Decoder FFN: ``BN(W_2 SN(BN(W_1 SN(x))))`` per query, ``[T, B, N, C] -> [T, B, N, C]``.

    ``official=True`` reproduces trap R2 of the release, which reads the token tensor
    with raw reshapes instead of permutes (so the "FFN" mixes queries and channels)::

        h = SN(x).reshape(T, B, C, N)          # read as channels-first [C, N]
        y = BN(W_2 SN(BN(W_1 h)))              # Conv1d over that C axis -> [T*B, C, N]
        return y.reshape(T, B, N, C)
    """

    def __init__(self, dim: int = 256, hidden_channels: int = 2048, neuron: Optional[NeuronFactory] = None,
                 official: bool = False):
        super().__init__()
        neuron = neuron or neuron_factory()
        self.official = official
        self.fc1 = SpikingLinearBN(dim, hidden_channels, neuron)
        self.fc2 = SpikingLinearBN(hidden_channels, dim, neuron)

    def extra_repr(self) -> str:
        return f"official={self.official}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.official:
            return self.fc2(self.fc1(x))
        t, b, n, c = x.shape
        # The neuron is elementwise and keeps the T axis, so reshaping before it
        # equals the release's reshape after it.
        channels_first = x.reshape(t, b, c, n)
        y = self.fc2(self.fc1(channels_first.transpose(-2, -1)))
        return y.transpose(-2, -1).reshape(t, b, n, c)


class SDTDLayer(nn.Module):
    r"""One spike-driven transformer decoder layer (no norm, no layer scale):

    .. math::

        q &\leftarrow q + \mathrm{SDCA}(q + q_{pos},\ F + F_{pos},\ F) \\
        q &\leftarrow q + \mathrm{SDSA}(q + q_{pos},\ q + q_{pos},\ q) \\
        q &\leftarrow q + \mathrm{FFN}(q)
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, ffn_channels: int = 2048,
                 neuron: Optional[NeuronFactory] = None, official: bool = False):
        super().__init__()
        neuron = neuron or neuron_factory()
        self.cross_attn = SpikeDrivenAttention(dim, num_heads, neuron)
        self.self_attn = SpikeDrivenAttention(dim, num_heads, neuron)
        self.ffn = SpikingFFN(dim, ffn_channels, neuron, official)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, query_pos: torch.Tensor,
                memory_pos: torch.Tensor) -> torch.Tensor:
        """query ``[T, B, Q, C]``, memory ``[T, B, N, C]``; positions broadcast to them."""
        query = query + self.cross_attn(query + query_pos, memory + memory_pos, memory)
        query_in = query + query_pos
        query = query + self.self_attn(query_in, query_in, query)
        return query + self.ffn(query)


class SpikeTransformerDecoder(nn.Module):
    r"""SDTD: learned queries refined by a stack of ``num_layers`` :class:`SDTDLayer`.

    Layer ``i`` attends to level ``i % num_levels`` of the pixel decoder's features
    (strides 16, 8, 4 in Spike2Former; no mask attention). Each level becomes tokens
    with its level embedding added to both keys and values; keys also get the sine
    positional encoding (``dim / 2`` features per axis)::

        F_l     = flatten(features[l]) + level_embed[l]                 [T, B, h_l w_l, C]
        F_pos_l = SinePE(h_l, w_l)                                       [h_l w_l, C]
        q_0     = query_feat,  q_pos = query_pos                         [Q, C]
        q_{i+1} = SDTDLayer_i(q_i, F_{i % levels}, q_pos, F_pos_{i % levels})

    ``forward`` returns every query state ``[q_0, ..., q_L]`` stacked: ``[L+1, T, B, Q, C]``.
    ``official=True`` only switches the FFNs to the release's raw reshapes (trap R2).
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_layers: int = 6, ffn_channels: int = 2048,
                 num_queries: int = 100, num_levels: int = 3, neuron: Optional[NeuronFactory] = None,
                 official: bool = False):
        super().__init__()
        neuron = neuron or neuron_factory()
        self.dim = dim
        self.num_levels = num_levels
        self.layers = nn.ModuleList(
            SDTDLayer(dim, num_heads, ffn_channels, neuron, official) for _ in range(num_layers))
        self.query_feat = nn.Embedding(num_queries, dim)
        self.query_pos = nn.Embedding(num_queries, dim)
        self.level_embed = nn.Embedding(num_levels, dim)
        self.position_encoding = SinePositionalEncoding(num_feats=dim // 2, normalize=True)
        for p in self.layers.parameters():  # the official head's init of its decoder layers
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _memory_tokens(self, feature: torch.Tensor, level: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """[T, B, C, h, w] -> (tokens + level embedding [T, B, h*w, C], sine PE [h*w, C])."""
        tokens = feature.flatten(3).transpose(2, 3) + self.level_embed.weight[level]
        height, width = feature.shape[-2:]
        pos = self.position_encoding(height, width, feature.device, feature.dtype)
        return tokens, pos.flatten(1).t()

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """``features``: ``num_levels`` maps ``[T, B, C, h, w]`` (coarsest first) -> ``[L+1, T, B, Q, C]``."""
        if len(features) != self.num_levels:
            raise ValueError(f"expected {self.num_levels} feature levels, got {len(features)}")
        for feature in features:
            if feature.dim() != 5 or feature.shape[2] != self.dim:
                raise ValueError(f"features must be [T, B, {self.dim}, h, w], got {tuple(feature.shape)}")
        memories = [self._memory_tokens(feature, level) for level, feature in enumerate(features)]
        time_steps, batch = features[0].shape[:2]
        query = self.query_feat.weight.expand(time_steps, batch, -1, -1)
        states: List[torch.Tensor] = [query]
        for i, layer in enumerate(self.layers):
            memory, memory_pos = memories[i % self.num_levels]
            query = layer(query, memory, self.query_pos.weight, memory_pos)
            states.append(query)
        return torch.stack(states)


_OFFICIAL_ATTENTION_KEY = re.compile(
    r"transformer_decoder\.layers\.(\d+)\.(self_attn|cross_attn)\.attn\.(q|k|v|out)_conv\.([01])\.(\w+)")
_OFFICIAL_FFN_KEY = re.compile(r"transformer_decoder\.layers\.(\d+)\.ffn\.(fc|bn)([12])\.(\w+)")
# The official decode_head modules (a key's first name) that make up the transformer decoder.
OFFICIAL_DECODER_ROOTS = ("transformer_decoder", "query_feat", "query_embed", "level_embed")
_OFFICIAL_EMBEDDINGS = {
    "query_feat.weight": "query_feat.weight",
    "query_embed.weight": "query_pos.weight",
    "level_embed.weight": "level_embed.weight",
}


def _conv1x1_to_linear(weight: torch.Tensor) -> torch.Tensor:
    """Conv1d 1x1 weight ``[out, in, 1]`` -> Linear weight ``[out, in]``."""
    if weight.dim() != 3 or weight.shape[-1] != 1:
        raise ValueError(f"expected a Conv1d 1x1 weight [out, in, 1], got {tuple(weight.shape)}")
    return weight[..., 0]


def convert_official_decoder(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official ``decode_head.`` keys (prefix stripped) -> :class:`SpikeTransformerDecoder` keys.

    Keys of other modules (pixel decoder, SDME) are ignored; unknown keys under
    ``transformer_decoder.`` or the query and level embeddings raise
    :class:`~zoo.hub.UnknownKeysError` (a ``KeyError``) naming all of them.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        attention = _OFFICIAL_ATTENTION_KEY.fullmatch(key)
        ffn = _OFFICIAL_FFN_KEY.fullmatch(key)
        if key in _OFFICIAL_EMBEDDINGS:
            converted[_OFFICIAL_EMBEDDINGS[key]] = value
        elif attention:
            layer, which, proj, index, name = attention.groups()
            part = "linear" if index == "0" else "bn"
            is_conv_weight = part == "linear" and name == "weight"
            converted[f"layers.{layer}.{which}.{proj}_proj.{part}.{name}"] = (
                _conv1x1_to_linear(value) if is_conv_weight else value)
        elif ffn:
            layer, kind, number, name = ffn.groups()
            part = "linear" if kind == "fc" else "bn"
            is_conv_weight = part == "linear" and name == "weight"
            converted[f"layers.{layer}.ffn.fc{number}.{part}.{name}"] = (
                _conv1x1_to_linear(value) if is_conv_weight else value)
        elif key.split(".", 1)[0] in OFFICIAL_DECODER_ROOTS:
            unknown.append(key)
    if unknown:
        raise UnknownKeysError("an official transformer decoder", unknown)
    return converted
