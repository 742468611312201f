"""spike2former_camvid on CamVid (SegNet split) at CPU scale: 4,550 iterations of batch 4 (50 epochs of
the 367 training images), sized to train in at most 150 minutes on 2 cores (1.55-1.8 s per iteration
with data loading, matching and losses, as this shared VM drifts). The shipped ``spike2former_camvid`` weights come from this
recipe; their training record is in ``zoo.get_pretrained_cfg("spike2former_camvid").training``.
The earlier 30-epoch version (2,760 iterations) reached 40.9 val mIoU in 71 minutes
(benchmarks/reports/camvid-30ep-2026-11-28)."""
from ._base import recipe

RECIPE = recipe("spike2former_camvid", "camvid", "camvid", "train", "val",
                crop_size=(352, 480), scales=(288, 324, 360, 396, 432), max_long_side=1024,
                batch_size=4, iters=4_550, eval_interval=650, checkpoint_interval=260, num_workers=1,
                log_interval=10, amp=False, optim_overrides=dict(warmup_iters=100, backbone_lr_mult=1.0))
