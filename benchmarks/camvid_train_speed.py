"""The ``camvid`` recipe's training iteration through ``python -m recipes train``, from the path of
2026-11-28 (PyTorch's thread and malloc defaults, eager mask losses at every label pixel) to
today's default, one change added per row; real CamVid, batch 4, 352x480 crops, the recipe's one
data-loading worker, everything an iteration does (loading, matching, losses, backward, AdamW).

Rows run in turn, each in a fresh process, for ``--iters`` iterations; medians of the iterations
after the first (which starts the workers and compiles). ``--rounds 2`` runs the whole table twice,
interleaved, and reports the median per row over all its iterations, which evens out a shared VM's
drift. The ratio column divides the first row's median by each row's, within this one run.

    python benchmarks/camvid_train_speed.py [--iters 12] [--rounds 2] [--data CAMVID_ROOT]

``--rows 0 2`` measures only those rows (the first listed is the baseline).

Target (issue 11): the default at least 2x faster than the first row.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cli_runtime import camvid_root, time_rows  # noqa: E402

ROWS = [
    ("2026-11-28 path: PyTorch defaults, eager full-resolution mask losses",
     {"SPIKEZOO_RUNTIME": "off"}, ["loss.compile=False"]),
    ("+ CLI runtime (short OpenMP spin, 2 threads, malloc keeps freed memory)", {}, ["loss.compile=False"]),
    ("+ mask losses compiled (loss.compile, the default)", {}, []),
    ("+ mask losses at 12,544 sampled points (loss.num_points=12544)", {}, ["loss.num_points=12544"]),
    ("+ network compiled (train.execution.compile=True)", {}, ["train.execution.compile=True"]),
    ("+ network compiled, bf16 (train.execution.precision=bf16)", {},
     ["train.execution.compile=True", "train.execution.precision=bf16"]),
]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=camvid_root(), help="CamVid folder (default: the camvid recipe's)")
    parser.add_argument("--iters", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=None, help="indices of the rows to run")
    args = parser.parse_args()
    rows = [ROWS[i] for i in args.rows] if args.rows else ROWS
    times = time_rows(rows, args.data, args.iters, args.rounds)
    base = statistics.median(times[rows[0][0]])
    print("| path | s / iteration (median) | first row / this |")
    print("|---|---|---|")
    for name, _, _ in rows:
        median = statistics.median(times[name])
        print(f"| {name} | {median:.3f} | {base / median:.2f}x |")


if __name__ == "__main__":
    main()
