"""Spike2Former (Lei et al., AAAI 2025): pixel decoder with SDTE, spike-driven transformer decoder, SDME head."""
from . import models
from .pixel_decoder import ESC, SDDA, ChannelMLP, SDTELayer, SpikePixelDecoder
from .sdme import SDME
from .segmentor import Spike2Former
from .transformer_decoder import SDTDLayer, SpikeDrivenAttention, SpikeTransformerDecoder

__all__ = ["Spike2Former", "SpikePixelDecoder", "SDTELayer", "ESC", "SDDA", "ChannelMLP",
           "SpikeTransformerDecoder", "SDTDLayer", "SpikeDrivenAttention", "SDME", "models"]
