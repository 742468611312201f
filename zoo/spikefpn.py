r"""SpikeFPN: Spike2Former's baseline, a spiking Semantic FPN on the Meta-SpikeFormer backbone.

The official config (``configs/FPN/fpn_sdtv2_512x512_ade20k.py``: ``QFPN`` neck +
``QFPNHead``) cannot be built as released; this is what it describes, with
every conv applied frame by frame on [T, B, C, H, W]::

    backbone  MetaSpikeFormer -> x1..x4 (32/64/128/360 ch, strides 2/4/8/16)
    neck      lateral_i = BN(Conv1x1(SN(x_i)))                     (conv with bias)
              lateral_i += nearest_resize(lateral_{i+1})           (top-down, i = 2, 1, 0)
              p_i = BN(Conv3x3(SN(lateral_i)))                     (conv with bias)
    head      level i: max(1, i) stages of BN(Conv3x3(SN(.))) (no bias), each followed by
              a x2 bilinear upsample for i > 0, so every level reaches p_0's stride;
              y = sum of the levels; logits = Conv1x1(Dropout2d(SN(y))), averaged over T

(``max(1, i)`` is Semantic FPN's ``max(1, log2(stride_i / stride_0))`` for the
nominal strides 4/8/16/32 of the config; the true strides are 2/4/8/16 and
also differ by x2 per level, so the head's arithmetic is unchanged.)
"""
from __future__ import annotations

import functools
import re
from typing import Dict, List, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import datasets_meta as meta
from .backbones.meta_spikeformer import (CAMVID_BACKBONE, MetaSpikeFormer, SpikeConvBN, convert_official_backbone,
                                         is_imagenet_backbone, with_imagenet_backbone)
from .base import SegmentationModel
from .hub import UnknownKeysError, mismatch_error
from .layers.common import NeuronFactory, model_neuron, multistep, neuron_factory
from .postprocess import resize_masks
from .registry import register_model, segmentation_cfg

__all__ = ["SpikeFPNNeck", "SemanticFPNHead", "SpikeFPN", "convert_official_spikefpn", "spikefpn_ade20k",
           "spikefpn_voc2012", "spikefpn_camvid"]


def _resize(x: torch.Tensor, size, mode: str) -> torch.Tensor:
    """Resize the spatial dims of [T, B, C, H, W] (bilinear with ``align_corners=False``, as mmseg)."""
    align = False if mode == "bilinear" else None
    return multistep(lambda y: F.interpolate(y, size=size, mode=mode, align_corners=align), x)


class SpikeFPNNeck(nn.Module):
    """Spiking FPN neck: spiked laterals, nearest top-down sum, spiked 3x3 output convs.

    ``forward(features)`` takes the backbone's list of [T, B, C_i, H_i, W_i] and
    returns ``len(in_channels)`` maps [T, B, out_channels, H_i, W_i].
    """

    def __init__(self, in_channels: Sequence[int] = (32, 64, 128, 360), out_channels: int = 128,
                 neuron: Optional[NeuronFactory] = None):
        super().__init__()
        neuron = neuron or neuron_factory("nilif", D=4)
        self.laterals = nn.ModuleList(
            SpikeConvBN(nn.Conv2d(c, out_channels, 1), nn.BatchNorm2d(out_channels), neuron) for c in in_channels)
        self.outputs = nn.ModuleList(
            SpikeConvBN(nn.Conv2d(out_channels, out_channels, 3, padding=1), nn.BatchNorm2d(out_channels), neuron)
            for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        if len(features) != len(self.laterals):
            raise ValueError(f"expected {len(self.laterals)} feature maps, got {len(features)}")
        laterals = [lateral(x) for lateral, x in zip(self.laterals, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:], "nearest")
        return [output(x) for output, x in zip(self.outputs, laterals)]


class SemanticFPNHead(nn.Module):
    """Spiking Semantic FPN head (Kirillov et al., 2019): fuse all levels at the finest one, classify.

    Level ``i`` (each a factor 2 coarser than the previous) passes ``max(1, i)``
    stages ``BN(Conv3x3(SN(.)))``, each followed by a x2 bilinear upsample when
    ``i > 0``; the levels are summed (resized to level 0 should sizes differ by
    rounding), then ``logits = Conv1x1(Dropout2d(SN(y)))`` (with bias).

    ``forward(features)`` maps the neck's list to [T, B, num_classes, H_0, W_0].
    """

    def __init__(self, num_classes: int, channels: int = 128, num_levels: int = 4,
                 neuron: Optional[NeuronFactory] = None, dropout: float = 0.1):
        super().__init__()
        neuron = neuron or neuron_factory("nilif", D=4)

        def stage():
            return SpikeConvBN(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                               nn.BatchNorm2d(channels), neuron)

        self.scale_heads = nn.ModuleList(
            nn.ModuleList(stage() for _ in range(max(1, level))) for level in range(num_levels))
        self.out_spike = neuron()
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def _level(self, level: int, x: torch.Tensor) -> torch.Tensor:
        for stage in self.scale_heads[level]:
            x = stage(x)
            if level > 0:
                x = multistep(lambda y: F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False), x)
        return x

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(features) != len(self.scale_heads):
            raise ValueError(f"expected {len(self.scale_heads)} feature maps, got {len(features)}")
        out = self._level(0, features[0])
        for level in range(1, len(features)):
            out = out + _resize(self._level(level, features[level]), out.shape[-2:], "bilinear")
        return multistep(self.classifier, multistep(self.dropout, self.out_spike(out)))


