#!/usr/bin/env bash
# Regenerates this folder: the issue-5 analyses of spike2former_ade20k (random weights, 512x512)
# and spike2former_camvid (trained by `python -m recipes train camvid --out runs/camvid-full`).
# Run from the repository root with the project's environment active.
set -euo pipefail
OUT=benchmarks/reports/analysis-2026-11-28
CAMVID_VAL=${SPIKEZOO_DATA:-data}/camvid/val
WEIGHTS=${WEIGHTS:-runs/camvid-full/best.pth}

# spike2former_ade20k, random weights (seed 0), real CamVid images resized to the ADE20K crop
python -m analysis firing      --model spike2former_ade20k --data $CAMVID_VAL --size 512x512 --limit 4 --out $OUT/ade20k-random/firing --no-progress
python -m analysis degradation --model spike2former_ade20k --data $CAMVID_VAL --size 512x512 --limit 4 --out $OUT/ade20k-random/degradation --no-progress
python -m analysis masks       --model spike2former_ade20k --data $CAMVID_VAL --size 512x512 --limit 4 --out $OUT/ade20k-random/masks --no-progress
python -m analysis energy      --model spike2former_ade20k --data $CAMVID_VAL --size 512x512 --limit 2 --out $OUT/ade20k-random/energy --no-progress

# spike2former_camvid after the 30-epoch CPU recipe, on the whole CamVid val split (101 images)
python -m analysis firing      --model spike2former_camvid --weights $WEIGHTS --data camvid --limit 0 --out $OUT/camvid-trained/firing --no-progress
python -m analysis degradation --model spike2former_camvid --weights $WEIGHTS --data camvid --limit 0 --out $OUT/camvid-trained/degradation --no-progress
python -m analysis masks       --model spike2former_camvid --weights $WEIGHTS --data camvid --limit 0 --out $OUT/camvid-trained/masks --no-progress
python -m analysis energy      --model spike2former_camvid --weights $WEIGHTS --data camvid --limit 20 --out $OUT/camvid-trained/energy --no-progress

# ANN validation: MACs of torchvision models against the GFLOPS torchvision publishes
python - <<'PY' > $OUT/ann_validation.md
import torch, torchvision.models as tvm
from torchvision.models import segmentation as seg
from analysis.energy import estimate
cases = [("resnet50", tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, {}, 224),
         ("mobilenet_v3_large", tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1, {}, 224),
         ("vit_b_16", tvm.vit_b_16, tvm.ViT_B_16_Weights.IMAGENET1K_V1, {}, 224),
         ("deeplabv3_resnet50", seg.deeplabv3_resnet50, seg.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
          {"aux_loss": True, "weights_backbone": None}, 520)]
print("| model | input | torchvision GFLOPS (meta _ops) | our GMACs | ratio | energy mJ (= MACs x 4.6 pJ) |")
print("|---|---|---|---|---|---|")
for name, build, weights, kwargs, size in cases:
    with torch.device("meta"):
        model = build(weights=None, **kwargs).eval()
    report = estimate(model, torch.empty(1, 3, size, size, device="meta"))
    published = weights.meta["_ops"]
    print(f"| {name} | {size}x{size} | {published:.3f} | {report.total_macs / 1e9:.3f} | "
          f"{report.total_macs / 1e9 / published:.4f} | {report.total_mj:.2f} |")
PY
cat $OUT/ann_validation.md
