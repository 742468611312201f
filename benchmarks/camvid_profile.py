"""Where a ``camvid`` training step spends its time: torch.profiler over two steps in one process
(real CamVid batches of 4 at 352x480 prepared beforehand, so data loading is left out), after
``recipes.runtime`` has set the process up as the CLI does.

    python benchmarks/camvid_profile.py [--set loss.compile=False] [--rows 30] [--data CAMVID_ROOT]

Prints the median step time of four steps and the top operators by self CPU time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recipes import runtime  # noqa: E402

runtime.prepare()  # before torch, as the CLI

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from recipes import config as cfg_lib  # noqa: E402
from recipes import engine  # noqa: E402
from recipes.datasets import collate_samples  # noqa: E402

from cli_runtime import camvid_root  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=camvid_root(), help="CamVid folder (default: the camvid recipe's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="recipe override")
    parser.add_argument("--rows", type=int, default=30)
    args = parser.parse_args()
    print(runtime.configure())
    recipe = cfg_lib.validate_recipe(cfg_lib.apply_overrides(cfg_lib.load_recipe("camvid"),
                                                             [f"data.root={args.data}", *args.set]))
    torch.manual_seed(0)
    model = engine.build_model(recipe).train()
    train_set, transform = engine.build_train_data(recipe, model)
    criterion = engine.build_criterion(recipe, model.pretrained_cfg.num_classes)
    optimizer = engine.build_optimizer(model, recipe["optim"])
    augmented = engine.SeededAugmentation(train_set, transform, seed=0)
    batch_size = recipe["data"]["batch_size"]
    batches = [collate_samples([augmented[(i * batch_size + j, 0)] for j in range(batch_size)]) for i in range(4)]

    def step(batch):
        losses = engine.compute_loss(model, criterion, batch, torch.device("cpu"))
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        optimizer.step()

    for batch in batches[:2]:  # warm-up (and compilation)
        step(batch)
    times = []
    for batch in batches:
        start = time.perf_counter()
        step(batch)
        times.append(time.perf_counter() - start)
    print(f"step times {[round(t, 3) for t in times]} s, median {statistics.median(times):.3f} s")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches[:2]:
            step(batch)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    main()
