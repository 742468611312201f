"""COCO panoptic (2017): the dataset class (conventions: :mod:`recipes.datasets`)."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, List

import numpy as np
import torch
from torchvision import tv_tensors

from zoo.datasets_meta import COCO_PANOPTIC_CATEGORIES

from .base import (BadSampleError, DatasetError, IGNORE_INDEX, LabelValueError, SegmentationDataset,
                   _list_files, _pair_or_raise, _read_image, _read_label_array, _require_dir, _require_file,
                   _split_dir)


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
