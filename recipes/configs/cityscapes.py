"""Spike2Former on Cityscapes: official config, 90k iterations on a 160k poly schedule (so the LR
never reaches 0, as released); paper: lr 2e-3, batch 32, multi-scale test."""
from ._base import recipe

RECIPE = recipe("spike2former_cityscapes", "cityscapes", "cityscapes", "train", "val",
                crop_size=(512, 1024), scales=tuple(int(x * 0.1 * 1024) for x in range(5, 21)),
                max_long_side=4096, batch_size=8, iters=90_000, eval_interval=8_000,
                checkpoint_interval=4_000, optim_overrides=dict(poly_iters=160_000))
