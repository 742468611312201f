"""Spike2Former on Pascal VOC 2012 (21 classes; the release's VOC config says 150). Official schedule
120k (paper: 80k, lr 2e-3). mmseg's RandomResize (2048, 512) x U(0.5, 2.0), which for every VOC
aspect ratio is the short side uniform in [256, 1024]; crop 512."""
from ._base import recipe

RECIPE = recipe("spike2former_voc2012", "voc2012", "VOCdevkit/VOC2012", "train", "val",
                crop_size=(512, 512), scales=(256, 1024), scale_mode="range", max_long_side=4096,
                batch_size=8, iters=120_000, eval_interval=8_000, checkpoint_interval=4_000)
