"""Cityscapes (fine annotations): the dataset class and the labelIds -> trainIds conversion
(conventions: :mod:`recipes.datasets`)."""
from __future__ import annotations

import os
from typing import Dict, Iterable, Tuple

import numpy as np
from PIL import Image as PILImage

from .base import (DatasetLayoutError, IGNORE_INDEX, SegmentationDataset, _list_files, _pair_or_raise,
                   _require_dir)


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
