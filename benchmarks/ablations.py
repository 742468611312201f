"""The paper's Table 3 ablations, trained on CamVid at equal budget, with energy and the firing study.

    python benchmarks/ablations.py --runs runs/ablations --report benchmarks/reports/ablations-camvid \\
        --set train.iters=920 --set train.eval_interval=920
    python benchmarks/ablations.py ... --rows baseline ilif           # some rows only (the others are kept)

Every row trains the ``camvid`` recipe (SpikeFPN: ``spikefpn_camvid``) through ``python -m recipes train``
with the same ``--set`` overrides (the budget), the same seed and the same data, changing one thing:

=============  ====================================  =====================================
row            change                                paper (ADE20K, Table 3), mIoU vs 46.3
=============  ====================================  =====================================
baseline       none: NI-LIF, ME-Shortcut, SDTE       --
seed1          ``train.seed=1``: the noise            --
ilif           I-LIF (the integer count)             -8.4
const8         NI-LIF normalised by 8, not D         -1.3
vanilla_me     no ME-Shortcut (trained that way)     -4.5
no_sdte        no SDTE                               -2.5
spike_query    spiking query                         -3.2
spikefpn       the SpikeFPN baseline                 -12.7 (33.6 in Table 1)
=============  ====================================  =====================================

Each row's run folder (``--runs/<row>``) is kept: a row whose ``metrics.json`` exists is not retrained,
one with a ``last.pth`` resumes, so the script can be stopped and started again. The report's
``ablations.csv`` is the lasting record: rows measured in an earlier invocation whose run folders are gone
(rows trained on another day or machine) are kept from it, provided they were trained with the same
budget (the same ``--set`` overrides); ``--measure-only`` rebuilds the report from what is there without
training anything. After training, each row's final weights are measured on the first
``--images`` validation images at the evaluation size: the pooled firing rate, the mask-embedding
neuron ``sdme.embed_spike``'s rate (the paper: 0.266 with ME-Shortcut, 0.086 without, both trained) and
the energy per image (``analysis.energy``). The report folder gets ``ablations.csv``, ``README.md``
(the table beside the paper's deltas) and the degradation plot of the baseline and vanilla_me rows.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import zoo  # noqa: E402
from analysis.degradation import spike_degradation  # noqa: E402
from analysis.export import measure_on_val, running_seconds  # noqa: E402
from recipes.engine import build_val_data  # noqa: E402

EMBED_SPIKE = "sdme.embed_spike"
PAPER_BASELINE = 46.3  # Spike2Former on ADE20K, mIoU
PAPER_EMBED_RATES = (0.266, 0.086)  # sdme.embed_spike firing with and without ME-Shortcut, ADE20K
README_BEGIN, README_END = "<!-- ablations:", "<!-- /ablations -->"

# row -> (recipe, overrides, what changes, paper delta on ADE20K)
ROWS: Dict[str, Tuple[str, List[str], str, Optional[float]]] = {
    "baseline": ("camvid", [], "NI-LIF, ME-Shortcut, SDTE, real-valued queries", None),
    "seed1": ("camvid", ["train.seed=1"], "the baseline with seed 1: the noise of one run", None),
    "ilif": ("camvid", ["model.kwargs.neuron='ilif'"], "I-LIF: integer counts, not normalised", -8.4),
    "const8": ("camvid", ["model.kwargs.neuron='nilif_const'"], "NI-LIF normalised by the constant 8 (D = 4)", -1.3),
    "vanilla_me": ("camvid", ["model.kwargs.me_shortcut=False"], "vanilla mask embedding (no ME-Shortcut)", -4.5),
    "no_sdte": ("camvid", ["model.kwargs.use_sdte=False"], "no SDTE (no deformable encoder)", -2.5),
    "spike_query": ("camvid", ["model.kwargs.spike_query=True"], "spiking query", -3.2),
    "spikefpn": ("spikefpn_camvid", [], "the SpikeFPN baseline (Table 1: 33.6 vs 46.3)", 33.6 - PAPER_BASELINE),
}


def train_row(row: str, runs: Path, common: List[str], extra_args: List[str]) -> Path:
    recipe, overrides, _, _ = ROWS[row]
    out = runs / row
    if (out / "metrics.json").is_file():
        print(f"[{row}] trained already: {out}", flush=True)
        return out
    command = [sys.executable, "-m", "recipes", "train", recipe, "--out", str(out), "--no-progress", *extra_args]
    for item in [*common, *overrides]:
        command += ["--set", item]
    if (out / "last.pth").is_file():
        command.append("--resume")
    print(f"[{row}] {' '.join(command)}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(runs / f"{row}.log", "a") as log:
        subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def budget_of(common: List[str]) -> str:
    return " ".join(sorted(common))


def measure_row(row: str, out: Path, images: Optional[int], budget: str) -> Dict[str, object]:
    recipe = json.loads((out / "config.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["final"]
    model = zoo.create(recipe["model"]["name"], checkpoint_path=out / "last.pth", **recipe["model"]["kwargs"]).eval()
    firing, energy, count = measure_on_val(model, recipe, images)
    names = {layer.name for layer in firing.layers}
    wall = running_seconds(out)
    _, overrides, change, paper = ROWS[row]
    val_limit = recipe["data"].get("val_limit")
    return {"row": row, "change": change, "recipe": recipe["name"], "overrides": " ".join(overrides),
            "budget": budget, "iterations": recipe["train"]["iters"], "seed": recipe["train"]["seed"],
            "val_images": "all" if val_limit is None else val_limit,
            "mIoU": round(metrics["mIoU"], 2), "mAcc": round(metrics["mAcc"], 2), "aAcc": round(metrics["aAcc"], 2),
            "energy_mj": round(energy, 4), "firing_rate": round(firing.pooled_rate, 4),
            "embed_spike_rate": round(firing.layer(EMBED_SPIKE).mean_count, 4) if EMBED_SPIKE in names else None,
            "wall_minutes": round(wall / 60, 1), "paper_delta": paper, "measured_images": count,
            "measured_on": time.strftime("%Y-%m-%d")}


def read_rows(path: Path) -> List[Dict[str, object]]:
    """The rows of a report's ``ablations.csv``, typed as ``measure_row`` returns them."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    numbers = ("mIoU", "mAcc", "aAcc", "energy_mj", "firing_rate", "embed_spike_rate", "wall_minutes",
               "paper_delta")
    for r in rows:
        for key in numbers:
            r[key] = float(r[key]) if r[key] not in ("", None) else None
        for key in ("iterations", "seed", "measured_images"):
            r[key] = int(r[key])
    return rows


