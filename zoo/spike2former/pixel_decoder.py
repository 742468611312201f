r"""Spike2Former's pixel decoder: SDTE encoder (ESC + SDDA + Channel-MLP) and a spiking FPN.

Paper: Lei et al., Spike2Former, AAAI 2025, eqs. 1-8. Official code:
``DCNTransformerEncoderPixelDecoder`` and ``DCNv3_pytorch``.

Layout. Maps are ``[T, B, C, H, W]``. Inside the encoder the features are
*tokens* ``[T, B, C, N]`` together with ``shapes``, the ``(H, W)`` of each
pyramid level whose flattened maps are concatenated along ``N`` (Mask2Former's
``spatial_shapes`` convention). With a single level (the paper's design) a
token tensor is a view of the map. Spikes ("SN", one call of the neuron
factory) and BatchNorm see all tokens at once; k x k convolutions run level by
level. Every neuron is called once per forward; the model that owns this
decoder resets them before each forward.

``official=True`` reproduces two raw reshapes of the released code so that its
checkpoints give its outputs (trap R1: Channel-MLP output; trap R3: SDDA offset
and attention-weight conv outputs). The default uses the correct permutes.
"""
from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from zoo.hub import UnknownKeysError
from zoo.layers.common import NeuronFactory, neuron_factory

__all__ = ["MultiLevelConvBN", "ESC", "SDDA", "ChannelMLP", "SDTELayer", "SpikePixelDecoder",
           "deformable_sample", "kernel_points", "tokens_last", "convert_official_pixel_decoder"]

Shapes = Sequence[Tuple[int, int]]


def split_levels(tokens: torch.Tensor, shapes: Shapes) -> List[torch.Tensor]:
    """Tokens ``[..., N]`` -> one map ``[..., H, W]`` per level."""
    sizes = [h * w for h, w in shapes]
    return [t.unflatten(-1, hw) for t, hw in zip(tokens.split(sizes, dim=-1), shapes)]


