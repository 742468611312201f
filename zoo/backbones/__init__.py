"""Backbones: the Meta-SpikeFormer (Spike-driven Transformer V2) family."""
from .meta_spikeformer import CAMVID_BACKBONE, MetaSpikeFormer, convert_official_backbone

__all__ = ["MetaSpikeFormer", "convert_official_backbone", "CAMVID_BACKBONE"]
