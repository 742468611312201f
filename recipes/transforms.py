"""Training / evaluation transforms for the sample dicts of ``recipes.datasets``.

Every transform is a callable ``sample_dict -> sample_dict`` built on
``torchvision.transforms.v2.functional`` kernels and ``tv_tensors``: geometric
transforms apply to the ``tv_tensors.Image`` (bilinear) and to every
``tv_tensors.Mask`` in the sample (nearest neighbour, so label values and the
255 ignore value survive): ``label``, the panoptic ``masks`` and
``segment_ids``. Plain tensors (``labels``, ``isthing``, ``mask_ids``), strings
and lists pass through, except that ``FilterEmptySegments`` drops segments
whose mask a crop removed. Randomness comes from torch's global RNG (seeded per
DataLoader worker by PyTorch).

The pipelines (mmsegmentation's, as the released Spike2Former configs use them):

* train: ``RandomResize`` (short side drawn from ``scales``, long side capped at
  ``max_long_side``) -> ``RandomCrop`` (``cat_max_ratio`` 0.75, 10 tries) ->
  ``RandomHorizontalFlip`` (0.5) -> ``PhotoMetricDistortion`` -> ``Normalize``
  -> ``Pad`` to the crop size (image 0 *after* normalisation, i.e. the mean
  colour, as mmseg's data preprocessor; label 255) -> ``FilterEmptySegments``.
* eval: ``ResizeKeepRatio`` to ``(long, short)`` -> ``Normalize``. By default
  only the image is resized; the label (and panoptic targets) stay at the
  stored resolution, because mmseg evaluates at the original size (resize the
  prediction back to ``sample["label"].shape``). ``resize_targets=True``
  resizes them too.

Each recipe's ``data`` section holds the arguments (the one source: ``recipes/DATASETS.md``
lists them, and a test checks the list); ``build_transforms(recipe, train, mean, std)`` builds them.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from zoo.preprocess import keep_ratio_size

__all__ = [
    "IGNORE_INDEX", "RandomResize", "ResizeKeepRatio", "RandomCrop", "RandomHorizontalFlip",
    "PhotoMetricDistortion", "Normalize", "Pad", "FilterEmptySegments", "short_side_size",
    "keep_ratio_size", "rgb_to_hsv", "hsv_to_rgb", "train_transforms", "eval_transforms",
    "build_transforms", "describe",
]

IGNORE_INDEX = 255
Sample = Dict[str, Any]


def _is_image(v: Any) -> bool:
    return isinstance(v, tv_tensors.Image)


def _is_mask(v: Any) -> bool:
    return isinstance(v, tv_tensors.Mask)


def _hw(sample: Sample) -> Tuple[int, int]:
    h, w = sample["image"].shape[-2:]
    return int(h), int(w)


def _randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's global RNG."""
    return int(torch.randint(low, high + 1, (1,)).item())


def _uniform(low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand(()).item())


# ----------------------------------------------------------------------------- resizing
def short_side_size(h: int, w: int, short: float, max_long: Optional[float] = None) -> Tuple[int, int]:
    """mmseg ``ResizeShortestEdge``: short side -> ``short``, then shrink so the long side <= ``max_long``."""
    scale = short / min(h, w)
    new_h, new_w = h * scale, w * scale
    if max_long is not None and max(new_h, new_w) > max_long:
        s = max_long / max(new_h, new_w)
        new_h, new_w = new_h * s, new_w * s
    return max(1, int(new_h + 0.5)), max(1, int(new_w + 0.5))


def _resize_sample(sample: Sample, size: Tuple[int, int], targets: bool = True) -> Sample:
    out = dict(sample)
    for k, v in sample.items():
        if _is_image(v):
            out[k] = F.resize(v, list(size), interpolation=v2.InterpolationMode.BILINEAR, antialias=True)
        elif targets and _is_mask(v):
            out[k] = F.resize(v, list(size), interpolation=v2.InterpolationMode.NEAREST)
    return out


