"""One training step of a zoo model on CPU (forward, loss with matching, backward, AdamW), from a
plain-autograd baseline to the default path, one memory/time optimisation added per row.

Each row runs in a fresh process (so that its peak RSS is its own) on the same synthetic
512x512 image and label map; medians over a few steps after a warm-up. The last columns
compare with the first row measured in the same run, and check that every row computes the
same loss and gradients as the baseline.

    python benchmarks/train_speed.py [--model spike2former_ade20k] [--size 512] [--steps 3] [--threads 2]

Rows (cumulative):
- plain autograd: mask losses through autograd (about eight full-resolution tensors per
  prediction saved), the dense mask einsum, every neuron's final state kept, spikes saved as floats;
- + fused mask losses (recipes.losses.matched_mask_losses: gradients formed in forward);
- + mask product skipping zero gradient rows (zoo.spike2former.sdme.mask_product);
- + unread final neuron states dropped (``model.execution.keep_neuron_states = False``);
- + spikes saved for backward as uint8 counts (neurons.saved_spikes);
- + the mask product associated as (e W) x + e b (``model.execution.mask_order = 'auto'``):
  no 256 x 256 mask-feature conv at 1/2 scale, forward or backward, and no 1/2-scale map saved for it;
- + outputs of cheap layers (at most 64 MACs per element: depth-wise and thin 1x1 convs) recomputed
  in backward instead of saved (``model.execution.recompute_macs_per_output``; the default).

As in the training engine, the model's outputs are not kept alive through backward.

Target (issue 4) for spike2former_ade20k at 512x512, batch 1, 2 threads: at most 4.7 s per
step and 3.4 GB peak RSS; issue 11: 3.5 s and 3.4 GB as ``python -m recipes`` runs by default.
``--allocator`` chooses the allocator set-up (for every row):

- ``cli`` (the default): what ``python -m recipes`` does (``recipes.runtime``: glibc keeps freed
  memory for reuse through ``mallopt``, OpenMP spins ~10 us before sleeping).
- ``glibc``: the defaults. Buffers of 32 MB or more are mmapped and returned when freed, so each
  use of one page-faults afresh (on this VM, filling a fresh 64 MB buffer costs 5-20x a reused one).
- ``glibc-reuse``: ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=16G``: everything comes from the heap
  and freed memory is kept for reuse (faster, more RSS).
- ``jemalloc``: ``LD_PRELOAD`` of the system's libjemalloc with ``MALLOC_CONF=dirty_decay_ms:-1,
  muzzy_decay_ms:-1`` (freed pages kept for reuse; jemalloc's size classes fragment less).

``--recompute N`` sets the last row's ``recompute_macs_per_output`` (default 64).
"""
from __future__ import annotations

import argparse
import ctypes.util
import dataclasses
import glob
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from recipes import losses, runtime  # noqa: E402
from recipes.configs._base import MASK_LOSS, OPTIM  # noqa: E402
from recipes.engine import build_optimizer  # noqa: E402
from recipes.losses import PerPixelCrossEntropy, SetCriterion, dice_loss, sigmoid_focal_loss  # noqa: E402
from recipes.matcher import HungarianMatcher  # noqa: E402
from zoo.spike2former import sdme  # noqa: E402


@dataclasses.dataclass
class Setting:
    name: str
    fused_losses: bool
    sparse_mask_product: bool
    drop_final_states: bool
    compact_spikes: bool
    mask_order: str = "features_first"
    recompute_macs_per_output: int = 0


SETTINGS = [
    Setting("plain autograd", False, False, False, False),
    Setting("+ fused mask losses", True, False, False, False),
    Setting("+ mask product skips zero rows", True, True, False, False),
    Setting("+ final neuron states dropped", True, True, True, False),
    Setting("+ spikes saved as uint8", True, True, True, True),
    Setting("+ (e W) x mask product", True, True, True, True, "auto"),
    Setting("+ cheap layer outputs recomputed (default)", True, True, True, True, "auto", 64),
]


def autograd_mask_losses(logits, gt, valid, alpha=0.25, gamma=2.0, eps=1.0):
    """The definitions of matched_mask_losses evaluated through autograd (the baseline)."""
    up = F.interpolate(logits.float()[:, None], size=tuple(gt.shape[-2:]), mode="bilinear",
                       align_corners=False)[:, 0]
    focal = (sigmoid_focal_loss(up, gt.float(), alpha, gamma) * valid).sum((1, 2))
    return focal, dice_loss(up, gt.float(), valid.float(), eps)


def dense_mask_product(embedding, features):
    return torch.einsum("tlbqc,tbchw->lbqhw", embedding, features) / embedding.shape[0]


