"""What a wider or deeper ``spike2former_camvid`` costs per training iteration of the ``camvid`` recipe.

Each row trains the recipe through ``python -m recipes train`` for ``--iters`` iterations in a fresh
process (real CamVid, batch 4, 352x480 crops, loading, matching, losses, backward, AdamW), with the
model's widths changed by ``--set model.kwargs...``; medians of the iterations after the first. The
ratio column divides each row's median by the first row's (the backbone the CamVid models had before
the registered one), within this one run, so the shared VM's drift between runs cancels. Parameters
are counted on the built model; the shipped weights are float32, 4 bytes each, and all shipped weights
together must stay under 5 MB.

    python benchmarks/camvid_width_speed.py [--iters 10] [--rounds 1] [--data CAMVID_ROOT]

On 2026-12-03 (2 cores, ``--iters 10 --rounds 2``, a quiet VM) the width of the backbone's transformer
stages cost no measurable time: 12-24-64-96 with depths (2, 1) (1.6 times the parameters) ran at 0.98
times the earlier widths' time, 16-32-96-128 (2.4 times) at 0.99; a 48-channel pixel decoder and
decoder, 1.05. An earlier one-round run gave 1.10 for the registered widths: differences under about
10% are within this VM's noise. The stride-2 stage, the stride-2 mask features, matching and the losses
dominate an iteration; that is why 12-24-64-96 with depths (2, 1) became the registered backbone.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_runtime import camvid_root, time_rows  # noqa: E402

EARLIER = {"embed_dims": (12, 24, 48, 64), "backbone_depths": (1, 1)}
ROWS = [
    ("backbone 12-24-48-64, depths (1, 1) (until 2026-12-03)", EARLIER),
    ("backbone 12-24-64-96, depths (1, 1)", {"embed_dims": (12, 24, 64, 96), "backbone_depths": (1, 1)}),
    ("registered: backbone 12-24-64-96, depths (2, 1)", {}),
    ("backbone 16-32-96-128, depths (1, 1)", {"embed_dims": (16, 32, 96, 128), "backbone_depths": (1, 1)}),
    ("earlier backbone, pixel/decoder width 48", dict(EARLIER, feat_channels=48)),
]


def main():
    import zoo
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=camvid_root(), help="CamVid folder (default: the camvid recipe's)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    rows = [(name, {}, [f"model.kwargs.{key}={value!r}" for key, value in kwargs.items()]) for name, kwargs in ROWS]
    times = time_rows(rows, args.data, args.iters, args.rounds)
    base = statistics.median(times[ROWS[0][0]])
    print("| spike2former_camvid widths | parameters | float32 MB | s / iteration (median) | this / first row |")
    print("|---|---|---|---|---|")
    for name, kwargs in ROWS:
        params = sum(p.numel() for p in zoo.create("spike2former_camvid", **kwargs).parameters())
        median = statistics.median(times[name])
        print(f"| {name} | {params:,} | {params * 4 / 1e6:.2f} | {median:.3f} | {median / base:.2f}x |")


if __name__ == "__main__":
    main()