class RandomResize:
    """Random rescale keeping the aspect ratio.

    ``mode='choice'`` (mmseg ``RandomChoiceResize`` + ``ResizeShortestEdge``): the
    short side is drawn from the list ``scales``; ``mode='range'``: the short side
    is uniform in ``[scales[0], scales[1]]``; ``mode='long_range'`` (large-scale
    jitter): the *long* side is uniform in ``[scales[0], scales[1]]``. The long
    side is then capped at ``max_long_side`` (if given).
    """

    def __init__(self, scales: Sequence[int], max_long_side: Optional[int] = None, mode: str = "choice"):
        if mode not in ("choice", "range", "long_range"):
            raise ValueError(f"mode must be 'choice', 'range' or 'long_range', got {mode!r}")
        if not scales or (mode != "choice" and len(scales) != 2):
            raise ValueError(f"scales {scales!r} do not fit mode {mode!r}")
        self.scales, self.max_long_side, self.mode = list(scales), max_long_side, mode

    def get_size(self, h: int, w: int) -> Tuple[int, int]:
        if self.mode == "choice":
            return short_side_size(h, w, self.scales[_randint(0, len(self.scales) - 1)], self.max_long_side)
        target = _uniform(*self.scales)
        if self.mode == "range":
            return short_side_size(h, w, target, self.max_long_side)
        target = min(target, self.max_long_side) if self.max_long_side else target
        return short_side_size(h, w, target * min(h, w) / max(h, w))

    def __call__(self, sample: Sample) -> Sample:
        return _resize_sample(sample, self.get_size(*_hw(sample)))

    def __repr__(self):
        return f"RandomResize(scales={self.scales}, max_long_side={self.max_long_side}, mode={self.mode!r})"


class ResizeKeepRatio:
    """Deterministic keep-ratio resize to ``scale = (long, short)`` (mmseg test ``Resize``).

    ``resize_targets=False`` resizes the image only (evaluate at the label's size).
    """

    def __init__(self, scale: Tuple[int, int], resize_targets: bool = False):
        self.scale, self.resize_targets = tuple(scale), resize_targets

    def __call__(self, sample: Sample) -> Sample:
        return _resize_sample(sample, keep_ratio_size(*_hw(sample), self.scale), targets=self.resize_targets)

    def __repr__(self):
        return f"ResizeKeepRatio(scale={self.scale}, resize_targets={self.resize_targets})"


# ----------------------------------------------------------------------------- crop / flip / pad
class RandomCrop:
    """mmseg ``RandomCrop`` with ``cat_max_ratio``.

    A ``size = (h, w)`` window at a uniform offset (the whole extent along an
    axis where the image is smaller; ``Pad`` fills up later). With
    ``cat_max_ratio < 1`` up to ``max_tries`` (10) windows are drawn until the
    label crop has at least two classes and none covers ``cat_max_ratio`` or more
    of its non-ignored pixels; otherwise the last window is used.
    """

    def __init__(self, size: Union[int, Tuple[int, int]], cat_max_ratio: float = 1.0,
                 ignore_index: int = IGNORE_INDEX, max_tries: int = 10):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.cat_max_ratio, self.ignore_index, self.max_tries = cat_max_ratio, ignore_index, max_tries

    def _random_box(self, h: int, w: int) -> Tuple[int, int, int, int]:
        ch, cw = min(self.size[0], h), min(self.size[1], w)
        return _randint(0, h - ch), _randint(0, w - cw), ch, cw

    def _ok(self, label: torch.Tensor, box: Tuple[int, int, int, int]) -> bool:
        top, left, ch, cw = box
        crop = label[..., top:top + ch, left:left + cw]
        crop = crop[crop != self.ignore_index]
        if crop.numel() == 0:
            return False
        counts = torch.unique(crop, return_counts=True)[1]
        return len(counts) > 1 and counts.max().item() / counts.sum().item() < self.cat_max_ratio

    def get_box(self, sample: Sample) -> Tuple[int, int, int, int]:
        h, w = _hw(sample)
        box = self._random_box(h, w)
        label = sample.get("label")
        if self.cat_max_ratio < 1.0 and label is not None:
            for _ in range(self.max_tries):
                if self._ok(label, box):
                    break
                box = self._random_box(h, w)
        return box

    def __call__(self, sample: Sample) -> Sample:
        top, left, ch, cw = self.get_box(sample)
        out = dict(sample)
        for k, v in sample.items():
            if _is_image(v) or _is_mask(v):
                out[k] = F.crop(v, top, left, ch, cw)
        return out

    def __repr__(self):
        return f"RandomCrop(size={self.size}, cat_max_ratio={self.cat_max_ratio})"


