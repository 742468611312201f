"""Loading checkpoints of the official Spike2Former code (mmseg ``EncoderDecoder``) and ImageNet backbones."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

from ..backbones.meta_spikeformer import convert_official_backbone, is_imagenet_backbone
from .pixel_decoder import convert_official_pixel_decoder
from .sdme import convert_official_sdme
from .transformer_decoder import convert_official_decoder

__all__ = ["convert_official_checkpoint"]

_DECODER_KEYS = ("transformer_decoder.", "query_embed.", "query_feat.", "level_embed.")


def _strip(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _add(prefix: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def convert_official_checkpoint(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official keys -> ours.

    - A full checkpoint (``backbone.*`` + ``decode_head.*``) converts entirely.
    - A Meta-SpikeFormer ImageNet checkpoint initialises the backbone only (its
      ``head.*`` is dropped); the other parts keep the model's current values.
    Anything else raises ``KeyError``.
    """
    if is_imagenet_backbone(state):
        return {**model.state_dict(), **_add("backbone.", convert_official_backbone(state))}
    if not any(k.startswith("backbone.") for k in state) or not any(k.startswith("decode_head.") for k in state):
        raise KeyError("expected official keys 'backbone.*' and 'decode_head.*' "
                       "or a Meta-SpikeFormer ImageNet checkpoint")
    head = _strip(state, "decode_head.")
    pixel = _strip(head, "pixel_decoder.")
    decoder = {k: v for k, v in head.items() if k.startswith(_DECODER_KEYS)}
    sdme = {k: v for k, v in head.items() if not k.startswith(("pixel_decoder.",) + _DECODER_KEYS)}
    return {**_add("backbone.", convert_official_backbone(_strip(state, "backbone."))),
            **_add("pixel_decoder.", convert_official_pixel_decoder(pixel)),
            **_add("transformer_decoder.", convert_official_decoder(decoder)),
            **_add("sdme.", convert_official_sdme(sdme))}
