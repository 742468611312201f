"""Pascal VOC 2012: the dataset class and the SBD augmentation's conversion (conventions:
:mod:`recipes.datasets`)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image as PILImage

from .base import SegmentationDataset, _list_files, _pair_or_raise, _require_dir, _require_file


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