class RandomHorizontalFlip:
    """Flip the image and every mask together with probability ``p``."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(()).item() >= self.p:
            return sample
        out = dict(sample)
        for k, v in sample.items():
            if _is_image(v) or _is_mask(v):
                out[k] = F.horizontal_flip(v)
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Pad:
    """Pad bottom/right to at least ``size``: image with ``fill_image``, ``label``
    (and ``segment_ids``' void is 0) with ``fill_label``, other masks with 0."""

    def __init__(self, size: Union[int, Tuple[int, int]], fill_image: float = 0.0, fill_label: int = IGNORE_INDEX):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.fill_image, self.fill_label = fill_image, fill_label

    def __call__(self, sample: Sample) -> Sample:
        h, w = _hw(sample)
        ph, pw = max(self.size[0] - h, 0), max(self.size[1] - w, 0)
        if ph == 0 and pw == 0:
            return sample
        out = dict(sample)
        for k, v in sample.items():
            if _is_image(v):
                out[k] = F.pad(v, [0, 0, pw, ph], fill=self.fill_image)
            elif _is_mask(v):
                fill = self.fill_label if k == "label" else 0
                out[k] = F.pad(v, [0, 0, pw, ph], fill=fill)
        return out

    def __repr__(self):
        return f"Pad(size={self.size}, fill_image={self.fill_image}, fill_label={self.fill_label})"


class FilterEmptySegments:
    """Panoptic samples: drop segments whose ``masks`` entry became empty (crop)."""

    keys = ("labels", "isthing", "mask_ids")

    def __call__(self, sample: Sample) -> Sample:
        masks = sample.get("masks")
        if masks is None or masks.shape[0] == 0:
            return sample
        keep = masks.flatten(1).any(1)
        if bool(keep.all()):
            return sample
        out = dict(sample)
        out["masks"] = tv_tensors.wrap(masks.as_subclass(torch.Tensor)[keep], like=masks)
        for k in self.keys:
            if k in sample:
                out[k] = sample[k][keep]
        return out

    def __repr__(self):
        return "FilterEmptySegments()"


# ----------------------------------------------------------------------------- photometric
def rgb_to_hsv(rgb: torch.Tensor) -> torch.Tensor:
    """[..., 3, H, W] float RGB in [0, 1] -> HSV with H in [0, 1) (fraction of a turn), S, V in [0, 1]."""
    r, g, b = rgb.unbind(-3)
    maxc, _ = rgb.max(-3)
    minc, _ = rgb.min(-3)
    delta = maxc - minc
    v = maxc
    s = torch.where(maxc > 0, delta / maxc.clamp_min(1e-12), torch.zeros_like(maxc))
    d = delta.clamp_min(1e-12)
    rc, gc, bc = (maxc - r) / d, (maxc - g) / d, (maxc - b) / d
    h = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(delta > 0, (h / 6.0) % 1.0, torch.zeros_like(h))
    return torch.stack([h, s, v], dim=-3)


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    h, s, v = hsv.unbind(-3)
    h6 = (h % 1.0) * 6.0
    i = torch.floor(h6)
    f = h6 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.long() % 6
    r = torch.stack([v, q, p, p, t, v], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    g = torch.stack([t, v, v, q, p, p], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    b = torch.stack([p, p, t, v, v, q], -3).gather(-3, i.unsqueeze(-3)).squeeze(-3)
    return torch.stack([r, g, b], dim=-3)


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion`` on the 0..255 image, each step with probability 0.5:

    brightness (add U(-32, 32)); contrast (multiply by U(0.5, 1.5)) either second
    or last (coin flip); saturation (HSV S times U(0.5, 1.5)); hue (shift by a
    random integer in [-18, 18) of OpenCV's 180-step hue circle). Values are
    clipped to [0, 255] after each step; a uint8 image comes back uint8
    (rounded once at the end). Differences from mmcv: HSV is computed in float
    rather than OpenCV's 8-bit HSV, and mmcv truncates to uint8 after each step.
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: Tuple[float, float] = (0.5, 1.5),
                 saturation_range: Tuple[float, float] = (0.5, 1.5), hue_delta: int = 18):
        self.brightness_delta = brightness_delta
        self.contrast_range, self.saturation_range, self.hue_delta = contrast_range, saturation_range, hue_delta

    @staticmethod
    def _coin() -> bool:
        return bool(torch.randint(0, 2, (1,)).item())

    def distort(self, img: torch.Tensor) -> torch.Tensor:
        """float [3, H, W] in 0..255 -> distorted float image in 0..255."""
        if self._coin():
            img = (img + _uniform(-self.brightness_delta, self.brightness_delta)).clamp(0, 255)
        contrast_first = self._coin()     # mmseg: mode == 1 -> contrast before saturation/hue
        if contrast_first and self._coin():
            img = (img * _uniform(*self.contrast_range)).clamp(0, 255)
        if self._coin():
            hsv = rgb_to_hsv(img / 255.0)
            hsv[..., 1, :, :] = (hsv[..., 1, :, :] * _uniform(*self.saturation_range)).clamp(0, 1)
            img = (hsv_to_rgb(hsv) * 255.0).clamp(0, 255)
        if self._coin():
            hsv = rgb_to_hsv(img / 255.0)
            shift = _randint(-self.hue_delta, self.hue_delta - 1) / 180.0 if self.hue_delta > 0 else 0.0
            hsv[..., 0, :, :] = (hsv[..., 0, :, :] + shift) % 1.0
            img = (hsv_to_rgb(hsv) * 255.0).clamp(0, 255)
        if not contrast_first and self._coin():
            img = (img * _uniform(*self.contrast_range)).clamp(0, 255)
        return img

    def __call__(self, sample: Sample) -> Sample:
        image = sample["image"]
        plain = image.as_subclass(torch.Tensor)
        out = self.distort(plain.float() if not plain.is_floating_point() else plain * 255.0)
        if plain.dtype == torch.uint8:
            out = out.round().to(torch.uint8)
        else:
            out = (out / 255.0).to(plain.dtype)
        return {**sample, "image": tv_tensors.wrap(out, like=image)}

    def __repr__(self):
        return (f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, contrast_range="
                f"{self.contrast_range}, saturation_range={self.saturation_range}, hue_delta={self.hue_delta})")


class Normalize:
    """uint8 (0..255) or float (0..1) image -> float32 ``(x / 255 - mean) / std`` (mean/std on the 0-1 scale)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        self._to_float = v2.ToDtype(torch.float32, scale=True)
        self._normalize = v2.Normalize(self.mean, self.std)

    def __call__(self, sample: Sample) -> Sample:
        return {**sample, "image": self._normalize(self._to_float(sample["image"]))}

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"


# ----------------------------------------------------------------------------- builders
def train_transforms(crop_size: Union[int, Tuple[int, int]], scales: Sequence[int], max_long_side: Optional[int],
                     mean: Sequence[float], std: Sequence[float], cat_max_ratio: float = 0.75,
                     scale_mode: str = "choice", flip_prob: float = 0.5, photometric: bool = True,
                     ignore_index: int = IGNORE_INDEX) -> v2.Compose:
    """Official training pipeline (see the module docstring); ``crop_size`` is ``(h, w)`` or an int."""
    steps: List[Callable] = [
        RandomResize(scales, max_long_side, scale_mode),
        RandomCrop(crop_size, cat_max_ratio, ignore_index),
        RandomHorizontalFlip(flip_prob),
    ]
    if photometric:
        steps.append(PhotoMetricDistortion())
    steps += [Normalize(mean, std), Pad(crop_size, 0.0, ignore_index), FilterEmptySegments()]
    return v2.Compose(steps)


def eval_transforms(scale: Optional[Tuple[int, int]], mean: Sequence[float], std: Sequence[float],
                    resize_targets: bool = False) -> v2.Compose:
    """Keep-ratio resize to ``scale = (long, short)`` (e.g. (2048, 512)) then normalise;
    ``scale=None`` keeps the native size (CamVid's 360x480)."""
    resize = [ResizeKeepRatio(scale, resize_targets)] if scale is not None else []
    return v2.Compose([*resize, Normalize(mean, std)])


def build_transforms(recipe: Union[str, Dict[str, Any]], train: bool, mean: Sequence[float],
                     std: Sequence[float]) -> v2.Compose:
    """The training or evaluation pipeline of a recipe (a name from ``python -m recipes list``, or a recipe
    dict): its ``data`` section is the one source of every augmentation setting."""
    if isinstance(recipe, str):
        from .config import load_recipe
        recipe = load_recipe(recipe)
    data = recipe["data"]
    if not train:
        return eval_transforms(data.get("eval_scale"), mean, std)
    return train_transforms(data["crop_size"], data["scales"], data["max_long_side"], mean, std,
                            cat_max_ratio=data.get("cat_max_ratio", 0.75), scale_mode=data.get("scale_mode", "choice"))


def describe(name: str, train: v2.Compose, evaluation: v2.Compose) -> str:
    """Built training and evaluation pipelines as one row of the augmentation table in
    ``recipes/DATASETS.md``, read from the transform objects themselves (a test checks the table)."""
    steps = {type(step): step for step in (*train.transforms, *evaluation.transforms)}
    resize, crop = steps[RandomResize], steps[RandomCrop]
    scales = resize.scales
    if resize.mode == "choice":
        listed = ", ".join(map(str, scales)) if len(scales) <= 5 else f"{scales[0]}, {scales[1]}, ..., {scales[-1]}"
        text = f"short side from {{{listed}}}"
    else:
        text = f"{'short' if resize.mode == 'range' else 'long'} side uniform in [{scales[0]}, {scales[1]}]"
    if resize.max_long_side:
        text += f", long side <= {resize.max_long_side}"
    cat = f"{crop.cat_max_ratio:g}" if crop.cat_max_ratio < 1 else "off"
    extras = [f"flip {steps[RandomHorizontalFlip].p:g}"] if RandomHorizontalFlip in steps else []
    extras += ["photometric distortion"] if PhotoMetricDistortion in steps else []
    evaluated = f"keep-ratio {steps[ResizeKeepRatio].scale}" if ResizeKeepRatio in steps else "native size"
    return (f"| `{name}` | {text} | {crop.size[0]}x{crop.size[1]} | {cat} | {', '.join(extras) or 'none'} | "
            f"{evaluated} |")
