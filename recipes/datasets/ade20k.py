"""ADE20K (SceneParsing, ADEChallengeData2016): the dataset class (conventions: :mod:`recipes.datasets`)."""
from __future__ import annotations

import os

import numpy as np

from .base import (IGNORE_INDEX, SegmentationDataset, _list_files, _lut_map, _pair_or_raise, _require_dir,
                   _split_dir)


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
