"""spikefpn_camvid on CamVid at CPU scale, the SpikeFPN counterpart of the camvid recipe."""
from ._base import PIXEL_LOSS, recipe

RECIPE = recipe("spikefpn_camvid", "camvid", "camvid", "train", "val",
                crop_size=(352, 480), scales=(288, 324, 360, 396, 432), max_long_side=1024,
                batch_size=4, iters=2_760, eval_interval=460, checkpoint_interval=230, num_workers=1,
                log_interval=10, amp=False, loss=PIXEL_LOSS,
                optim_overrides=dict(warmup_iters=100, backbone_lr_mult=1.0, grad_clip=None))
