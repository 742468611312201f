"""SpikeFPN baseline on Pascal VOC 2012, per-pixel cross-entropy."""
from ._base import PIXEL_LOSS, recipe

RECIPE = recipe("spikefpn_voc2012", "voc2012", "VOCdevkit/VOC2012", "train", "val",
                crop_size=(512, 512), scales=(256, 1024), scale_mode="range", max_long_side=4096,
                batch_size=16, iters=80_000, eval_interval=8_000, checkpoint_interval=4_000,
                loss=PIXEL_LOSS, optim_overrides=dict(backbone_lr_mult=1.0, grad_clip=None, warmup_iters=0))