def earlier_rows(report: Path, budget: str) -> Dict[str, Dict[str, object]]:
    """The rows of an earlier report; refused if trained at another budget."""
    path = report / "ablations.csv"
    if not path.is_file():
        return {}
    rows = read_rows(path)
    other = sorted({r["budget"] for r in rows} - {budget})
    if other:
        raise SystemExit(f"{path} holds rows trained with --set {other[0]!r}, not {budget!r}: every row must "
                         "have the same budget; pass that budget or choose another --report folder")
    return {r["row"]: r for r in rows}


def degradation(runs: Path, report: Path, images: Optional[int]) -> Optional[Path]:
    """The trained baseline and vanilla_me rows through analysis.degradation (both trained, not ablated)."""
    models = {}
    for row, label in (("baseline", "ME-Shortcut (trained)"), ("vanilla_me", "no ME-Shortcut (trained)")):
        out = runs / row
        if not (out / "metrics.json").is_file():
            return None
        recipe = json.loads((out / "config.json").read_text())
        models[label] = zoo.create(recipe["model"]["name"], checkpoint_path=out / "last.pth",
                                   **recipe["model"]["kwargs"]).eval()
    val_set, eval_tf = build_val_data(recipe, next(iter(models.values())))
    count = len(val_set) if images is None else min(images, len(val_set))
    batches = [eval_tf(val_set[i])["image"].unsqueeze(0) for i in range(count)]
    spike_degradation(models, batches, report / "degradation", progress=False)
    return report / "degradation.png"


def ablation_table(rows: List[Dict[str, object]]) -> str:
    """The markdown table of the report and of the project README (``--readme``)."""
    base = next((r for r in rows if r["row"] == "baseline"), None)
    lines = ["| row | change | val mIoU | vs baseline | paper (ADE20K) | mJ per image | firing rate | "
             "sdme.embed_spike rate | minutes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = "" if base is None or r is base else f"{r['mIoU'] - base['mIoU']:+.1f}"
        paper = "" if r["paper_delta"] is None else f"{r['paper_delta']:+.1f}"
        embed = "" if r["embed_spike_rate"] is None else f"{r['embed_spike_rate']:.3f}"
        lines.append(f"| {r['row']} | {r['change']} | {r['mIoU']:.1f} | {delta} | {paper} | {r['energy_mj']:.3g} | "
                     f"{r['firing_rate']:.3f} | {embed} | {r['wall_minutes']} |")
    return "\n".join(lines)


def update_readme(readme: Path, rows: List[Dict[str, object]]) -> None:
    """Replace the table between ``<!-- ablations:`` and ``<!-- /ablations -->`` in ``readme``."""
    text = readme.read_text()
    if README_BEGIN not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_BEGIN} ... {README_END} block to hold the table")
    begin = text.index("\n", text.index(README_BEGIN)) + 1
    readme.write_text(text[:begin] + ablation_table(rows) + "\n" + text[text.index(README_END):])


