r"""Meta-SpikeFormer (Spike-driven Transformer V2, Yao et al., ICLR 2024), as Spike2Former builds it.

Four paper stages, two conv-based and two transformer-based; activations are
[T, B, C, H, W] and "SN" is one spiking neuron from the ``neuron`` factory::

    stem     Conv7x7/2 (in -> C0/2, bias) + BN           no SN: the only analog-input layer
    stage1a  ConvBlock(C0/2)                              -> x1, stride 2
    down1b   SN -> Conv3x3/2 (C0/2 -> C0) + BN
    stage1b  ConvBlock(C0)                                -> x2, stride 4
    down2    SN -> Conv3x3/2 (C0 -> C1) + BN
    stage2   2 x ConvBlock(C1)                            -> x3, stride 8
    down3    SN -> Conv3x3/2 (C1 -> C2) + BN
    stage3   depths[0] x TransformerBlock(C2)
    down4    SN -> Conv3x3/1 (C2 -> C3) + BN              stride 1: it only widens
    stage4   depths[1] x TransformerBlock(C3)             -> x4, stride 16

The official Spike2Former code returns all four maps un-averaged over T, and
so do we. :func:`convert_official_backbone` maps the official state_dict keys
(Spike2Former's ``backbone.*`` and SDT-V2's ImageNet checkpoints) to ours.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from ..hub import UnknownKeysError, mismatch_error
from ..layers.common import NeuronFactory, multistep, neuron_factory, reset_neurons
from ..registry import PretrainedCfg, register_model

__all__ = [
    "SpikeConvBN", "BNAndPad", "RepConv", "RepConvBN", "SepConv", "ConvBlock", "SpikeDrivenSelfAttention",
    "MLP", "TransformerBlock", "MetaSpikeFormer", "convert_official_backbone", "official_backbone_key",
    "is_imagenet_backbone", "with_imagenet_backbone", "official_backbone_state",
    "meta_spikeformer_15m", "meta_spikeformer_31m", "meta_spikeformer_55m", "meta_spikeformer_124m",
]


class SpikeConvBN(nn.Module):
    """``[SN] -> conv -> BN`` on [T, B, C, ...] (Conv2d on maps, Conv1d on token sequences).

    ``neuron=None`` leaves out the SN: the stem, whose input is the analog image.
    """

    # (layer, the BatchNorm that forward applies to its output): zoo.fuse folds each pair for inference
    batchnorm_folds = (("conv", "bn"),)

    def __init__(self, conv: nn.Module, bn: nn.Module, neuron: Optional[NeuronFactory]):
        super().__init__()
        self.spike = neuron() if neuron is not None else None
        self.conv = conv
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spike is not None:
            x = self.spike(x)
        return multistep(self.bn, multistep(self.conv, x))


def _downsample(in_ch: int, out_ch: int, kernel_size: int, stride: int,
                neuron: Optional[NeuronFactory]) -> SpikeConvBN:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding=kernel_size // 2, bias=True)
    return SpikeConvBN(conv, nn.BatchNorm2d(out_ch), neuron)


class BNAndPad(nn.BatchNorm2d):
    r"""BatchNorm2d whose output is padded by ``pad`` pixels with the value BN gives a zero input.

    The pad value per channel is the inference-time image of 0,
    :math:`\beta - \mu \gamma / \sqrt{\sigma^2 + \epsilon}` (running statistics,
    no gradient; also in training, as the official code does). Padding the BN
    output this way equals zero-padding before BN at inference, so
    ``Conv1x1 -> BNAndPad -> DW3x3 (no padding)`` re-parameterises into one 3x3 conv.
    """

    def __init__(self, num_features: int, pad: int = 1, **bn_kwargs):
        super().__init__(num_features, **bn_kwargs)
        self.pad = pad

    def pad_value(self) -> torch.Tensor:
        shift = self.running_mean * self.weight.detach() / torch.sqrt(self.running_var + self.eps)
        return self.bias.detach() - shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.pad == 0:
            return y
        n, c, h, w = y.shape
        p = self.pad
        out = self.pad_value().to(y.dtype).view(1, c, 1, 1).expand(n, c, h + 2 * p, w + 2 * p).clone()
        out[:, :, p:p + h, p:p + w] = y
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, pad={self.pad}"


class RepConv(nn.Module):
    """Re-parameterisable 3x3 conv, per frame ([N, C, H, W]), bias-free:
    ``Conv1x1(C->C) -> BNAndPad(1) -> DW3x3(no padding) -> Conv1x1(C->C_out) -> BN``."""

    batchnorm_folds = (("pw_out", "bn"),)
    # (layer, BNAndPad after it, the unpadded conv after that): the padded BN folds into both convs
    padded_batchnorm_folds = (("pw_in", "bn_pad", "dw"),)

    def __init__(self, channels: int, out_channels: Optional[int] = None):
        super().__init__()
        out_channels = out_channels or channels
        self.pw_in = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn_pad = BNAndPad(channels, pad=1)
        self.dw = nn.Conv2d(channels, channels, 3, padding=0, groups=channels, bias=False)
        self.pw_out = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.pw_out(self.dw(self.bn_pad(self.pw_in(x)))))


class RepConvBN(nn.Module):
    """``RepConv -> BN``, per frame. The official attention puts a second BN after
    RepConv's own; two BNs in series fold into one at inference, but both hold weights."""

    batchnorm_folds = (("repconv.pw_out", "bn"),)  # after RepConv's own BN has been folded into pw_out

    def __init__(self, channels: int):
        super().__init__()
        self.repconv = RepConv(channels)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.repconv(x))