class SpikeFPN(SegmentationModel):
    """Meta-SpikeFormer + spiking FPN neck + Semantic FPN head (Spike2Former's SpikeFPN baseline).

    :param num_classes: output classes (150 for ADE20K).
    :param T: time steps (the image is replicated; NI-LIF integrates across them).
    :param D, neuron, beta: the neuron of every layer (see ``zoo.layers.model_neuron``).
    :param embed_dims, backbone_heads, backbone_depths: the Meta-SpikeFormer (default the 15M one).
    :param neck_channels: channels of the neck and head (128).
    :param dropout: Dropout2d rate before the classifier.

    ``forward(images)`` takes [B, 3, H, W] and returns logits [B, num_classes, Hp/2, Wp/2]
    (Hp, Wp: the input padded to a multiple of 32), the mean over T. The logits come out
    at **stride 2**, the stride of the finest backbone map x1 that the head fuses every
    level into: Spike2Former's Meta-SpikeFormer has strides 2/4/8/16, not Semantic FPN's
    usual 4/8/16/32. ``predict`` upsamples them bilinearly to the input size, as mmseg does.

    The released SpikeFPN config cannot run as published, so there is no
    ``official`` switch: no official SpikeFPN outputs exist to reproduce.
    """

    def __init__(self, num_classes: int, T: int = 1, D: int = 4, neuron: str = "nilif", beta: float = 0.25,
                 embed_dims: Sequence[int] = (64, 128, 256, 360), backbone_heads: int = 8,
                 backbone_depths: Sequence[int] = (6, 2), neck_channels: int = 128, dropout: float = 0.1):
        super().__init__(T=T)
        sn = model_neuron(neuron, D=D, beta=beta)
        self.backbone = MetaSpikeFormer(embed_dims=tuple(embed_dims), num_heads=backbone_heads,
                                        depths=tuple(backbone_depths), neuron=sn)
        in_channels = self.backbone.out_channels
        self.neck = SpikeFPNNeck(in_channels, neck_channels, sn)
        self.head = SemanticFPNHead(num_classes, neck_channels, len(in_channels), sn, dropout)
        self.num_classes = num_classes
        self.task = "semantic"

    def _logits(self, images: torch.Tensor):
        with self.computing():
            x, image_size = self.to_sequence(images)
            logits = self.run_network(SpikeFPN._network, x)
        return self.returned(logits), tuple(x.shape[-2:]), image_size

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(x))).mean(0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._logits(images)[0]

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Label maps [B, H, W] (int64)."""
        logits, padded, size = self._logits(images)
        return resize_masks(logits, padded, size).argmax(1)


_OFFICIAL_NECK = re.compile(r"neck\.(?P<kind>lateral_convs|fpn_convs)\.(?P<level>\d+)\.(?P<layer>[01])\.(?P<leaf>.+)")
_OFFICIAL_SCALE_HEAD = re.compile(r"decode_head\.scale_heads\.(?P<level>\d+)\.(?P<index>\d+)\.(?P<layer>[12])\."
                                  r"(?P<leaf>.+)")


def convert_official_spikefpn(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official SpikeFPN keys (``backbone.*``, ``neck.*``, ``decode_head.*``) -> :class:`SpikeFPN` keys.

    Official layout: ``neck.{lateral_convs,fpn_convs}.i.{0: conv, 1: BN}``;
    ``decode_head.scale_heads.i.j.{0: SN, 1: conv, 2: BN}`` where ``j`` counts stages and
    their upsampling layers alike (stage ``j // 2``); ``decode_head.conv_seg``
    is the classifier. Any other key raises :class:`~zoo.hub.UnknownKeysError`
    (a ``KeyError``) naming all of them.
    """
    backbone = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    unknown = []
    try:
        converted = {f"backbone.{k}": v for k, v in convert_official_backbone(backbone).items()}
    except UnknownKeysError as err:
        converted, unknown = {}, [f"backbone.{key}" for key in err.keys]
    for key, value in state_dict.items():
        if key.startswith("backbone."):
            continue
        neck = _OFFICIAL_NECK.fullmatch(key)
        head = _OFFICIAL_SCALE_HEAD.fullmatch(key)
        if neck:
            kind = "laterals" if neck["kind"] == "lateral_convs" else "outputs"
            layer = "conv" if neck["layer"] == "0" else "bn"
            converted[f"neck.{kind}.{neck['level']}.{layer}.{neck['leaf']}"] = value
        elif head and int(head["index"]) % 2 == 0:
            layer = "conv" if head["layer"] == "1" else "bn"
            converted[f"head.scale_heads.{head['level']}.{int(head['index']) // 2}.{layer}.{head['leaf']}"] = value
        elif key.startswith("decode_head.conv_seg."):
            converted["head.classifier." + key[len("decode_head.conv_seg."):]] = value
        else:
            unknown.append(key)
    if unknown:
        raise UnknownKeysError("an official SpikeFPN", unknown)
    return converted


def _checkpoint_filter(state_dict, model):
    """Official SpikeFPN checkpoints convert entirely, and every key must be an official one; an ImageNet
    Meta-SpikeFormer initialises the backbone (and must hold all of it)."""
    if is_imagenet_backbone(state_dict):
        return with_imagenet_backbone(state_dict, model)
    if not all(any(k.startswith(part) for k in state_dict) for part in ("neck.", "decode_head.")):
        raise KeyError("expected official keys 'backbone.*', 'neck.*', 'decode_head.*' "
                       "or a Meta-SpikeFormer ImageNet checkpoint")
    try:
        return convert_official_spikefpn(state_dict)
    except UnknownKeysError as err:
        raise mismatch_error("an official SpikeFPN checkpoint with keys the official model does not have",
                             unexpected=err.keys) from None


_PAPER = "Lei et al., Spike2Former, AAAI 2025 (SpikeFPN baseline)"


_cfg = functools.partial(segmentation_cfg, source=_PAPER)
# the tiny version the tests run of every variant (64x64 inputs in milliseconds)
_TEST_ARGS = dict(embed_dims=(8, 16, 32, 40), backbone_heads=2, backbone_depths=(1, 1), neck_channels=8)


@register_model(cfgs={"t4d1": _cfg("ade20k", meta.ADE20K_CLASSES, meta.ADE20K_PALETTE, 4, 1, 16_472_190,
                                   {"mIoU": 33.6, "params": "17M", "energy_mj": 88.1}, macs=66.695)},
                checkpoint_filter=_checkpoint_filter, test_args=_TEST_ARGS)
def spikefpn_ade20k(**kwargs) -> SpikeFPN:
    """SpikeFPN on ADE20K (150 classes), T x D = 4 x 1 (binary spikes); 16,472,190 parameters."""
    return SpikeFPN(**kwargs)


_VOC_NOTE = ("The paper lists 59M params for the 4x1 row; no width of the release gives that, and the "
             "paper names no other backbone, so both tags build the 17M model.")


@register_model(cfgs={
    "t1d1": _cfg("voc2012", meta.VOC_CLASSES, meta.VOC_PALETTE, 1, 1, 16_455_549,
                 {"mIoU": 58.1, "params": "17M", "energy_mj": 81.4}, notes=_VOC_NOTE, macs=65.613),
    "t4d1": _cfg("voc2012", meta.VOC_CLASSES, meta.VOC_PALETTE, 4, 1, 16_455_549,
                 {"mIoU": 61.1, "params": "59M", "energy_mj": 179.4}, notes=_VOC_NOTE, macs=65.613),
}, checkpoint_filter=_checkpoint_filter, test_args=_TEST_ARGS)
def spikefpn_voc2012(**kwargs) -> SpikeFPN:
    """SpikeFPN on Pascal VOC 2012 (21 classes), tags 1x1 and 4x1."""
    return SpikeFPN(**kwargs)


@register_model(cfgs={"t1d4": _cfg(
    "camvid", meta.CAMVID_CLASSES, meta.CAMVID_PALETTE, 1, 4, 585_303, {}, crop=(360, 480),
    model_args=dict(CAMVID_BACKBONE, neck_channels=32), macs=2.277,
    notes="The SpikeFPN baseline for spike2former_camvid, on the same scaled-down backbone; not in the paper.")},
    checkpoint_filter=_checkpoint_filter, test_args=_TEST_ARGS)
def spikefpn_camvid(**kwargs) -> SpikeFPN:
    """A small SpikeFPN for CamVid (11 classes) with spike2former_camvid's backbone."""
    return SpikeFPN(**kwargs)
