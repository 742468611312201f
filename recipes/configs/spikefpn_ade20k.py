"""SpikeFPN baseline on ADE20K (T x D = 4 x 1), per-pixel cross-entropy, 160k iterations."""
from ._base import ADE_SCALES, PIXEL_LOSS, recipe

RECIPE = recipe("spikefpn_ade20k", "ade20k", "ADEChallengeData2016", "training", "validation",
                crop_size=(512, 512), scales=ADE_SCALES, max_long_side=2560,
                batch_size=16, iters=160_000, eval_interval=8_000, checkpoint_interval=4_000, loss=PIXEL_LOSS,
                optim_overrides=dict(backbone_lr_mult=1.0, grad_clip=None, warmup_iters=0))
