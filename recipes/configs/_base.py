"""Building blocks shared by the recipe files."""
from __future__ import annotations

import copy
from typing import Any, Dict

from zoo.datasets_meta import get_dataset_meta

# The official Spike2Former configs' schedule and optimiser.
OPTIM = dict(lr=1e-3, weight_decay=5e-3, betas=(0.9, 0.999), backbone_lr_mult=0.1, grad_clip=0.01,
             warmup_iters=1500, poly_power=1.0, poly_iters=None,
             no_decay=("query_feat", "query_pos", "level_embed"))
# compile: the fused mask-loss terms through torch.compile (same losses, faster on CPU);
# num_points: None = at every pixel of the label, as the official code; N = at N sampled points per mask;
# semantic_weight: 0 = off, as the official code; > 0 adds recipes.losses' semantic-score cross-entropy,
# weighted per class by semantic_class_weight (None: equal weights)
MASK_LOSS = dict(type="mask_classification", no_object_weight=0.1, class_weight=1.0, focal_weight=20.0,
                 dice_weight=1.0, compile=True, num_points=None, semantic_weight=0.0, semantic_class_weight=None)
PIXEL_LOSS = dict(type="per_pixel")
# ADE20K-style multi-scale training: short side int(x * 0.1 * 640), x = 5..20
ADE_SCALES = tuple(int(x * 0.1 * 640) for x in range(5, 21))


def recipe(model: str, dataset: str, root: str, train_split: str, val_split: str, *, crop_size, scales,
           max_long_side, batch_size: int, iters: int, eval_interval: int, checkpoint_interval: int,
           scale_mode: str = "choice", cat_max_ratio: float = 0.75, loss=MASK_LOSS, optim_overrides=None,
           model_kwargs=None, num_workers: int = 4, log_interval: int = 50, amp: bool = True,
           execution=None) -> Dict[str, Any]:
    """One recipe. ``scales`` with ``scale_mode``: 'choice' draws the short side from the list, 'range'
    uniformly between its two values, 'long_range' draws the long side (large-scale jitter). The evaluation
    resize is the dataset's (``zoo.datasets_meta``), so that the model's ``pretrained_cfg.transforms()``
    preprocesses images as the recipe evaluates them."""
    eval_scale = get_dataset_meta(dataset).eval_scale
    return dict(
        model=dict(name=model, kwargs=dict(model_kwargs or {}), init_checkpoint=None),
        data=dict(dataset=dataset, root=root, train_split=train_split, val_split=val_split,
                  crop_size=tuple(crop_size), scales=tuple(scales), scale_mode=scale_mode,
                  max_long_side=max_long_side, cat_max_ratio=cat_max_ratio,
                  eval_scale=tuple(eval_scale) if eval_scale else None,
                  batch_size=batch_size, num_workers=num_workers, val_limit=None),
        loss=copy.deepcopy(loss),
        optim={**OPTIM, **(optim_overrides or {})},
        train=dict(iters=iters, eval_interval=eval_interval, checkpoint_interval=checkpoint_interval,
                   log_interval=log_interval, seed=0, amp=amp, execution=dict(execution or {})),
    )
