"""Spike2Former on ADE20K: official config (paper: lr 2e-4, batch 36)."""
from ._base import ADE_SCALES, recipe

RECIPE = recipe("spike2former_ade20k", "ade20k", "ADEChallengeData2016", "training", "validation",
                crop_size=(512, 512), scales=ADE_SCALES, max_long_side=2560,
                batch_size=6, iters=160_000, eval_interval=8_000, checkpoint_interval=4_000)
