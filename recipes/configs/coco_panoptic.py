"""Spike2Former on COCO panoptic (the paper's setting: large-scale jitter 0.1-2.0, crop 1024;
the release has no COCO panoptic config)."""
from ._base import recipe

RECIPE = recipe("spike2former_coco_panoptic", "coco_panoptic", "data/coco", "train2017", "val2017",
                crop_size=(1024, 1024), scales=tuple(int(1024 * r / 10) for r in range(1, 21)), max_long_side=4096,
                eval_scale=(1333, 800), batch_size=16, iters=368_750, eval_interval=10_000,
                checkpoint_interval=5_000)
