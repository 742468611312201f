"""Spike2Former on COCO panoptic (the paper's setting: large-scale jitter, the long side uniform in
0.1-2.0 x 1024, crop 1024, no cat_max_ratio; the release has no COCO panoptic config)."""
from ._base import recipe

RECIPE = recipe("spike2former_coco_panoptic", "coco_panoptic", "coco", "train2017", "val2017",
                crop_size=(1024, 1024), scales=(102, 2048), scale_mode="long_range", max_long_side=None,
                cat_max_ratio=1.0, batch_size=16, iters=368_750, eval_interval=10_000, checkpoint_interval=5_000)