class SepConv(nn.Module):
    """MetaFormer's inverted separable conv (expansion 2, bias-free), spiking:
    ``SN -> pw1(C->2C) -> BN -> SN -> dw7x7(2C) -> pw2(2C->C) -> BN`` (nothing between dw and pw2)."""

    batchnorm_folds = (("pw1", "bn1"), ("pw2", "bn2"))

    def __init__(self, dim: int, neuron: NeuronFactory, expansion: int = 2, kernel_size: int = 7):
        super().__init__()
        hidden = expansion * dim
        self.spike1 = neuron()
        self.pw1 = nn.Conv2d(dim, hidden, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.spike2 = neuron()
        self.dw = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=False)
        self.pw2 = nn.Conv2d(hidden, dim, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = multistep(self.bn1, multistep(self.pw1, self.spike1(x)))
        x = multistep(self.pw2, multistep(self.dw, self.spike2(x)))
        return multistep(self.bn2, x)


class ConvBlock(nn.Module):
    """Conv-based Meta-SpikeFormer block: ``x = x + SepConv(x); x = x + mlp2(mlp1(x))``
    with ``mlp1 = SN -> Conv3x3(C->rC) -> BN`` and ``mlp2 = SN -> Conv3x3(rC->C) -> BN`` (bias-free)."""

    def __init__(self, dim: int, neuron: NeuronFactory, mlp_ratio: int = 4):
        super().__init__()
        hidden = mlp_ratio * dim
        self.sepconv = SepConv(dim, neuron)
        self.mlp1 = SpikeConvBN(nn.Conv2d(dim, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden), neuron)
        self.mlp2 = SpikeConvBN(nn.Conv2d(hidden, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.sepconv(x)
        return x + self.mlp2(self.mlp1(x))


class SpikeDrivenSelfAttention(nn.Module):
    r"""Spike-driven self-attention with RepConv projections, linear in the token count.

    .. math::

        X' &= SN(X), \quad Q, K, V = SN(BN(RepConv(X')))  \text{ (each its own weights)} \\
        A_h &= Q_h \, (K_h^\top V_h) \cdot (C / h)^{-1/2}  \text{ (per head, no softmax)} \\
        Y &= BN(RepConv(SN(A)))

    Heads split the channels: channel ``c`` belongs to head ``c // (C/h)``. The
    scale is the Spike2Former code's :math:`(C/h)^{-1/2}`; SDT-V2's ImageNet
    code uses a fixed 0.125 (the two agree at C/h = 64).
    """

    # what the activation-by-activation products of forward are, for zoo.complexity's MAC count
    product_kind = "attention_product"

    def __init__(self, dim: int, neuron: NeuronFactory, num_heads: int = 8):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.spike_in = neuron()
        self.q, self.k, self.v = RepConvBN(dim), RepConvBN(dim), RepConvBN(dim)
        self.q_spike, self.k_spike, self.v_spike = neuron(), neuron(), neuron()
        self.attn_spike = neuron()
        self.proj = RepConvBN(dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[T, B, C, H, W] -> [T, B, heads, H*W, C/heads]."""
        T, B, C = x.shape[:3]
        return x.reshape(T, B, self.num_heads, C // self.num_heads, -1).transpose(-1, -2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.spike_in(x)
        q = self._heads(self.q_spike(multistep(self.q, x)))
        k = self._heads(self.k_spike(multistep(self.k, x)))
        v = self._heads(self.v_spike(multistep(self.v, x)))
        attn = (q @ (k.transpose(-2, -1) @ v)) * self.scale
        attn = attn.transpose(-1, -2).reshape(x.shape)
        return multistep(self.proj, self.attn_spike(attn))


class MLP(nn.Module):
    """Token MLP on [T, B, C, H, W] seen as [T, B, C, H*W]:
    ``SN -> Conv1d1x1(C->rC, bias) -> BN1d -> SN -> Conv1d1x1(rC->C, bias) -> BN1d``."""

    def __init__(self, dim: int, neuron: NeuronFactory, mlp_ratio: int = 4):
        super().__init__()
        hidden = mlp_ratio * dim
        self.fc1 = SpikeConvBN(nn.Conv1d(dim, hidden, 1), nn.BatchNorm1d(hidden), neuron)
        self.fc2 = SpikeConvBN(nn.Conv1d(hidden, dim, 1), nn.BatchNorm1d(dim), neuron)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x.flatten(3))).reshape(x.shape)


class TransformerBlock(nn.Module):
    """Transformer-based Meta-SpikeFormer block: ``x = x + SDSA(x); x = x + MLP(x)``."""

    def __init__(self, dim: int, neuron: NeuronFactory, num_heads: int = 8, mlp_ratio: int = 4):
        super().__init__()
        self.attn = SpikeDrivenSelfAttention(dim, neuron, num_heads)
        self.mlp = MLP(dim, neuron, mlp_ratio)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x)
        return x + self.mlp(x)


class MetaSpikeFormer(nn.Module):
    """Meta-SpikeFormer backbone (SDT-V2) returning four feature maps at strides 2/4/8/16.

    :param embed_dims: (C0, C1, C2, C3); the outputs have C0/2, C0, C1, C3 channels.
    :param num_heads: attention heads in every transformer block.
    :param mlp_ratio: hidden width ratio of the ConvBlock and transformer MLPs.
    :param depths: transformer blocks at C2 (stride 16) and at C3 (stride 16, after widening).
    :param in_chans: input image channels.
    :param neuron: factory of the spiking neuron; default NI-LIF with D = 4.

    ``forward(x)`` takes [T, B, in_chans, H, W] (H and W multiples of 16 for
    exact strides) and returns ``[x1, x2, x3, x4]``, ``x_i`` of shape
    [T, B, out_channels[i], H/s_i, W/s_i] with s = (2, 4, 8, 16). Neurons are
    reset at the start of every forward.
    """

    strides = (2, 4, 8, 16)

    def __init__(self, embed_dims: Sequence[int] = (64, 128, 256, 360), num_heads: int = 8, mlp_ratio: int = 4,
                 depths: Sequence[int] = (6, 2), in_chans: int = 3, neuron: Optional[NeuronFactory] = None):
        super().__init__()
        if len(embed_dims) != 4 or len(depths) != 2:
            raise ValueError(f"need 4 embed_dims and 2 depths, got {tuple(embed_dims)} and {tuple(depths)}")
        neuron = neuron or neuron_factory("nilif", D=4)
        c0, c1, c2, c3 = embed_dims
        self.embed_dims = tuple(embed_dims)
        self.out_channels = (c0 // 2, c0, c1, c3)

        def transformer_blocks(dim, depth):
            return nn.Sequential(*[TransformerBlock(dim, neuron, num_heads, mlp_ratio) for _ in range(depth)])

        self.stem = _downsample(in_chans, c0 // 2, 7, 2, neuron=None)
        self.stage1a = nn.Sequential(ConvBlock(c0 // 2, neuron, mlp_ratio))
        self.down1b = _downsample(c0 // 2, c0, 3, 2, neuron)
        self.stage1b = nn.Sequential(ConvBlock(c0, neuron, mlp_ratio))
        self.down2 = _downsample(c0, c1, 3, 2, neuron)
        self.stage2 = nn.Sequential(ConvBlock(c1, neuron, mlp_ratio), ConvBlock(c1, neuron, mlp_ratio))
        self.down3 = _downsample(c1, c2, 3, 2, neuron)
        self.stage3 = transformer_blocks(c2, depths[0])
        self.down4 = _downsample(c2, c3, 3, 1, neuron)
        self.stage4 = transformer_blocks(c3, depths[1])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        if x.dim() != 5:
            raise ValueError(f"expected [T, B, C, H, W], got shape {tuple(x.shape)}")
        reset_neurons(self)
        x1 = self.stage1a(self.stem(x))
        x2 = self.stage1b(self.down1b(x1))
        x3 = self.stage2(self.down2(x2))
        x4 = self.stage4(self.down4(self.stage3(self.down3(x3))))
        return [x1, x2, x3, x4]


# ---------------------------------------------------------------- official checkpoints

_OFFICIAL_MODULES = {
    "downsample1_1": "stem", "ConvBlock1_1.0": "stage1a.0", "downsample1_2": "down1b", "ConvBlock1_2.0": "stage1b.0",
    "downsample2": "down2", "ConvBlock2_1.0": "stage2.0", "ConvBlock2_2.0": "stage2.1", "downsample3": "down3",
    "downsample4": "down4",
}
_OFFICIAL_DOWNSAMPLE = {"encode_conv": "conv", "encode_bn": "bn"}
_OFFICIAL_CONVBLOCK = {
    "Conv.pwconv1": "sepconv.pw1", "Conv.bn1": "sepconv.bn1", "Conv.dwconv": "sepconv.dw",
    "Conv.pwconv2": "sepconv.pw2", "Conv.bn2": "sepconv.bn2",
    "conv1": "mlp1.conv", "bn1": "mlp1.bn", "conv2": "mlp2.conv", "bn2": "mlp2.bn",
}
_OFFICIAL_REPCONV_BN = {  # inside attn.{q,k,v,proj}_conv: Sequential(RepConv(body=[1x1, BNAndPad, [dw, 1x1, BN]]), BN)
    "0.body.0": "repconv.pw_in", "0.body.1.bn": "repconv.bn_pad", "0.body.2.0": "repconv.dw",
    "0.body.2.1": "repconv.pw_out", "0.body.2.2": "repconv.bn", "1": "bn",
}
_OFFICIAL_MLP = {"mlp.fc1_conv": "mlp.fc1.conv", "mlp.fc1_bn": "mlp.fc1.bn",
                 "mlp.fc2_conv": "mlp.fc2.conv", "mlp.fc2_bn": "mlp.fc2.bn"}
_LEAVES = r"(?P<leaf>weight|bias|running_mean|running_var|num_batches_tracked)"
_KEY = re.compile(r"(?P<module>downsample\d_\d|downsample\d|ConvBlock\d_\d\.0|block[34]\.\d+)\.(?P<inner>.+)\."
                  + _LEAVES)
_ATTN = re.compile(r"attn\.(?P<proj>q|k|v|proj)_conv\.(?P<rest>.+)")
# ImageNet classifiers of SDT-V2 (``head``, and ``head_kd`` in distilled checkpoints); not part of the backbone.
_CLASSIFIER = re.compile(r"head(_kd)?\.(weight|bias)")


def _convert_inner(module: str, inner: str) -> Optional[str]:
    if module.startswith("downsample"):
        return _OFFICIAL_DOWNSAMPLE.get(inner)
    if module.startswith("ConvBlock"):
        return _OFFICIAL_CONVBLOCK.get(inner)
    attn = _ATTN.fullmatch(inner)
    if attn:
        rest = _OFFICIAL_REPCONV_BN.get(attn["rest"])
        return f"attn.{attn['proj']}.{rest}" if rest else None
    return _OFFICIAL_MLP.get(inner)


def _ours(key: str) -> Optional[str]:
    """Our key of the official backbone key ``key``; None when the official backbone has no such key."""
    match = _KEY.fullmatch(key)
    if match is None:
        return None
    module = match["module"]
    if module.startswith("block"):
        stage, index = module.split(".")
        ours_module = f"stage{stage[-1]}.{index}"
    else:
        ours_module = _OFFICIAL_MODULES.get(module)
    inner = _convert_inner(module, match["inner"]) if ours_module else None
    return f"{ours_module}.{inner}.{match['leaf']}" if inner else None


def convert_official_backbone(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official Meta-SpikeFormer keys -> :class:`MetaSpikeFormer` keys (tensors are shared, not copied).

    Accepts the Spike2Former/SpikeFPN backbone with its ``backbone.`` prefix
    stripped (``downsample1_1.encode_conv.weight``, ``block3.0.attn.q_conv.0.body.1.bn.weight``, ...)
    and SDT-V2 ImageNet checkpoints, whose classifier ``head.*`` (and ``head_kd.*``)
    is dropped. Any other key raises :class:`~zoo.hub.UnknownKeysError` (a ``KeyError``)
    naming all of them: a silently ignored key would leave part of the backbone random.
    """
    converted, unknown = {}, []
    for key, value in state_dict.items():
        if _CLASSIFIER.fullmatch(key):
            continue
        ours = _ours(key)
        if ours is None:
            unknown.append(key)
        else:
            converted[ours] = value
    if unknown:
        raise UnknownKeysError("an official Meta-SpikeFormer backbone", unknown)
    return converted


_OURS_MODULES = {ours: official for official, ours in _OFFICIAL_MODULES.items()}
_OURS_KEY = re.compile(r"(?P<module>stage[34]\.\d+|\w+\.\d+|\w+)\.(?P<inner>.+)\." + _LEAVES)


def _official_inners(module: str) -> List[str]:
    """The official names inside ``module`` that ``_convert_inner`` maps."""
    if module.startswith("downsample"):
        return list(_OFFICIAL_DOWNSAMPLE)
    if module.startswith("ConvBlock"):
        return list(_OFFICIAL_CONVBLOCK)
    return [f"attn.{proj}_conv.{rest}" for proj in ("q", "k", "v", "proj") for rest in _OFFICIAL_REPCONV_BN] + list(
        _OFFICIAL_MLP)


def official_backbone_key(key: str) -> str:
    """Our :class:`MetaSpikeFormer` key -> the official one, the inverse of :func:`convert_official_backbone`.

    Error messages about official checkpoints name both, so that a key can be found in either
    code base; it also writes our backbones in the official layout. Raises ``KeyError`` for a
    key that is not one of ours.
    """
    match = _OURS_KEY.fullmatch(key)
    module = None
    if match is not None:
        ours_module = match["module"]
        module = (f"block{ours_module[len('stage'):]}" if ours_module.startswith(("stage3.", "stage4."))
                  else _OURS_MODULES.get(ours_module))
    inners = {_convert_inner(module, inner): inner for inner in _official_inners(module)} if module else {}
    if match is None or match["inner"] not in inners:
        raise KeyError(f"not a MetaSpikeFormer key: {key!r}")
    return f"{module}.{inners[match['inner']]}.{match['leaf']}"


# The stem's conv: the key by which official checkpoints are told apart from ours.
_FIRST_OFFICIAL_KEY = "downsample1_1.encode_conv.weight"


def is_imagenet_backbone(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """A Meta-SpikeFormer classification checkpoint: backbone keys at top level (plus ``head.*``)."""
    return _FIRST_OFFICIAL_KEY in state_dict


def with_imagenet_backbone(state_dict: Mapping[str, torch.Tensor], model: nn.Module,
                           prefix: str = "backbone.") -> Dict[str, torch.Tensor]:
    """``model``'s state_dict with its backbone (the keys under ``prefix``) taken from an ImageNet
    Meta-SpikeFormer checkpoint; the other parts keep their current values.

    Unlike a full checkpoint, the result always has every key of the model, so strict loading
    cannot notice a backbone tensor the checkpoint lacks: it would stay at its random
    initialisation. Such tensors, and keys that are not official backbone keys, raise
    :class:`~zoo.hub.CheckpointMismatchError` naming them (missing ones by their official and our names).
    """
    what = "an ImageNet Meta-SpikeFormer checkpoint that does not hold exactly the official backbone"
    try:
        backbone = convert_official_backbone(state_dict)
    except UnknownKeysError as err:
        raise mismatch_error(what, unexpected=err.keys) from None
    own = model.state_dict()
    missing = [key for key in own if key.startswith(prefix) and key[len(prefix):] not in backbone]
    if missing:
        raise mismatch_error(what, missing=[
            f"{official_backbone_key(key[len(prefix):])} (ours: {key})" for key in missing])
    return {**own, **{prefix + key: value for key, value in backbone.items()}}


def official_backbone_state(state_dict: Mapping[str, torch.Tensor], checkpoint: str) -> Dict[str, torch.Tensor]:
    """The ``backbone.*`` keys of an official segmentation checkpoint (``checkpoint``: 'Spike2Former',
    'SpikeFPN', ...), converted; unknown ones raise :class:`~zoo.hub.CheckpointMismatchError`
    with their full official names."""
    try:
        return convert_official_backbone(
            {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")})
    except UnknownKeysError as err:
        raise mismatch_error(f"an official {checkpoint} checkpoint with keys the official model does not have",
                             unexpected=[f"backbone.{key}" for key in err.keys]) from None


def _backbone_filter(state_dict: Mapping[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """ImageNet classification or official segmentation checkpoints -> backbone keys (the segmentation
    heads are dropped: they are not part of this model)."""
    if is_imagenet_backbone(state_dict):
        return with_imagenet_backbone(state_dict, model, prefix="")
    if "backbone." + _FIRST_OFFICIAL_KEY in state_dict:
        return official_backbone_state(state_dict, "segmentation")
    raise KeyError("expected a Meta-SpikeFormer ImageNet checkpoint or an official segmentation "
                   "checkpoint ('backbone.*')")


# ---------------------------------------------------------------- registered variants

# The backbone of the CamVid models (spike2former_camvid, spikefpn_camvid), as segmentor arguments.
# The stride-2 and stride-4 stages stay thin (they dominate a CPU training step); the two transformer
# stages are wider and the first one two blocks deep: 1.6x the parameters of 12-24-48-64 with one block
# each, at no measurable cost in iteration time (0.98-1.10x, benchmarks/camvid_width_speed.py), and +2
# val mIoU at the camvid recipe's budget (55.1 vs 53.0).
CAMVID_BACKBONE = dict(embed_dims=(12, 24, 64, 96), backbone_heads=4, backbone_depths=(2, 1))

def _sdtv2_notes(factory: str, cls_params: str, imagenet: str) -> str:
    return (f"SDT-V2 width of its {factory} factory; {cls_params} params with SDT-V2's 1000-class head. "
            f"No published segmentation weights. {imagenet}")


def _backbone_cfg(params: int, notes: str) -> Dict[str, PretrainedCfg]:
    return {"": PretrainedCfg(task="backbone", num_classes=None, params=params, notes=notes)}


@register_model(checkpoint_filter=_backbone_filter, cfgs=_backbone_cfg(
    14_751_208,
    "Spike2Former's and SpikeFPN's backbone: SDT-V2 width [64,128,256,360], 15.11M params with its "
    "ImageNet head (the paper's 'Meta-SpikeFormer 15M'; SDT-V2 has no named factory for it). "
    "Its ImageNet weights are not public; convert_official_backbone loads official checkpoints."))
def meta_spikeformer_15m(**kwargs) -> MetaSpikeFormer:
    return MetaSpikeFormer(embed_dims=(64, 128, 256, 360), **kwargs)


@register_model(checkpoint_filter=_backbone_filter, cfgs=_backbone_cfg(30_852_864, _sdtv2_notes(
    "metaspikformer_8_384", "31.33M", "No published ImageNet weights either.")))
def meta_spikeformer_31m(**kwargs) -> MetaSpikeFormer:
    return MetaSpikeFormer(embed_dims=(96, 192, 384, 480), **kwargs)


@register_model(checkpoint_filter=_backbone_filter, cfgs=_backbone_cfg(54_709_248, _sdtv2_notes(
    "metaspikformer_8_512", "55.35M",
    "SDT-V2 published ImageNet weights for it (Google Drive, see its README); "
    "convert_official_backbone converts them.")))
def meta_spikeformer_55m(**kwargs) -> MetaSpikeFormer:
    return MetaSpikeFormer(embed_dims=(128, 256, 512, 640), **kwargs)


@register_model(checkpoint_filter=_backbone_filter, cfgs=_backbone_cfg(122_780_160, _sdtv2_notes(
    "metaspikformer_8_768", "123.74M", "No published ImageNet weights either.")))
def meta_spikeformer_124m(**kwargs) -> MetaSpikeFormer:
    return MetaSpikeFormer(embed_dims=(192, 384, 768, 960), **kwargs)