def write_report(rows: List[Dict[str, object]], report: Path, common: List[str], figure: Optional[Path]) -> None:
    report.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0])
    with open(report / "ablations.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    base = next((r for r in rows if r["row"] == "baseline"), None)
    seed = next((r for r in rows if r["row"] == "seed1"), None)
    lines = ["# Spike2Former's ablations on CamVid at equal budget", "",
             f"`python benchmarks/ablations.py {' '.join('--set ' + c for c in common)}` "
             f"(rows measured {', '.join(sorted({str(r['measured_on']) for r in rows}))}); every row trains for "
             f"{rows[0]['iterations']} iterations with the same recipe settings and seed; val mIoU of the final "
             f"weights on {'the whole val split' if str(rows[0]['val_images']) == 'all' else 'the first ' + str(rows[0]['val_images']) + ' val images'}; "
             f"energy and firing over the first {rows[0]['measured_images']} val images.", "",
             *ablation_table(rows).splitlines()]
    if base is not None and seed is not None:
        lines += ["", f"Seed noise: the same baseline with seed 1 differs by {seed['mIoU'] - base['mIoU']:+.1f} "
                      "mIoU; a row's difference smaller than that says nothing about its direction."]
    vanilla = next((r for r in rows if r["row"] == "vanilla_me"), None)
    if base is not None and vanilla is not None:
        with_me, without = base["embed_spike_rate"], vanilla["embed_spike_rate"]
        lines += ["", f"`{EMBED_SPIKE}` fires at {with_me:.3f} with ME-Shortcut and {without:.3f} without, both "
                      f"trained: {with_me / without:.2f} times ({PAPER_EMBED_RATES[0] / PAPER_EMBED_RATES[1]:.1f} "
                      f"times in the paper: {PAPER_EMBED_RATES[0]} with, {PAPER_EMBED_RATES[1]} without)"
                      + ("." if (with_me > without) == (PAPER_EMBED_RATES[0] > PAPER_EMBED_RATES[1])
                         else "; the paper's direction does not reproduce here.")]
    missing = [row for row in ROWS if row not in {r["row"] for r in rows}]
    if missing:
        lines += ["", f"Not trained yet: {', '.join(missing)}."]
    if figure is not None and figure.is_file():
        lines += ["", f"![spike degradation, trained with and without ME-Shortcut]({figure.name})"]
    (report / "README.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", required=True, type=Path, help="run folders, one per row (kept)")
    parser.add_argument("--report", required=True, type=Path, help="report folder (CSV, README.md, figure)")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="rows to train")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe overrides for every row: the budget (repeatable)")
    parser.add_argument("--images", type=int, default=0, help="val images for firing and energy (0: all)")
    parser.add_argument("--threads", type=int, default=None, help="passed to the training runs")
    parser.add_argument("--measure-only", action="store_true", help="train nothing; measure and report")
    parser.add_argument("--readme", type=Path, default=None,
                        help="also write the table into this README's <!-- ablations: --> block")
    args = parser.parse_args(argv)
    budget = budget_of(args.set)
    kept = earlier_rows(args.report, budget)
    extra = ["--threads", str(args.threads)] if args.threads else []
    if not args.measure_only:
        for row in args.rows:
            if row in kept and not (args.runs / row).is_dir():
                print(f"[{row}] in {args.report / 'ablations.csv'} already", flush=True)
                continue
            train_row(row, args.runs, args.set, extra)
    done = [row for row in ROWS if (args.runs / row / "metrics.json").is_file()]
    measured = {row: measure_row(row, args.runs / row, args.images or None, budget) for row in done}
    rows = [measured.get(row) or kept[row] for row in ROWS if row in measured or row in kept]
    if not rows:
        raise SystemExit(f"no trained row under {args.runs} and no earlier report in {args.report}")
    args.report.mkdir(parents=True, exist_ok=True)
    figure = degradation(args.runs, args.report, args.images or None) or args.report / "degradation.png"
    write_report(rows, args.report, args.set, figure)
    if args.readme is not None:
        update_readme(args.readme, rows)
    print((args.report / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
