"""Training and evaluation recipes for spikezoo models: ``python -m recipes``.

- :mod:`recipes.datasets` / :mod:`recipes.transforms`: ADE20K, Cityscapes, VOC 2012,
  COCO panoptic and CamVid in their standard layouts (see DATASETS.md).
- :mod:`recipes.matcher` / :mod:`recipes.losses`: Hungarian matching and the
  mask-classification losses; per-pixel cross-entropy for SpikeFPN.
- :mod:`recipes.metrics`: mIoU / mAcc / aAcc and PQ / SQ / RQ.
- :mod:`recipes.engine`: the training loop (DDP under torchrun), evaluation, checkpoints.
- :mod:`recipes.configs`: one recipe per file.

The package imports its submodules on first use (PEP 562), so that ``python -m recipes`` can set
up OpenMP (:mod:`recipes.runtime`) before PyTorch is loaded.
"""
import importlib

_EXPORTS = {
    "config": ["apply_overrides", "list_recipes", "load_recipe"],
    "datasets": ["DATASET_CLASSES", "BadSampleError", "DatasetError", "build_dataset", "collate_samples"],
    "losses": ["PerPixelCrossEntropy", "SetCriterion"],
    "matcher": ["HungarianMatcher", "semantic_to_targets"],
    "metrics": ["PanopticQuality", "SemanticMetrics"],
    "transforms": ["eval_transforms", "train_transforms"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        return getattr(importlib.import_module(f".{_MODULE_OF[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
