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

One module per dataset (``ade20k``, ``cityscapes``, ``voc``, ``camvid``, ``coco_panoptic``) on the
shared ``base``.

``python -m recipes.datasets cityscapes-trainids ROOT`` writes the
``*_gtFine_labelTrainIds.png`` files; ``python -m recipes.datasets voc-sbd SBD VOC``
builds ``SegmentationClassAug`` + ``train_aug.txt``; ``python -m recipes.datasets
check NAME ROOT [SPLIT]`` loads a dataset and reads a few samples.
"""
from __future__ import annotations

from .ade20k import ADE20KDataset
from .base import (IGNORE_INDEX, BadSampleError, DatasetError, DatasetLayoutError, EmptyDatasetError, LabelValueError,
                   SegmentationDataset, collate_samples)
from .camvid import CamVidDataset
from .cityscapes import (CITYSCAPES_ID_TO_TRAINID, CityscapesDataset, cityscapes_labelids_to_trainids,
                         convert_cityscapes_trainids)
from .coco_panoptic import COCOPanopticDataset, rgb_to_panoptic_id
from .voc import VOCDataset, convert_voc_sbd

__all__ = [
    "IGNORE_INDEX", "DatasetError", "DatasetLayoutError", "EmptyDatasetError", "BadSampleError",
    "LabelValueError", "SegmentationDataset", "ADE20KDataset", "CityscapesDataset", "VOCDataset",
    "COCOPanopticDataset", "CamVidDataset", "DATASET_CLASSES", "build_dataset", "collate_samples",
    "CITYSCAPES_ID_TO_TRAINID", "cityscapes_labelids_to_trainids", "convert_cityscapes_trainids",
    "convert_voc_sbd", "rgb_to_panoptic_id", "main",
]

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


def main(argv=None) -> int:
    """``python -m recipes.datasets``: see :mod:`recipes.datasets.__main__`."""
    from .__main__ import main as cli
    return cli(argv)
