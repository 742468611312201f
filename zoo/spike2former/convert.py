"""Loading checkpoints of the official Spike2Former code (mmseg ``EncoderDecoder``) and ImageNet backbones."""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn as nn

from ..backbones.meta_spikeformer import convert_official_backbone, is_imagenet_backbone, with_imagenet_backbone
from ..hub import UnknownKeysError, mismatch_error
from .pixel_decoder import convert_official_pixel_decoder
from .sdme import OFFICIAL_SDME_ROOTS, convert_official_sdme
from .transformer_decoder import OFFICIAL_DECODER_ROOTS, convert_official_decoder

__all__ = ["convert_official_checkpoint"]

# Our modules, with the official prefix their converter strips and the converter.
_PARTS = {
    "backbone": ("backbone.", convert_official_backbone),
    "pixel_decoder": ("decode_head.pixel_decoder.", convert_official_pixel_decoder),
    "transformer_decoder": ("decode_head.", convert_official_decoder),
    "sdme": ("decode_head.", convert_official_sdme),
}
# The official decode_head's modules (a key's first name after ``decode_head.``) -> ours.
_HEAD_MODULES = {"pixel_decoder": "pixel_decoder",
                 **{root: "transformer_decoder" for root in OFFICIAL_DECODER_ROOTS},
                 **{root: "sdme" for root in OFFICIAL_SDME_ROOTS}}


def _our_part(key: str) -> Optional[str]:
    """Our module that an official key belongs to; None for a key the official model does not have."""
    if key.startswith("backbone."):
        return "backbone"
    if key.startswith("decode_head."):
        return _HEAD_MODULES.get(key[len("decode_head."):].split(".", 1)[0])
    return None


def convert_official_checkpoint(state: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Official keys -> ours.

    - A full checkpoint (``backbone.*`` + ``decode_head.*``) converts entirely. Every
      key must be one the official model has: others (``auxiliary_head.*``, which the
      official config does not build, ``neck.*``, a stray ``decode_head.*``, top-level
      ones) raise :class:`~zoo.hub.CheckpointMismatchError` naming all of them.
    - A Meta-SpikeFormer ImageNet checkpoint initialises the backbone only (its
      ``head.*`` is dropped); the other parts keep the model's current values. It
      must hold every backbone tensor (see ``with_imagenet_backbone``).
    Anything else raises ``KeyError``.
    """
    if is_imagenet_backbone(state):
        return with_imagenet_backbone(state, model)
    if not any(k.startswith("backbone.") for k in state) or not any(k.startswith("decode_head.") for k in state):
        raise KeyError("expected official keys 'backbone.*' and 'decode_head.*' "
                       "or a Meta-SpikeFormer ImageNet checkpoint")
    parts: Dict[str, Dict[str, torch.Tensor]] = {ours: {} for ours in _PARTS}
    unexpected = []
    for key, value in state.items():
        ours = _our_part(key)
        if ours is None:
            unexpected.append(key)
        else:
            parts[ours][key[len(_PARTS[ours][0]):]] = value
    converted = {}
    for ours, (official_prefix, convert) in _PARTS.items():
        try:
            converted.update({f"{ours}.{k}": v for k, v in convert(parts[ours]).items()})
        except UnknownKeysError as err:
            unexpected += [official_prefix + key for key in err.keys]
    if unexpected:
        raise mismatch_error("an official Spike2Former checkpoint with keys the official model does not have",
                             unexpected=unexpected)
    return converted
