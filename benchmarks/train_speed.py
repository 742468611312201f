"""One training step of a zoo model on CPU: forward + loss (with matching), backward, AdamW.

Median seconds per phase over a few steps after a warm-up, and the peak RSS of
the process. Synthetic 512x512 image and a label map with a handful of classes.

    python benchmarks/train_speed.py [--model spike2former_ade20k] [--size 512] [--steps 3] [--threads 2]

Target (issue 4) for spike2former_ade20k at 512x512, batch 1, 2 threads:
at most 4.7 s per step and 3.4 GB peak RSS.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from recipes.engine import build_optimizer  # noqa: E402
from recipes.configs._base import MASK_LOSS, OPTIM  # noqa: E402
from recipes.losses import PerPixelCrossEntropy, SetCriterion  # noqa: E402
from recipes.matcher import HungarianMatcher  # noqa: E402


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spike2former_ade20k")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = zoo.create(args.model).train()
    num_classes = model.pretrained_cfg.num_classes
    if hasattr(model, "sdme"):
        criterion = SetCriterion(num_classes, HungarianMatcher(cost_class=MASK_LOSS["class_weight"],
                                                               cost_focal=MASK_LOSS["focal_weight"],
                                                               cost_dice=MASK_LOSS["dice_weight"]))
    else:
        criterion = PerPixelCrossEntropy()
    optimizer = build_optimizer(model, OPTIM)
    images = torch.randn(args.batch, 3, args.size, args.size)
    # a label map with 6 classes in blocks, as a real scene has a few large regions
    blocks = torch.randint(0, num_classes, (args.batch, 1, 4, 4))
    labels = torch.nn.functional.interpolate(blocks.float(), size=(args.size, args.size), mode="nearest")
    labels = labels[:, 0].long()

    phases = {"forward+loss": [], "backward": [], "optimizer": [], "step": []}
    for step in range(args.steps + 1):
        start = time.perf_counter()
        outputs = model(images)
        loss = criterion(outputs, labels)
        loss = loss["loss"] if isinstance(loss, dict) else loss
        after_forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        after_backward = time.perf_counter()
        optimizer.step()
        end = time.perf_counter()
        if step == 0:
            continue  # warm-up
        phases["forward+loss"].append(after_forward - start)
        phases["backward"].append(after_backward - after_forward)
        phases["optimizer"].append(end - after_backward)
        phases["step"].append(end - start)

    print(f"{args.model}, {args.size}x{args.size}, batch {args.batch}, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps")
    print("| phase | seconds |\n|---|---|")
    for name, values in phases.items():
        print(f"| {name} | {statistics.median(values):.2f} |")
    print(f"| peak RSS | {peak_rss_gb():.2f} GB |")


if __name__ == "__main__":
    main()