def measure(args, setting: Setting) -> dict:
    if args.allocator == "cli":
        runtime.configure(args.threads)
    torch.set_num_threads(args.threads)
    if not setting.fused_losses:
        losses.matched_mask_losses = autograd_mask_losses
    if not setting.sparse_mask_product:
        sdme.mask_product = dense_mask_product
    torch.manual_seed(0)
    model = zoo.create(args.model).train()
    model.set_execution(keep_neuron_states=not setting.drop_final_states, compact_saved_spikes=setting.compact_spikes,
                        recompute_macs_per_output=setting.recompute_macs_per_output, mask_order=setting.mask_order)
    num_classes = model.pretrained_cfg.num_classes
    if hasattr(model, "sdme"):
        criterion = SetCriterion(num_classes, HungarianMatcher(cost_class=MASK_LOSS["class_weight"],
                                                               cost_focal=MASK_LOSS["focal_weight"],
                                                               cost_dice=MASK_LOSS["dice_weight"]))
    else:
        criterion = PerPixelCrossEntropy()
    optimizer = build_optimizer(model, OPTIM)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=generator)
    # a label map with up to 16 classes in blocks, as a real scene has a few large regions
    blocks = torch.randint(0, num_classes, (args.batch, 1, 4, 4), generator=generator)
    labels = F.interpolate(blocks.float(), size=(args.size, args.size), mode="nearest")[:, 0].long()

    phases = {"forward+loss": [], "backward": [], "optimizer": [], "step": []}
    first_loss = first_grad = None
    for step in range(args.steps + 1):
        start = time.perf_counter()
        loss = criterion(model(images), labels)  # the outputs are not kept through backward, as in the engine
        loss = loss["loss"] if isinstance(loss, dict) else loss
        after_forward = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        after_backward = time.perf_counter()
        if step == 0:  # the first step's loss and gradients are compared across settings
            first_loss = float(loss)
            first_grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        optimizer.step()
        end = time.perf_counter()
        del loss
        if step == 0:
            continue  # warm-up
        phases["forward+loss"].append(after_forward - start)
        phases["backward"].append(after_backward - after_forward)
        phases["optimizer"].append(end - after_backward)
        phases["step"].append(end - start)
    torch.save(first_grad, args.save_to)
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM"))
    return {"medians": {k: statistics.median(v) for k, v in phases.items()}, "peak_rss": peak,
            "loss": first_loss}


def allocator_env(name: str) -> dict:
    if name == "cli":
        return {"GOMP_SPINCOUNT": "1000"}  # as recipes.runtime.prepare() sets it
    if name == "glibc":
        return {}
    if name == "glibc-reuse":
        return {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
    paths = glob.glob("/usr/lib/*/libjemalloc.so*") + glob.glob("/usr/lib/libjemalloc.so*")
    path = paths[0] if paths else ctypes.util.find_library("jemalloc")
    if not path:
        raise SystemExit("--allocator jemalloc: libjemalloc not found (Debian/Ubuntu: apt install libjemalloc2)")
    return {"LD_PRELOAD": path, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spike2former_ade20k")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-default", action="store_true", help="measure the default path only")
    parser.add_argument("--allocator", choices=["cli", "glibc", "glibc-reuse", "jemalloc"], default="cli")
    parser.add_argument("--recompute", type=int, default=64, help="the last row's recompute_macs_per_output")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--save-to", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args, Setting(**json.loads(args.child)))))
        return

    settings = SETTINGS[-1:] if args.only_default else list(SETTINGS)
    if args.recompute != settings[-1].recompute_macs_per_output:
        settings[-1] = dataclasses.replace(settings[-1], name=f"+ outputs of layers <= {args.recompute} MACs/element "
                                           "recomputed", recompute_macs_per_output=args.recompute)
    env = {**os.environ, **allocator_env(args.allocator)}
    results, grads = [], []
    load_before = os.getloadavg()[0]
    for i, setting in enumerate(settings):
        save_to = f"/tmp/train_speed_grad_{os.getpid()}_{i}.pt"
        command = [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(setting)), "--save-to", save_to,
                   "--model", args.model, "--size", str(args.size), "--batch", str(args.batch),
                   "--steps", str(args.steps), "--threads", str(args.threads), "--allocator", args.allocator]
        done = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        grads.append(torch.load(save_to))
        os.remove(save_to)

    print(f"{args.model}, {args.size}x{args.size}, batch {args.batch}, {args.threads} threads, torch "
          f"{torch.__version__}, allocator {args.allocator}, median of {args.steps} steps after a warm-up; "
          f"load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    header = ["setting", "forward+loss s", "backward s", "optimizer s", "step s", "peak RSS GB",
              "step: baseline / this", "RSS: baseline / this", "loss rel. diff", "grad rel. diff"]
    print("| " + " | ".join(header) + " |\n" + "|---" * len(header) + "|")
    base, base_grad = results[0], grads[0]
    for setting, r, g in zip(settings, results, grads):
        m = r["medians"]
        loss_diff = abs(r["loss"] - base["loss"]) / abs(base["loss"])
        grad_diff = float((g - base_grad).abs().max() / base_grad.abs().max())
        cells = [setting.name, f"{m['forward+loss']:.2f}", f"{m['backward']:.2f}", f"{m['optimizer']:.2f}",
                 f"{m['step']:.2f}", f"{r['peak_rss'] / 2**30:.2f}", f"{base['medians']['step'] / m['step']:.2f}x",
                 f"{base['peak_rss'] / r['peak_rss']:.2f}x", f"{loss_diff:.1e}", f"{grad_diff:.1e}"]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
