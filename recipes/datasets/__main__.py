"""``python -m recipes.datasets``: convert Cityscapes and SBD labels, check a dataset folder, weigh its classes."""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

import torch

from . import DATASET_CLASSES, __doc__ as package_doc, build_dataset, convert_cityscapes_trainids, convert_voc_sbd


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m recipes.datasets", description=package_doc.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("cityscapes-trainids", help="write *_gtFine_labelTrainIds.png from *_gtFine_labelIds.png")
    p.add_argument("root")
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--nproc", type=int, default=1)
    p = sub.add_parser("voc-sbd", help="build SegmentationClassAug/ and train_aug.txt from SBD")
    p.add_argument("sbd_root", help="benchmark_RELEASE/dataset")
    p.add_argument("voc_root", help="VOCdevkit/VOC2012")
    p.add_argument("--overwrite", action="store_true")
    p = sub.add_parser("check", help="build a dataset and read a few samples")
    p.add_argument("name", choices=sorted(DATASET_CLASSES))
    p.add_argument("root")
    p.add_argument("split", nargs="?", default="train")
    p.add_argument("-n", type=int, default=3)
    p = sub.add_parser("class-weights", help="median-frequency class weights of a split, for "
                       "--set loss.semantic_class_weight=...")
    p.add_argument("name", choices=sorted(DATASET_CLASSES))
    p.add_argument("root")
    p.add_argument("split", nargs="?", default="train")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.cmd == "cityscapes-trainids":
        n = convert_cityscapes_trainids(args.root, args.splits, args.overwrite, args.nproc)
        print(f"wrote {n} labelTrainIds files")
    elif args.cmd == "voc-sbd":
        n = convert_voc_sbd(args.sbd_root, args.voc_root, args.overwrite)
        print(f"wrote {n} label PNGs and ImageSets/Segmentation/train_aug.txt")
    elif args.cmd == "class-weights":
        from tqdm import tqdm

        from ..losses import median_frequency_weights
        ds = build_dataset(args.name, args.root, args.split)
        labels = (ds[i]["label"] for i in tqdm(range(len(ds)), desc=f"{args.name} {args.split} labels",
                                                 file=sys.stderr))
        weights = median_frequency_weights(labels, ds.num_classes)
        for name, weight in zip(ds.classes, weights.tolist()):
            print(f"# {name}: {weight:.4f}")
        print("(" + ", ".join(f"{w:.4f}" for w in weights.tolist()) + ")")
    else:
        ds = build_dataset(args.name, args.root, args.split)
        print(ds)
        for i in range(min(args.n, len(ds))):
            s = ds[i]
            values = sorted(int(v) for v in torch.unique(s["label"]))
            print(f"{s['path']}: image {tuple(s['image'].shape)}, label values {values}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