def cat_levels(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Maps ``[..., H, W]`` -> tokens ``[..., N]`` (a view when there is one map)."""
    if len(maps) == 1:
        return maps[0].flatten(-2)
    return torch.cat([m.flatten(-2) for m in maps], dim=-1)


def caffe2_xavier_(conv: nn.Conv2d) -> None:
    """Detectron2/mmcv ``caffe2_xavier_init``: uniform fan-in init with a=1, zero bias."""
    nn.init.kaiming_uniform_(conv.weight, a=1)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class MultiLevelConvBN(nn.Module):
    r"""``BN(Conv(SN(x)))`` applied frame by frame.

    ``neuron=None`` drops the SN (the input is already spikes); ``norm=False``
    drops the BN. ``forward(x)`` takes a map ``[T, B, C, H, W]``;
    ``forward(x, shapes)`` takes tokens ``[T, B, C, N]`` of the levels ``shapes``.
    """

    # (layer, the BatchNorm that forward applies to its output): zoo.fuse folds each pair for inference
    batchnorm_folds = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, *,
                 neuron: Optional[NeuronFactory], groups: int = 1, bias: bool = False,
                 norm: bool = True):
        super().__init__()
        self.spike = neuron() if neuron is not None else nn.Identity()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                              groups=groups, bias=bias)
        self.bn = nn.BatchNorm2d(out_channels) if norm else nn.Identity()

    def forward(self, x: torch.Tensor, shapes: Optional[Shapes] = None) -> torch.Tensor:
        x = self.spike(x)
        frames = x.flatten(0, 1)
        if shapes is None:
            y = self.bn(self.conv(frames))
        else:
            if self.conv.kernel_size == (1, 1):  # pointwise: all levels' tokens in one call
                y = self.conv(frames.unsqueeze(2))
            else:
                y = cat_levels([self.conv(m) for m in split_levels(frames, shapes)]).unsqueeze(2)
            y = self.bn(y).squeeze(2)  # BN statistics over the tokens of every level
        return y.unflatten(0, x.shape[:2])


class ESC(nn.Module):
    r"""Efficient separable convolution (paper eqs. 1-3, with a BN after each conv).

    .. math::

        x_1 &= \mathrm{BN}(\mathrm{PWConv}_{C \to rC}(\mathrm{SN}(x))) \\
        x_2 &= \mathrm{BN}(\mathrm{DWConv}_{k \times k}(\mathrm{SN}(x_1))) \\
        \mathrm{ESC}(x) &= \mathrm{BN}(\mathrm{PWConv}_{rC \to C}(\mathrm{SN}(x_2)))

    No conv has a bias; ``r`` is ``expansion`` (2). Input and output are tokens
    ``[T, B, C, N]`` of the levels ``shapes`` (the depth-wise conv runs per level).
    """

    def __init__(self, channels: int, kernel_size: int = 3, expansion: int = 2, *,
                 neuron: NeuronFactory):
        super().__init__()
        hidden = channels * expansion
        self.pw1 = MultiLevelConvBN(channels, hidden, 1, neuron=neuron)
        self.dw = MultiLevelConvBN(hidden, hidden, kernel_size, groups=hidden, neuron=neuron)
        self.pw2 = MultiLevelConvBN(hidden, channels, 1, neuron=neuron)

    def forward(self, x: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        return self.pw2(self.dw(self.pw1(x, shapes), shapes), shapes)


def kernel_points(kernel_size: int, device=None, dtype=None) -> torch.Tensor:
    """The ``k*k`` regular offsets ``(dx, dy)`` around a pixel, in the released code's order.

    Point ``p`` is ``(p // k - k // 2, p % k - k // 2)``: x is the outer index
    (DCNv3 builds the grid with ``meshgrid`` over ``(x, y)``), so checkpoints
    trained with it keep their meaning.
    """
    r = torch.arange(kernel_size, device=device, dtype=dtype) - kernel_size // 2
    dx, dy = torch.meshgrid(r, r, indexing="ij")
    return torch.stack((dx.reshape(-1), dy.reshape(-1)), dim=-1)


def _reference_points(shapes: Shapes, device, dtype) -> torch.Tensor:
    """Pixel centres of every token, ``[N, 2]`` as ``(x, y)`` in [0, 1] of its own level."""
    refs = []
    for h, w in shapes:
        y, x = torch.meshgrid((torch.arange(h, device=device, dtype=dtype) + 0.5) / h,
                              (torch.arange(w, device=device, dtype=dtype) + 0.5) / w, indexing="ij")
        refs.append(torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1))
    return torch.cat(refs)


def deformable_sample(values: torch.Tensor, shapes: Shapes, offsets: torch.Tensor,
                      weights: torch.Tensor, kernel_size: int = 3) -> torch.Tensor:
    r"""The deformable aggregation of eq. 4 (without the output projection).

    .. math::

        y_g(p_0) = \sum_{l} \sum_{k} A_{glk}(p_0)\, v_{gl}(\phi_l(p_0) + p_k + \Delta p_{glk}(p_0))

    - ``values``: ``[N, C, M]`` tokens of the levels ``shapes``; group ``g``
      owns channels ``g*C/G .. (g+1)*C/G``.
    - ``offsets``: ``[N, Q, G, L, P, 2]``, ``(dx, dy)`` in pixels of the
      sampled level ``l``; ``weights``: ``[N, Q, G, L, P]`` (used as given, no softmax).
    - ``Q`` queries are the tokens of ``shapes`` too; :math:`\phi_l(p_0)` maps a
      query's pixel centre to level ``l`` (the identity for its own level) and
      :math:`p_k` runs over :func:`kernel_points`.

    Sampling is bilinear with zeros outside the map (``grid_sample``,
    ``align_corners=False``). Returns ``[N, C, Q]``.
    """
    n, channels, _ = values.shape
    _, queries, groups, levels, points, _ = offsets.shape
    if levels != len(shapes) or points != kernel_size ** 2:
        raise ValueError(f"offsets {tuple(offsets.shape)} do not fit {len(shapes)} level(s) "
                         f"and a {kernel_size}x{kernel_size} kernel")
    reference = _reference_points(shapes, values.device, values.dtype)[:, None, None]  # [Q, 1, 1, 2]
    regular = kernel_points(kernel_size, values.device, values.dtype)  # [P, 2]
    out = values.new_zeros(n * groups, channels // groups, queries)
    for level, (value_map, (h, w)) in enumerate(zip(split_levels(values, shapes), shapes)):
        size = values.new_tensor([w, h])
        # normalised location = pixel centre of the query + (regular point + offset) in this level's pixels
        location = reference + (regular + offsets[:, :, :, level]) / size  # [N, Q, G, P, 2]
        grid = (2 * location - 1).transpose(1, 2).flatten(0, 1)  # [N*G, Q, P, 2]
        sampled = F.grid_sample(value_map.reshape(n * groups, channels // groups, h, w), grid,
                                mode="bilinear", padding_mode="zeros", align_corners=False)
        weight = weights[:, :, :, level].transpose(1, 2).reshape(n * groups, 1, queries, points)
        out = out + (sampled * weight).sum(-1)
    return out.view(n, channels, queries)


def tokens_last(y: torch.Tensor, official: bool) -> torch.Tensor:
    """``[T, B, K, N]`` conv output -> ``[T, B, N, K]`` (one K-vector per token).

    ``official=True`` reinterprets the channel-first memory instead of permuting
    it, as the released SDDA does (trap R3: element ``(n, k)`` is the flat
    element ``n*K + k`` of each frame's ``[K, N]`` block).
    """
    if official:
        return y.reshape(*y.shape[:2], y.shape[3], y.shape[2])
    return y.transpose(2, 3)


class SDDA(nn.Module):
    r"""Spike-driven deformable attention (paper eqs. 4-8; DCNv3 with spikes).

    .. math::

        v &= \mathrm{ESC}_{5 \times 5}(x) \quad (W'_g x, \text{real-valued, not spiked}) \\
        x' &= \mathrm{SN}(\mathrm{BN}(\mathrm{DWConv}_{5 \times 5}(\mathrm{SN}(x))))   && (6) \\
        A &= \mathrm{SN}(\mathrm{BN}(\mathrm{Conv}_{1 \times 1}(x')))  && (7) \\
        \Delta p &= \mathrm{BN}(\mathrm{Conv}_{1 \times 1}(x'))  && (8) \\
        \mathrm{SDDA}(x) &= \mathrm{ESC}_{5 \times 5}\Big(\textstyle\sum_k A_{gk}\,
            v_g(p_0 + p_k + \Delta p_{gk})\Big)  && (4, 5)

    ``groups`` groups (32 of 8 channels at C=256), a ``kernel_size`` x
    ``kernel_size`` grid of sampling points (3x3), offsets in pixels (offset
    scale 1). The attention weights are spikes in ``{0, 1/D, ..., 1}`` with no
    softmax, so every product in the aggregation is spike x real. The offset
    and attention-weight convs start at zero.

    ``spike_query=True`` is the paper's "spiking the query" ablation: the map
    that eq. 4 samples, :math:`v = W'_g x` (the projected query), goes through
    an SN, and the attention weights stay real (``BN`` output, no SN, no
    softmax); products are still spike x real, with the spikes moved from
    :math:`A` to the sampled features.

    ``num_levels > 1`` (the multi-scale-query ablation): offsets and weights are
    predicted for every level, and each query samples its ``k*k`` points on
    each level around its own centre (:func:`deformable_sample`).
    """

    def __init__(self, channels: int = 256, groups: int = 32, kernel_size: int = 3,
                 dw_kernel_size: int = 5, expansion: int = 2, num_levels: int = 1, *,
                 neuron: NeuronFactory, spike_query: bool = False, official: bool = False):
        super().__init__()
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        self.groups, self.kernel_size, self.num_levels = groups, kernel_size, num_levels
        self.spike_query, self.official = spike_query, official
        points = groups * num_levels * kernel_size ** 2
        self.value_proj = ESC(channels, dw_kernel_size, expansion, neuron=neuron)
        self.dw = MultiLevelConvBN(channels, channels, dw_kernel_size, groups=channels, neuron=neuron)
        self.offset_spike = neuron()
        self.offset = MultiLevelConvBN(channels, 2 * points, 1, neuron=None, bias=True)
        self.attn_weight = MultiLevelConvBN(channels, points, 1, neuron=None, bias=True)
        if spike_query:
            self.value_spike = neuron()
        else:
            self.weight_spike = neuron()
        self.output_proj = ESC(channels, dw_kernel_size, expansion, neuron=neuron)
        for conv in (self.offset.conv, self.attn_weight.conv):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        T, B, _, N = x.shape
        values = self.value_proj(x, shapes)
        x_prime = self.offset_spike(self.dw(x, shapes))  # eq. 6, spiked for eqs. 7-8
        offsets = tokens_last(self.offset(x_prime, shapes), self.official)
        weights = tokens_last(self.attn_weight(x_prime, shapes), self.official)
        if self.spike_query:
            values = self.value_spike(values)
        else:
            weights = self.weight_spike(weights)
        k2 = self.kernel_size ** 2
        sampled = deformable_sample(
            values.flatten(0, 1), shapes,
            offsets.reshape(T * B, N, self.groups, self.num_levels, k2, 2),
            weights.reshape(T * B, N, self.groups, self.num_levels, k2), self.kernel_size)
        return self.output_proj(sampled.unflatten(0, (T, B)), shapes)


class ChannelMLP(nn.Module):
    r"""Channel-MLP over tokens: ``BN(Conv1d(SN(BN(Conv1d(SN(x))))))``, C -> hidden -> C.

    Both Conv1d (kernel 1) have biases. ``official=True`` reinterprets the
    ``[C, N]`` output of each frame as ``[N, C]`` instead of keeping it (trap R1).
    """

    batchnorm_folds = (("fc1", "bn1"), ("fc2", "bn2"))

    def __init__(self, channels: int = 256, hidden_channels: int = 1024, *,
                 neuron: NeuronFactory, official: bool = False):
        super().__init__()
        self.official = official
        self.fc1_spike = neuron()
        self.fc1 = nn.Conv1d(channels, hidden_channels, 1)
        self.bn1 = nn.BatchNorm1d(hidden_channels)
        self.fc2_spike = neuron()
        self.fc2 = nn.Conv1d(hidden_channels, channels, 1)
        self.bn2 = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, C, N = x.shape
        h = self.bn1(self.fc1(self.fc1_spike(x).flatten(0, 1))).unflatten(0, (T, B))
        y = self.bn2(self.fc2(self.fc2_spike(h).flatten(0, 1)))  # [T*B, C, N]
        if self.official:
            return y.reshape(T, B, N, C).transpose(2, 3)
        return y.reshape(T, B, C, N)


class SDTELayer(nn.Module):
    r"""One spike-driven transformer encoder layer, with layer scales (init 1e-6):

    .. math::

        q &\leftarrow q + \gamma_1 \odot \mathrm{ESC}_{3 \times 3}(q) \\
        q &\leftarrow q + \gamma_2 \odot \mathrm{SDDA}(q) \\
        q &\leftarrow q + \gamma_3 \odot \mathrm{ChannelMLP}(q)

    on tokens ``[T, B, C, N]`` of the levels ``shapes``; :math:`\gamma_i \in \mathbb{R}^C`.
    """

    def __init__(self, channels: int = 256, ffn_channels: int = 1024, groups: int = 32,
                 num_levels: int = 1, *, neuron: NeuronFactory, spike_query: bool = False,
                 official: bool = False, layer_scale: float = 1e-6):
        super().__init__()
        self.esc = ESC(channels, 3, neuron=neuron)
        self.sdda = SDDA(channels, groups, num_levels=num_levels, neuron=neuron,
                         spike_query=spike_query, official=official)
        self.mlp = ChannelMLP(channels, ffn_channels, neuron=neuron, official=official)
        self.gamma1 = nn.Parameter(torch.full((channels,), layer_scale))
        self.gamma2 = nn.Parameter(torch.full((channels,), layer_scale))
        self.gamma3 = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, q: torch.Tensor, shapes: Shapes) -> torch.Tensor:
        q = q + self.gamma1[:, None] * self.esc(q, shapes)
        q = q + self.gamma2[:, None] * self.sdda(q, shapes)
        return q + self.gamma3[:, None] * self.mlp(q)


class SpikePixelDecoder(nn.Module):
    r"""Spike2Former's pixel decoder (official ``DCNTransformerEncoderPixelDecoder``).

    ``forward([x1, x2, x3, x4])`` (strides 2, 4, 8, 16; ``[T, B, C_i, H_i, W_i]``)::

        y16 = BN(Conv1x1(SN(SDTE^L(BN(Conv1x1_{C4->C}(SN(x4)))))))        # single-scale queries
        for x in (x3, x2, x1):                                             # top-down FPN
            y = BN(Conv1x1_{Ci->C}(SN(x))) + upsample_bilinear(y)
            y = BN(DWConv3x3(SN(y)))                                       # -> y8, y4, y2
        mask_features = Conv1x1(SN(y2))                                    # bias, no BN
        return mask_features, [y16, y8, y4]

    ``forward(features, project_mask_features=False)`` returns ``SN(y2)`` in place of
    the mask features, for a caller that applies ``mask_feature.conv`` itself
    (the SDME associates it with the mask embeddings at inference).

    Laterals and projections have biases; depth-wise output convs do not.
    ``neuron=None`` uses ``neuron_factory("nilif")`` (D=4), or the released
    code's neuron (D=8, no leak) when ``official=True``.

    Ablations (paper Table 3):

    - ``use_sdte=False`` ("w/o SDTE"): no encoder layers. What remains is a
      spiking FPN: the SN-Conv1x1-BN projection of x4 to C channels and the
      SN-Conv1x1-BN output projection (y16), the same top-down path and mask
      feature conv.
    - ``spike_query=True``: see :class:`SDDA`.
    - ``multi_scale_queries=True``: as Mask2Former's pixel decoder, the encoder
      takes the three coarsest levels (x4, x3, x2 at 1/16, 1/8, 1/4) as
      queries: each gets its own SN-Conv1x1-BN input projection plus a learned
      level embedding; the tokens of all levels go through the same SDTE layers
      (shared weights, one BN statistic over all tokens) and every query's SDDA
      samples 3x3 points on each of the three levels; each level gets its own
      SN-Conv1x1-BN output projection (y16, y8, y4). The FPN then only adds x1.
    """

    def __init__(self, in_channels: Sequence[int] = (32, 64, 128, 360), feat_channels: int = 256,
                 num_encoder_layers: int = 6, ffn_channels: int = 1024, groups: int = 32,
                 neuron: Optional[NeuronFactory] = None, official: bool = False,
                 use_sdte: bool = True, spike_query: bool = False,
                 multi_scale_queries: bool = False):
        super().__init__()
        if neuron is None:
            neuron = neuron_factory("official" if official else "nilif")
        self.in_channels = tuple(in_channels)
        num_levels = 3 if multi_scale_queries else 1
        self.num_fpn_inputs = len(self.in_channels) - num_levels
        encoder_inputs = self.in_channels[self.num_fpn_inputs:][::-1]  # coarsest first
        C = feat_channels
        self.input_projs = nn.ModuleList(
            MultiLevelConvBN(c, C, 1, neuron=neuron, bias=True) for c in encoder_inputs)
        if multi_scale_queries:
            self.level_embed = nn.Parameter(torch.randn(num_levels, C))
        else:
            self.register_parameter("level_embed", None)
        self.encoder = nn.ModuleList(
            SDTELayer(C, ffn_channels, groups, num_levels, neuron=neuron,
                      spike_query=spike_query, official=official)
            for _ in range(num_encoder_layers if use_sdte else 0))
        self.output_projs = nn.ModuleList(
            MultiLevelConvBN(C, C, 1, neuron=neuron, bias=True) for _ in range(num_levels))
        self.lateral_convs = nn.ModuleList(
            MultiLevelConvBN(self.in_channels[i], C, 1, neuron=neuron, bias=True)
            for i in range(self.num_fpn_inputs))
        self.output_convs = nn.ModuleList(
            MultiLevelConvBN(C, C, 3, neuron=neuron, groups=C) for _ in range(self.num_fpn_inputs))
        self.mask_feature = MultiLevelConvBN(C, C, 1, neuron=neuron, bias=True, norm=False)
        # The released init_weights (caffe2 Xavier); it skips the last lateral and
        # output conv by an off-by-one, we initialise them all alike.
        for module in (*self.input_projs, *self.output_projs, *self.lateral_convs,
                       *self.output_convs, self.mask_feature):
            caffe2_xavier_(module.conv)

    def forward(self, features: Sequence[torch.Tensor], project_mask_features: bool = True
                ) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        if len(features) != len(self.in_channels):
            raise ValueError(f"expected {len(self.in_channels)} feature maps, got {len(features)}")
        encoder_inputs = features[self.num_fpn_inputs:][::-1]
        queries = [proj(x) for proj, x in zip(self.input_projs, encoder_inputs)]
        if self.level_embed is not None:
            queries = [q + e[:, None, None] for q, e in zip(queries, self.level_embed)]
        shapes = [tuple(q.shape[-2:]) for q in queries]
        tokens = cat_levels(queries)
        for layer in self.encoder:
            tokens = layer(tokens, shapes)
        outs = [proj(m) for proj, m in zip(self.output_projs, split_levels(tokens, shapes))]
        y = outs[-1]
        for i in reversed(range(self.num_fpn_inputs)):
            lateral = self.lateral_convs[i](features[i])
            up = F.interpolate(y.flatten(0, 1), size=lateral.shape[-2:], mode="bilinear",
                               align_corners=False)
            # added in place into the fresh upsampled map: one map fewer alive at the widest level
            y = self.output_convs[i](up.unflatten(0, lateral.shape[:2]).add_(lateral))
            outs.append(y)
        if not project_mask_features:
            return self.mask_feature.spike(y), outs[:3]
        return self.mask_feature(y), outs[:3]


_OFFICIAL_RENAMES = (
    # (pattern, replacement), applied in order to keys relative to `decode_head.pixel_decoder.`
    (r"^encoder_in_proj\.", "input_projs.0."),
    (r"^encoder_out_proj\.", "output_projs.0."),
    (r"^mask_feature\.", "mask_feature.conv."),
    (r"^encoder\.layers\.(\d+)\.", r"encoder.\1."),
    (r"\.Conv\.", ".esc."),
    (r"\.dcn\.dw_conv\.", ".sdda.dw."),
    (r"\.dcn\.mask\.", ".sdda.attn_weight."),
    (r"\.dcn\.input_proj\.", ".sdda.value_proj."),
    (r"\.dcn\.", ".sdda."),
    (r"\.pwconv1\.", ".pw1."),
    (r"\.dwconv\.", ".dw."),
    (r"\.pwconv2\.", ".pw2."),
    (r"\.ffn\.fc(\d)_conv\.", r".mlp.fc\1."),
    (r"\.ffn\.fc(\d)_bn\.", r".mlp.bn\1."),
    # nn.Sequential(conv, bn) -> named conv / bn
    (r"\.0\.(weight|bias)$", r".conv.\1"),
    (r"\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)$", r".bn.\1"),
)
_OFFICIAL_ROOTS = ("encoder_in_proj.", "encoder_out_proj.", "mask_feature.", "encoder.layers.",
                   "lateral_convs.", "output_convs.")


def convert_official_pixel_decoder(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename a released pixel-decoder state_dict to :class:`SpikePixelDecoder` keys.

    ``state_dict`` holds the keys that follow ``decode_head.pixel_decoder.`` in
    an official checkpoint (prefix already stripped). Tensors are not copied. Keys
    outside the official modules raise :class:`~zoo.hub.UnknownKeysError` naming all of them.
    """
    unknown = [key for key in state_dict if not key.startswith(_OFFICIAL_ROOTS)]
    if unknown:
        raise UnknownKeysError("an official pixel decoder", unknown)
    converted = {}
    for key, value in state_dict.items():
        new = key
        for pattern, replacement in _OFFICIAL_RENAMES:
            new = re.sub(pattern, replacement, new)
        converted[new] = value
    return converted
