"""The shared part of the datasets: errors, file reading, the base class, sample collation
(conventions: :mod:`recipes.datasets`)."""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset
from torchvision import tv_tensors

from zoo.datasets_meta import DATASETS as _META
from zoo.images import ImageReadError, read_rgb

# one logger for every dataset module, named after the package users configure
logger = logging.getLogger("recipes.datasets")

IGNORE_INDEX = 255
_IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


# ----------------------------------------------------------------------------- errors
class DatasetError(RuntimeError):
    """Base class of the errors raised by these datasets."""


class DatasetLayoutError(DatasetError, FileNotFoundError):
    """A folder or index file the layout requires is missing (raised on construction)."""


class EmptyDatasetError(DatasetError, ValueError):
    """The split has no samples."""


class BadSampleError(DatasetError):
    """A sample cannot be used: missing / unreadable file, size mismatch, bad label values."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


class LabelValueError(BadSampleError, ValueError):
    """Label values outside ``[0, num_classes)`` other than the ignore value."""

    def __init__(self, message: str, path: str, values: Sequence[int]):
        super().__init__(message, path)
        self.values = list(values)


def _layout_error(what: str, path: str, layout: str) -> DatasetLayoutError:
    return DatasetLayoutError(f"{what} not found: {path}\nexpected layout:\n{layout}")


def _require_dir(path: str, layout: str, what: str = "folder") -> str:
    if not os.path.isdir(path):
        raise _layout_error(what, path, layout)
    return path


def _require_file(path: str, layout: str, what: str = "file") -> str:
    if not os.path.isfile(path):
        raise _layout_error(what, path, layout)
    return path


# ----------------------------------------------------------------------------- file reading
def _read_image(path: str) -> torch.Tensor:
    """RGB uint8 [3, H, W] (deep images scaled to 8 bits, see zoo.images); BadSampleError naming ``path``."""
    try:
        arr = read_rgb(path)
    except ImageReadError as exc:
        raise BadSampleError(str(exc), path) from exc
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def _read_label_array(path: str, *, rgb: bool = False) -> np.ndarray:
    """Single-channel label PNG as an int64 [H, W] array (palette PNGs give their indices)."""
    if not os.path.isfile(path):
        raise BadSampleError(f"label file not found: {path}", path)
    try:
        with PILImage.open(path) as im:
            if rgb:
                arr = np.asarray(im.convert("RGB"))
            else:
                if im.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "1"):
                    raise BadSampleError(
                        f"label file {path} has mode {im.mode!r}; expected a single-channel "
                        "(L/P/I) PNG of class indices", path)
                arr = np.asarray(im)
    except BadSampleError:
        raise
    except Exception as exc:
        raise BadSampleError(f"cannot read label file {path}: {exc}", path) from exc
    return arr.astype(np.int64)


def _lut_map(raw: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map raw values through ``lut``; values past its end become -1 (reported as out of range)."""
    out = np.full(raw.shape, -1, dtype=np.int64)
    ok = (raw >= 0) & (raw < len(lut))
    out[ok] = lut[raw[ok]]
    return out


