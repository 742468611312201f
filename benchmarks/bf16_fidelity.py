"""How far ``precision='bf16'`` moves a trained model from fp32: pixel agreement of the label maps,
mIoU of both, and the firing rates of both, on CamVid val (whole images, the recipe's eval
transform); and the agreement on random "lively" ADE20K weights at 512x512.

    python benchmarks/bf16_fidelity.py --weights runs/camvid/best.pth [--limit 101] [--data CAMVID_ROOT]

Target (issue 11): on CamVid val with trained spike2former_camvid weights, labels agree with fp32 on
at least 99.5% of pixels and mIoU moves by at most 0.3.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import zoo  # noqa: E402
from analysis.firing import measure_firing  # noqa: E402
from recipes import config as cfg_lib  # noqa: E402
from recipes.engine import build_val_data  # noqa: E402
from recipes.metrics import SemanticMetrics  # noqa: E402
from zoo.factory import load_weights  # noqa: E402
from zoo.hub import read_checkpoint  # noqa: E402

from cli_runtime import camvid_root  # noqa: E402


def camvid(args) -> None:
    recipe = cfg_lib.validate_recipe(cfg_lib.apply_overrides(cfg_lib.load_recipe("camvid"), [f"data.root={args.data}"]))
    model = zoo.create("spike2former_camvid").eval()
    load_weights(model, "spike2former_camvid", read_checkpoint(args.weights), source=args.weights)
    val_set, eval_tf = build_val_data(recipe, model)
    samples = [eval_tf(val_set[i]) for i in range(min(args.limit, len(val_set)))]
    results = {}
    for precision in ("fp32", "bf16"):
        model.set_execution(precision=precision)
        metric, labels = SemanticMetrics(model.pretrained_cfg.num_classes), []
        for sample in samples:
            predicted = model.predict(sample["image"][None])
            labels.append(predicted)
            metric.update(predicted, sample["label"][None])
        firing = measure_firing(model, [s["image"][None] for s in samples[:10]], progress=False)
        results[precision] = (metric.compute()["mIoU"], labels, firing)
    agree = sum(int((a == b).sum()) for a, b in zip(results["fp32"][1], results["bf16"][1]))
    total = sum(a.numel() for a in results["fp32"][1])
    print(f"CamVid val, {len(samples)} images, weights {args.weights}")
    print(f"  pixel agreement bf16 vs fp32: {100 * agree / total:.3f}%")
    print(f"  mIoU fp32 {results['fp32'][0]:.2f}, bf16 {results['bf16'][0]:.2f} "
          f"(difference {results['bf16'][0] - results['fp32'][0]:+.2f})")
    print("  firing (first 10 images): group, mean count fp32, bf16")
    bf16_groups = {g.group: g for g in results["bf16"][2].groups}
    for group in results["fp32"][2].groups:
        print(f"    {group.group:28s} {group.mean_count:.4f} {bf16_groups[group.group].mean_count:.4f}")


def lively_ade20k() -> None:
    from conftest import lively
    torch.manual_seed(0)
    image = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(1))
    model = zoo.create("spike2former_ade20k")
    lively(model, image)
    model.eval()
    reference = model.predict(image)
    model.set_execution(precision="bf16")
    agreement = float((model.predict(image) == reference).float().mean())
    print(f"spike2former_ade20k, random lively weights, one 512x512 image: pixel agreement {100 * agreement:.2f}%")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="spike2former_camvid weights (a training checkpoint)")
    parser.add_argument("--data", default=camvid_root(), help="CamVid folder (default: the camvid recipe's)")
    parser.add_argument("--limit", type=int, default=101)
    args = parser.parse_args()
    torch.set_num_threads(2)
    with torch.inference_mode():
        camvid(args)
        lively_ade20k()


if __name__ == "__main__":
    main()
