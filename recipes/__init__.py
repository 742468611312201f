"""Training and evaluation recipes for spikezoo models: ``python -m recipes``.

- :mod:`recipes.datasets` / :mod:`recipes.transforms`: ADE20K, Cityscapes, VOC 2012,
  COCO panoptic and CamVid in their standard layouts (see DATASETS.md).
- :mod:`recipes.matcher` / :mod:`recipes.losses`: Hungarian matching and the
  mask-classification losses; per-pixel cross-entropy for SpikeFPN.
- :mod:`recipes.metrics`: mIoU / mAcc / aAcc and PQ / SQ / RQ.
- :mod:`recipes.engine`: the training loop (DDP under torchrun), evaluation, checkpoints.
- :mod:`recipes.configs`: one recipe per file.
"""
from .config import apply_overrides, list_recipes, load_recipe
from .datasets import DATASET_CLASSES, BadSampleError, DatasetError, build_dataset, collate_samples
from .losses import PerPixelCrossEntropy, SetCriterion
from .matcher import HungarianMatcher, semantic_to_targets
from .metrics import PanopticQuality, SemanticMetrics
from .transforms import eval_transforms, train_transforms

__all__ = ["list_recipes", "load_recipe", "apply_overrides", "build_dataset", "collate_samples",
           "DATASET_CLASSES", "DatasetError", "BadSampleError", "train_transforms", "eval_transforms",
           "HungarianMatcher", "semantic_to_targets", "SetCriterion", "PerPixelCrossEntropy",
           "SemanticMetrics", "PanopticQuality"]
