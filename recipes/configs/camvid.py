"""spike2former_camvid on CamVid (SegNet split) at CPU scale: about 30 epochs of the 367 training
images in at most 90 minutes on 2 cores (batch 4, about 0.4 s per image per step; measured: 71 minutes
including the evaluations, 40.9 val mIoU, benchmarks/reports/camvid-30ep-2026-11-28)."""
from ._base import recipe

RECIPE = recipe("spike2former_camvid", "camvid", "camvid", "train", "val",
                crop_size=(352, 480), scales=(288, 324, 360, 396, 432), max_long_side=1024,
                batch_size=4, iters=2_760, eval_interval=460, checkpoint_interval=230, num_workers=1,
                log_interval=10, amp=False, optim_overrides=dict(warmup_iters=100, backbone_lr_mult=1.0))
