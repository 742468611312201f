"""Reading image files as 8-bit RGB, the input every spikezoo model and recipe starts from.

PIL's ``convert("RGB")`` clips 16-bit and 32-bit grey values to 255 (a 16-bit PNG comes out
almost white), so deep images are scaled to 8 bits here instead: 16-bit values by ``v / 257``
(65535 -> 255), 32-bit integer and float images by the range their values show (a 0-1 float
image is scaled by 255; values past 65535 or outside 0-255 for floats are refused, since no
scale can be read off them). Palette, grey, CMYK and alpha images become RGB as PIL converts
them (alpha is dropped).
"""
from __future__ import annotations

import logging
import os
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageReadError", "read_rgb", "to_rgb"]

log = logging.getLogger(__name__)

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


class ImageReadError(OSError):
    """An image file that is missing, not an image, truncated, or holds values no 8-bit scale fits."""


def to_rgb(image: Image.Image, name: str = "image") -> np.ndarray:
    """An opened PIL image as ``uint8 [H, W, 3]`` RGB, deep images scaled to 8 bits (see the module docstring)."""
    mode = image.mode
    if mode in _SIXTEEN_BIT or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if values.size == 0:
            raise ImageReadError(f"{name} is empty ({image.width}x{image.height})")
        low, high = float(values.min()), float(values.max())
        if mode in _SIXTEEN_BIT:
            scale = 1 / 257
        elif mode == "I" and low >= 0 and high <= 255:
            scale = 1.0
        elif mode == "I" and low >= 0 and high <= 65535:
            scale = 1 / 257
        elif mode == "F" and low >= 0 and high <= 1:
            scale = 255.0
        elif mode == "F" and low >= 0 and high <= 255:
            scale = 1.0
        else:
            raise ImageReadError(f"{name} is a {mode!r} image with values {low:g}..{high:g}: no 8-bit scale "
                                 "fits them; save it as 8- or 16-bit RGB or grey")
        if scale != 1.0:
            log.info("%s: %s image scaled to 8 bits (x %.6g)", name, mode, scale)
        grey = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode != "RGB":
        image = image.convert("RGB")
    return np.array(image)  # writable, so that torch.from_numpy needs no copy


def read_rgb(path: Union[str, os.PathLike]) -> np.ndarray:
    """The image file at ``path`` as ``uint8 [H, W, 3]`` RGB; :class:`ImageReadError` naming the file otherwise."""
    if not os.path.isfile(path):
        raise ImageReadError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(image, str(path))
    except ImageReadError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:  # PIL's errors for bad files
        raise ImageReadError(f"cannot read image file {path}: {err}") from err
