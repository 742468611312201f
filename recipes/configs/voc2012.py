"""Spike2Former on Pascal VOC 2012 (21 classes; the release's VOC config says 150). Official schedule
120k (paper: 80k, lr 2e-3). Random resize 0.5-2.0 of (2048, 512), crop 512."""
from ._base import recipe

RECIPE = recipe("spike2former_voc2012", "voc2012", "data/VOCdevkit/VOC2012", "train", "val",
                crop_size=(512, 512), scales=tuple(int(512 * r / 4) for r in range(2, 9)), max_long_side=4096,
                eval_scale=(2048, 512), batch_size=8, iters=120_000, eval_interval=8_000, checkpoint_interval=4_000)
