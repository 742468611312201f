"""Registered Spike2Former variants and their pretrained configs (with the paper's reported figures).

No Spike2Former weights are published by the authors (the release links none),
so every config has ``hub_id=None`` until we publish our own; ``create(...,
checkpoint_path=...)`` loads the official code's checkpoints through
:func:`convert_official_checkpoint`.
"""
from __future__ import annotations

import functools

from .. import datasets_meta as meta
from ..backbones import CAMVID_BACKBONE
from ..registry import register_model, segmentation_cfg
from .convert import convert_official_checkpoint
from .segmentor import Spike2Former

__all__ = ["spike2former_ade20k", "spike2former_cityscapes", "spike2former_voc2012",
           "spike2former_coco_panoptic", "spike2former_camvid", "CAMVID_WIDTHS"]

_PAPER = "Lei et al., Spike2Former, AAAI 2025"


_cfg = functools.partial(segmentation_cfg, source=_PAPER)
# the tiny version the tests run of every variant (64x64 inputs in milliseconds)
_TEST_ARGS = dict(embed_dims=(8, 16, 32, 40), backbone_heads=2, backbone_depths=(1, 1), feat_channels=16,
                  encoder_layers=1, sdte_ffn_channels=32, sdda_groups=2, decoder_layers=2, decoder_heads=2,
                  decoder_ffn_channels=32, num_queries=5)


@register_model(cfgs={"t1d4": _cfg("ade20k", meta.ADE20K_CLASSES, meta.ADE20K_PALETTE, 1, 4, 34_361_112,
                                   {"mIoU": 46.3, "params": "34M", "energy_mj": 68.0}, macs=53.345)},
                checkpoint_filter=convert_official_checkpoint, test_args=_TEST_ARGS)
def spike2former_ade20k(**kwargs) -> Spike2Former:
    """Spike2Former on ADE20K (150 classes), T x D = 1 x 4; 34,361,112 parameters like the official config."""
    return Spike2Former(**kwargs)


_CITYSCAPES_NOTE = ("The official Cityscapes config widens the SDTE channel-MLP to 2048 (37,491,605 params) "
                    "while the paper reports 34M (the 1024-wide MLP of the other datasets). The default tag "
                    "follows the official config, since that is what the released code trains and what "
                    "official checkpoints hold; t1d4_ffn1024 is the paper's size.")


@register_model(cfgs={
    "t1d4": _cfg("cityscapes", meta.CITYSCAPES_CLASSES, meta.CITYSCAPES_PALETTE, 1, 4, 37_491_605,
                 {"mIoU": 75.2, "params": "34M", "energy_mj": 93.8}, crop=(512, 1024),
                 model_args={"sdte_ffn_channels": 2048}, notes=_CITYSCAPES_NOTE, macs=112.217),
    "t1d4_ffn1024": _cfg("cityscapes", meta.CITYSCAPES_CLASSES, meta.CITYSCAPES_PALETTE, 1, 4, 34_327_445,
                         {"mIoU": 75.2, "params": "34M", "energy_mj": 93.8}, crop=(512, 1024),
                         model_args={"sdte_ffn_channels": 1024}, notes=_CITYSCAPES_NOTE, macs=105.774),
}, checkpoint_filter=convert_official_checkpoint, test_args=_TEST_ARGS)
def spike2former_cityscapes(**kwargs) -> Spike2Former:
    """Spike2Former on Cityscapes (19 classes), 1 x 4; see the config notes on the SDTE width."""
    return Spike2Former(**kwargs)


_VOC_PAPER = {"t1d2": (61.8, 50.6), "t2d2": (62.1, 98.3), "t1d4": (75.1, 63.0), "t2d4": (75.3, 117.4),
              "t4d4": (75.4, 221.9), "t1d8": (76.0, 66.9)}


@register_model(cfgs={
    tag: _cfg("voc2012", meta.VOC_CLASSES, meta.VOC_PALETTE, int(tag[1]), int(tag[3]), 34_327_959,
              {"mIoU": miou, "params": "34M", "energy_mj": energy}, macs=53.342)
    for tag, (miou, energy) in _VOC_PAPER.items()}, default_tag="t1d4",
    checkpoint_filter=convert_official_checkpoint, test_args=_TEST_ARGS)
def spike2former_voc2012(**kwargs) -> Spike2Former:
    """Spike2Former on Pascal VOC 2012 (21 classes); tags select the paper's T x D settings."""
    return Spike2Former(**kwargs)


_COCO_THINGS = tuple(bool(c.isthing) for c in meta.COCO_PANOPTIC_CATEGORIES)


@register_model(cfgs={"t1d4": _cfg(
    "coco_panoptic", meta.COCO_PANOPTIC_CLASSES, meta.COCO_PANOPTIC_PALETTE, 1, 4, 34_356_743,
    {"PQ": 30.9, "PQ_things": 31.7, "PQ_stuff": 30.0, "params": "34M", "energy_mj": 222.6},
    crop=(1024, 1024), task="panoptic", model_args={"task": "panoptic", "thing_classes": _COCO_THINGS},
    macs=210.642,
    notes="The release has no COCO panoptic config; this follows the paper (large-scale jitter, crop 1024) "
          "with Mask2Former's panoptic post-processing.")},
    checkpoint_filter=convert_official_checkpoint, test_args=_TEST_ARGS)
def spike2former_coco_panoptic(**kwargs) -> Spike2Former:
    """Spike2Former for COCO panoptic segmentation (133 classes: 80 things, 53 stuff), 1 x 4."""
    return Spike2Former(**kwargs)


# The camvid recipe's full step (data loading, forward, matching, losses, backward, AdamW; batch 4 of 352x480
# crops) takes 1.1-1.4 s on 2 CPU cores at these widths; the stride-2 stage of the backbone and the stride-2
# mask features dominate it, so the widths there are the smallest.
CAMVID_WIDTHS = dict(CAMVID_BACKBONE, feat_channels=32, encoder_layers=1, sdte_ffn_channels=64, sdda_groups=4,
                     decoder_layers=3, decoder_heads=4, decoder_ffn_channels=128, num_queries=20)


@register_model(cfgs={"t1d4": _cfg(
    "camvid", meta.CAMVID_CLASSES, meta.CAMVID_PALETTE, 1, 4, 570_325, {}, crop=(360, 480),
    model_args=dict(CAMVID_WIDTHS), macs=0.995,
    notes="A scaled-down Spike2Former meant to train on 2 CPU cores; not in the paper.")},
    checkpoint_filter=convert_official_checkpoint, test_args=_TEST_ARGS)
def spike2former_camvid(**kwargs) -> Spike2Former:
    """A small Spike2Former for CamVid (11 classes) that trains on a CPU: see ``CAMVID_WIDTHS``."""
    return Spike2Former(**kwargs)