# ----------------------------------------------------------------------------- base class
class SegmentationDataset(Dataset):
    """Common machinery: sample list, reading, label checks, ``skip_bad``.

    Subclasses set ``meta_name`` and fill ``self.samples`` (``(image_path,
    label_path)`` pairs) in ``_scan()``; they may override ``_map_label`` (raw
    array -> class indices / 255) and ``_load``.
    """

    meta_name: str = ""
    layout: str = ""

    def __init__(self, root: str, split: str = "train", transforms: Optional[Callable] = None,
                 skip_bad: bool = False, check_labels: bool = True):
        meta = _META[self.meta_name]
        self.root = os.fspath(root)
        self.split = split
        self.transforms = transforms
        self.skip_bad = skip_bad
        self.check_labels = check_labels
        self.classes: Tuple[str, ...] = tuple(meta.classes)
        self.palette = tuple(meta.palette)
        self.num_classes: int = len(self.classes)
        self.ignore_index: int = IGNORE_INDEX
        self.bad_indices: set = set()
        _require_dir(self.root, self.layout, "dataset root folder")
        self.samples: List[Tuple[str, str]] = self._scan()
        if not self.samples:
            raise EmptyDatasetError(
                f"{type(self).__name__}: split {split!r} under {self.root} has no samples\n"
                f"expected layout:\n{self.layout}")

    # -- to override ---------------------------------------------------------------------------
    def _scan(self) -> List[Tuple[str, str]]:
        raise NotImplementedError

    def _map_label(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def _load(self, index: int) -> Dict[str, Any]:
        image_path, label_path = self.samples[index]
        image = _read_image(image_path)
        raw = _read_label_array(label_path)
        label = self._map_label(raw)
        self._check_label(label, image, label_path, raw)
        return {"image": tv_tensors.Image(image), "label": tv_tensors.Mask(torch.from_numpy(label)),
                "path": image_path, "label_path": label_path, "ori_size": tuple(image.shape[-2:])}

    # -- shared --------------------------------------------------------------------------------
    def _check_label(self, label: np.ndarray, image: torch.Tensor, label_path: str,
                     raw: Optional[np.ndarray] = None) -> None:
        if tuple(label.shape) != tuple(image.shape[-2:]):
            raise BadSampleError(
                f"label file {label_path} is {label.shape[0]}x{label.shape[1]} but its image is "
                f"{image.shape[-2]}x{image.shape[-1]}", label_path)
        if self.check_labels:
            bad = (label < 0) | ((label >= self.num_classes) & (label != IGNORE_INDEX))
            if bad.any():
                values = sorted(int(v) for v in np.unique((label if raw is None else raw)[bad]))
                raise LabelValueError(
                    f"label file {label_path} has invalid values {values[:20]}"
                    f"{' (and more)' if len(values) > 20 else ''}: they map outside the classes "
                    f"[0, {self.num_classes}) and are not ignored ({type(self).__name__} maps raw values "
                    f"to class indices / {IGNORE_INDEX} as documented)", label_path, values)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        n = len(self.samples)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"index {index} out of range for {n} samples")
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self.bad_indices:
                continue
            try:
                sample = self._load(i)
            except BadSampleError as exc:
                if not self.skip_bad:
                    raise
                self.bad_indices.add(i)
                logger.warning("skipping bad sample %d of %s: %s", i, type(self).__name__, exc)
                continue
            if self.transforms is not None:
                sample = self.transforms(sample)
            return sample
        raise DatasetError(f"{type(self).__name__}: every sample under {self.root} is bad")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(root={self.root!r}, split={self.split!r}, "
                f"samples={len(self)}, num_classes={self.num_classes})")


def _list_files(folder: str, suffixes: Sequence[str]) -> List[str]:
    suffixes = tuple(x.lower() for x in suffixes)
    return sorted(e.name for e in os.scandir(folder) if e.is_file() and e.name.lower().endswith(suffixes))


def _pair_or_raise(pairs: List[Tuple[str, str]], existing_labels: set, skip_bad: bool,
                   name: str) -> List[Tuple[str, str]]:
    """Keep pairs whose label file exists; otherwise raise (or log and drop with skip_bad)."""
    missing = [p for p in pairs if p[1] not in existing_labels]
    if missing:
        msg = (f"{name}: {len(missing)} image(s) have no label file, e.g. {missing[0][1]} "
               f"(for image {missing[0][0]})")
        if not skip_bad:
            raise BadSampleError(msg, missing[0][1])
        logger.warning("%s; skipping them", msg)
        missing_set = set(missing)
        pairs = [p for p in pairs if p not in missing_set]
    return pairs


def _split_dir(split: str, aliases: Dict[str, str]) -> str:
    return aliases.get(split, split)


def collate_samples(batch: List[Dict[str, Any]]) -> Dict[str, Any]:
    """DataLoader ``collate_fn``: stacks ``image``/``label`` when all share a shape
    (training crops), everything else (and differently sized tensors) becomes a list."""
    out: Dict[str, Any] = {}
    for key in batch[0]:
        values = [b[key] for b in batch]
        if key in ("image", "label") and all(isinstance(v, torch.Tensor) for v in values) \
                and len({tuple(v.shape) for v in values}) == 1:
            out[key] = torch.stack([v.as_subclass(torch.Tensor) for v in values])
        else:
            out[key] = values
    return out
