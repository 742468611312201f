"""spikefpn_camvid on CamVid at CPU scale, the SpikeFPN counterpart of the camvid recipe: the same crop,
scales, batch, schedule (4,550 iterations, 50 epochs), evaluation and class weighting (CamVid train's
median-frequency weights, here on the per-pixel cross-entropy; the camvid recipe puts them on its
semantic-score loss), so the two shipped CamVid models are trained at equal budget and with the same
choices. What differs belongs to the model family: SpikeFPN is a per-pixel classifier (cross-entropy
loss), trained without the mask-classification recipe's gradient clipping at 0.01."""
from ._base import PIXEL_LOSS, recipe
from .camvid import CAMVID_TRAIN_MEDIAN_FREQUENCY

RECIPE = recipe("spikefpn_camvid", "camvid", "camvid", "train", "val",
                crop_size=(352, 480), scales=(288, 324, 360, 396, 432), max_long_side=1024,
                batch_size=4, iters=4_550, eval_interval=650, checkpoint_interval=260, num_workers=1,
                log_interval=10, amp=False, loss=dict(PIXEL_LOSS, semantic_class_weight=CAMVID_TRAIN_MEDIAN_FREQUENCY),
                optim_overrides=dict(warmup_iters=100, backbone_lr_mult=1.0, grad_clip=None))
