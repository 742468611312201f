"""One way from an image to a model's input: the same for ``predict``, the analysis tools, the notebooks,
the recipes' evaluation and the tests.

    preprocess = zoo.get_pretrained_cfg("spike2former_camvid").transforms()   # or model.pretrained_cfg.transforms()
    x = preprocess(image)            # a PIL image, a numpy array, a uint8/float tensor or a file path -> [3, H, W]
    batch = model.preprocess([a, b]) # -> [B, 3, H, W], ready for model(batch) / model.predict(batch)

Accepted images:

- PIL images of any mode (converted to RGB as :mod:`zoo.images` does, deep images scaled to 8 bits);
- file paths (read by :func:`zoo.images.read_rgb`);
- numpy arrays ``[H, W, 3]`` (or ``[H, W]`` grey), uint8 0..255 or float 0..1;
- torch tensors ``[3, H, W]`` (or ``[H, W]`` grey; channel-first as torchvision), uint8 0..255 or float 0..1.

Then, in this order: a keep-ratio resize when the config has an ``eval_scale`` ``(long, short)``
(the largest size whose long side is at most ``long`` and short side at most ``short``, mmcv's
``rescale_size``; bilinear with antialiasing, on the 8-bit image for 8-bit input, as the recipes'
evaluation resizes), conversion to float 0..1, and normalisation with the config's mean and std.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2.functional import normalize, resize, to_dtype

__all__ = ["Preprocess", "keep_ratio_size", "ImageInput"]

ImageInput = Union["PIL.Image.Image", np.ndarray, torch.Tensor, str, os.PathLike]  # noqa: F821


def keep_ratio_size(h: int, w: int, scale: Tuple[int, int]) -> Tuple[int, int]:
    """The largest ``(h', w')`` with the aspect ratio of ``(h, w)``, long side <= max(scale) and
    short side <= min(scale) (mmcv ``rescale_size(keep_ratio=True)``, rounded half up)."""
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return max(1, int(h * factor + 0.5)), max(1, int(w * factor + 0.5))


def _as_chw(image: ImageInput, name: str) -> torch.Tensor:
    """An image as a ``[3, H, W]`` tensor, uint8 (0..255) or float (0..1); errors say what was expected."""
    from PIL import Image

    from .images import read_rgb, to_rgb
    if isinstance(image, (str, os.PathLike)):
        return torch.from_numpy(read_rgb(image)).permute(2, 0, 1)
    if isinstance(image, Image.Image):
        return torch.from_numpy(to_rgb(image, name)).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3:
            hint = "; for channel-first data pass a torch tensor" if image.ndim == 3 and image.shape[0] == 3 else ""
            raise ValueError(f"{name}: a numpy image must be [H, W, 3] (RGB) or [H, W] (grey), got shape "
                             f"{list(image.shape)}{hint}")
        tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    elif isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dim() == 2:
            tensor = tensor.expand(3, *tensor.shape)
        if tensor.dim() != 3 or tensor.shape[0] != 3:
            hint = ("; an [H, W, 3] tensor needs .permute(2, 0, 1)" if tensor.dim() == 3 and tensor.shape[-1] == 3
                    else "; a batch goes to model.preprocess(list of images)" if tensor.dim() == 4 else "")
            raise ValueError(f"{name}: a tensor image must be [3, H, W] (RGB) or [H, W] (grey), got shape "
                             f"{list(tensor.shape)}{hint}")
    else:
        raise TypeError(f"{name}: expected a PIL image, a numpy array, a tensor or a file path, "
                        f"got {type(image).__name__}")
    if tensor.shape[1] == 0 or tensor.shape[2] == 0:
        raise ValueError(f"{name}: the image has no pixels (shape {list(tensor.shape)})")
    if tensor.dtype == torch.uint8:
        return tensor
    if not tensor.is_floating_point():
        raise TypeError(f"{name}: expected uint8 (0..255) or float (0..1) values, got {tensor.dtype}")
    low, high = float(tensor.min()), float(tensor.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name}: float images must hold values in 0..1, got {low:g}..{high:g} (uint8 images "
                         "hold 0..255; an already normalised image goes to the model directly)")
    return tensor.float()


class Preprocess:
    """Image -> normalised float32 ``[3, H, W]`` (see the module docstring). ``eval_scale``: the
    keep-ratio ``(long, short)`` resize, or None for the image's own size."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], eval_scale: Optional[Tuple[int, int]] = None):
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}")
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.eval_scale = tuple(eval_scale) if eval_scale is not None else None

    def output_size(self, h: int, w: int) -> Tuple[int, int]:
        return keep_ratio_size(h, w, self.eval_scale) if self.eval_scale is not None else (h, w)

    def __call__(self, image: ImageInput, name: str = "image") -> torch.Tensor:
        x = _as_chw(image, name)
        size = self.output_size(*x.shape[-2:])
        if size != tuple(x.shape[-2:]):  # on the 8-bit image, as the recipes' evaluation resizes its samples
            x = resize(x, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True)
        x = to_dtype(x.as_subclass(torch.Tensor), torch.float32, scale=True)  # uint8 / 255; floats as they are
        return normalize(x, list(self.mean), list(self.std))

    def batch(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Several images of one size (after the resize) as ``[B, 3, H, W]``."""
        if isinstance(images, (torch.Tensor, np.ndarray)) and getattr(images, "ndim", 0) == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("no images to preprocess")
        tensors = [self(image, f"image {i}") for i, image in enumerate(images)]
        sizes = sorted({tuple(t.shape[-2:]) for t in tensors})
        if len(sizes) > 1:
            raise ValueError(f"images of different sizes {sizes} cannot form one batch; preprocess them one at a "
                             "time, or resize them to one size first")
        return torch.stack(tensors)

    def __repr__(self) -> str:
        return f"Preprocess(mean={self.mean}, std={self.std}, eval_scale={self.eval_scale})"
