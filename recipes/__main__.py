"""``python -m recipes``: list, train, evaluate and predict.

    python -m recipes list
    python -m recipes train camvid [--set train.iters=100 --set optim.lr=5e-4] [--out runs/x] [--resume]
    torchrun --nproc_per_node=2 -m recipes train camvid          # DDP (gloo on CPU, nccl on GPU)
    python -m recipes eval camvid --weights runs/x/best.pth
    python -m recipes predict --model spike2former_camvid --weights runs/x/best.pth img.png --out pred/
    python -m recipes plot runs/x                                 # training_curve.png / .svg
    python -m recipes data download camvid                        # into $SPIKEZOO_DATA (else ./data)
    python -m recipes data check camvid ade20k                    # samples per split against the published counts

At start the CLI sets up threads, OpenMP's spin-wait and glibc malloc for this machine and logs what
it chose (recipes.runtime; --threads N sets the intra-op threads, SPIKEZOO_RUNTIME=off keeps
PyTorch's defaults).

Bad input (an unknown recipe or model, a bad --set key or value, a missing data folder, a corrupt
image or label, weights that do not fit, --resume without a checkpoint) ends with one line naming
the problem and exit status 2, as argparse's own errors do. Training stopped by Ctrl-C or SIGTERM
saves its checkpoint first and exits with 130 or 143.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List, Optional

from . import runtime

runtime.prepare()  # OpenMP reads its spin-wait setting once, when torch loads it

import numpy as np  # noqa: E402

from zoo.hub import CheckpointMismatchError, WeightsUnavailableError  # noqa: E402

from . import config as cfg_lib  # noqa: E402
from .datasets import DatasetError  # noqa: E402

PROG = "python -m recipes"


class UsageError(Exception):
    """Bad command-line input: reported as a message with exit status 2, without a traceback."""


# What a user's input can make go wrong, reported without a traceback. OSError covers unreadable
# or missing files and a full disk: their messages name the file.
_USER_ERRORS = (UsageError, cfg_lib.RecipeError, DatasetError, CheckpointMismatchError, WeightsUnavailableError,
                OSError, FloatingPointError)


def _load_recipe(args) -> dict:
    recipe = cfg_lib.apply_overrides(cfg_lib.load_recipe(args.recipe), args.set or [])
    return cfg_lib.validate_recipe(recipe)


def cmd_list(args) -> int:
    for name in cfg_lib.list_recipes():
        recipe = cfg_lib.load_recipe(name)
        print(f"{name:18s} model={recipe['model']['name']:28s} dataset={recipe['data']['dataset']:14s} "
              f"iters={recipe['train']['iters']}")
    return 0


def cmd_train(args) -> int:
    from .engine import CheckpointError, TrainingInterrupted, train
    recipe = _load_recipe(args)
    if args.resume and not args.out and args.resume == "auto":
        raise UsageError("--resume without a checkpoint path needs --out: the run folder to continue")
    out = Path(args.out) if args.out else Path("runs") / f"{recipe['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = train(recipe, out, resume=args.resume, skip_bad=args.skip_bad, device=args.device,
                       progress=not args.no_progress)
    except CheckpointError as err:
        raise UsageError(str(err)) from err
    except TrainingInterrupted as stopped:
        print(f"{PROG} train: {stopped}", file=sys.stderr)
        return 128 + stopped.signum
    print(json.dumps({"out": str(out), **result}, indent=2, default=str))
    return 0


def cmd_eval(args) -> int:
    from .engine import DistributedContext, build_model, build_val_data, evaluate
    recipe = _load_recipe(args)
    ctx = DistributedContext(args.device)
    model = build_model(recipe, weights=args.weights).to(ctx.device)
    val_set, eval_tf = build_val_data(recipe, model, args.skip_bad)
    metrics = evaluate(model, val_set, eval_tf, ctx, args.limit, progress=not args.no_progress)
    if ctx.is_main:
        shown = {k: v for k, v in metrics.items() if not isinstance(v, (list, dict))}
        print(json.dumps(shown, indent=2, default=str))
    ctx.close()
    return 0


def _overlay(image: np.ndarray, colours: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    return (image * (1 - alpha) + colours * alpha).round().astype(np.uint8)


def cmd_predict(args) -> int:
    from PIL import Image
    import zoo
    from zoo.images import ImageReadError, read_rgb
    from .engine import to_label_size
    try:
        model = zoo.create(args.model, checkpoint_path=args.weights).eval()
    except KeyError as err:  # an unknown model
        raise UsageError(cfg_lib.error_message(err)) from err
    except ValueError as err:  # weights that are not a state_dict
        raise UsageError(f"--weights {args.weights}: {cfg_lib.error_message(err)}") from err
    cfg = model.pretrained_cfg
    palette = np.array(cfg.palette or [(i * 37 % 256, i * 91 % 256, i * 53 % 256) for i in range(256)],
                       dtype=np.uint8)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    unreadable = []
    for path in map(Path, args.images):
        try:
            rgb = read_rgb(path)
        except ImageReadError as err:  # the other images are still segmented
            print(f"{PROG} predict: skipped: {err}", file=sys.stderr)
            unreadable.append(str(path))
            continue
        prediction = model.predict(model.preprocess(rgb))  # at the config's evaluation size ...
        if cfg.task == "panoptic":
            segment_ids, segments = prediction[0]
            ids = to_label_size(segment_ids, rgb.shape[:2]).numpy()  # ... and back at the image's, as evaluated
            categories = np.zeros(len(segments) + 1, dtype=np.int64)
            for seg in segments:
                categories[seg["id"]] = seg["category_id"]
            colours = np.where(ids[..., None] > 0, palette[categories[ids] % len(palette)], 0)
            Image.fromarray(ids.astype(np.uint16)).save(out / f"{path.stem}_segments.png")
            (out / f"{path.stem}_segments.json").write_text(json.dumps(segments, indent=2))
        else:
            labels = to_label_size(prediction[0], rgb.shape[:2]).numpy()
            colours = palette[labels % len(palette)]
            dtype = np.uint8 if cfg.num_classes <= 256 else np.uint16
            Image.fromarray(labels.astype(dtype)).save(out / f"{path.stem}_labels.png")
        Image.fromarray(_overlay(rgb, colours)).save(out / f"{path.stem}_overlay.png")
        print(f"{path} -> {out}/{path.stem}_*.png")
    if unreadable:
        raise UsageError(f"{len(unreadable)} of {len(args.images)} images could not be read: {', '.join(unreadable)}")
    return 0


def cmd_plot(args) -> int:
    """Loss curve (and validation metric) of a run folder, as PNG and SVG."""
    import csv
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    run = Path(args.run)
    log_file = run / "log.csv"
    if not log_file.is_file():
        raise UsageError(f"{run} has no log.csv: is it a run folder written by `python -m recipes train`?")
    with open(log_file) as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise UsageError(f"{log_file} has no rows yet: the run has not logged an iteration")
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([int(r["iteration"]) for r in rows], [float(r["loss"]) for r in rows], label="training loss")
    ax.set_xlabel("iteration")
    config = run / "config.json"
    per_pixel = config.is_file() and json.loads(config.read_text())["loss"]["type"] == "per_pixel"
    ax.set_ylabel("loss (per-pixel cross-entropy)" if per_pixel else "loss (all query states)")
    val_file = run / "val.csv"
    val = []
    if val_file.is_file():
        with open(val_file) as handle:
            val = list(csv.DictReader(handle))
    if val:
        key = "PQ" if "PQ" in val[0] else "mIoU"
        twin = ax.twinx()
        twin.plot([int(r["iteration"]) for r in val], [float(r[key]) for r in val], "o-", color="C1",
                  label=f"val {key}")
        twin.set_ylabel(f"val {key} (%)")
    # one legend below the axes: inside them it sat on the last validation point
    handles = [line for axis in fig.axes for line in axis.get_lines()]
    fig.legend(handles=handles, labels=[line.get_label() for line in handles], loc="lower center",
               ncol=len(handles), frameon=False)
    ax.set_title(run.name)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    out = Path(args.out) if args.out else run
    out.mkdir(parents=True, exist_ok=True)
    from zoo.figures import save_figure
    for suffix in ("png", "svg"):
        save_figure(fig, out / f"training_curve.{suffix}", dpi=120)
    print(f"wrote {out}/training_curve.png and .svg")
    return 0


def cmd_data(args) -> int:
    from . import download
    root = Path(args.root) if args.root else cfg_lib.data_root()
    if args.action == "list":
        print("\n".join(download.describe(args.names)))
        return 0
    if not args.names:
        raise UsageError(f"data {args.action} needs dataset names; known: {sorted(download.SOURCES)}")
    complete = True
    for name in args.names:
        if args.action == "download":
            lines = download.download(name, root, progress=not args.no_progress)
        elif args.action == "prepare":
            if not args.downloaded:
                raise UsageError("data prepare needs --from FOLDER: where the archives you fetched are")
            lines = download.prepare_manual(name, root, Path(args.downloaded), progress=not args.no_progress)
        else:
            lines, ok = download.check(name, root)
            complete &= ok
        print("\n".join(lines))
    return 0 if complete else 1


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m recipes", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the available recipes").set_defaults(func=cmd_list)

    def common(p):
        p.add_argument("recipe", help="a recipe name (python -m recipes list) or a .py file defining RECIPE")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe value (repeatable)")
        p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
        p.add_argument("--skip-bad", action="store_true", help="skip unreadable samples instead of failing")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        runtime.add_threads_option(p)

    train = sub.add_parser("train", help="train a recipe")
    common(train)
    train.add_argument("--out", help="run folder (default runs/RECIPE-TIMESTAMP)")
    train.add_argument("--resume", nargs="?", const="auto", default=None,
                       help="continue from a checkpoint (default: OUT/last.pth)")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate weights on a recipe's validation set")
    common(ev)
    ev.add_argument("--weights", required=True, help="checkpoint: ours, a saved folder or an official one")
    ev.add_argument("--limit", type=_positive_int, default=None, help="only the first N validation images")
    ev.set_defaults(func=cmd_eval)

    pr = sub.add_parser("predict", help="segment images: label map PNG + colour overlay")
    pr.add_argument("--model", required=True, help="a registered model name (zoo.list_models())")
    pr.add_argument("--weights", help="checkpoint to load (default: the model's initial weights)")
    pr.add_argument("images", nargs="+", help="image files")
    pr.add_argument("--out", required=True, help="output folder")
    runtime.add_threads_option(pr)
    pr.set_defaults(func=cmd_predict)
    data = sub.add_parser("data", help="download, prepare or check datasets under the data root")
    data.add_argument("action", choices=("download", "check", "prepare", "list"))
    data.add_argument("names", nargs="*", help="datasets (python -m recipes data list)")
    data.add_argument("--root", help="the data root (default: $SPIKEZOO_DATA, else ./data)")
    data.add_argument("--from", dest="downloaded", help="prepare: the folder holding the archives you fetched")
    data.add_argument("--no-progress", action="store_true", help="no progress bars")
    data.set_defaults(func=cmd_data)
    plot = sub.add_parser("plot", help="plot a run's loss curve and validation metric")
    plot.add_argument("run", help="a run folder (holds log.csv, val.csv)")
    plot.add_argument("--out", help="output folder (default: the run folder)")
    plot.set_defaults(func=cmd_plot)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if hasattr(args, "threads"):
        logging.getLogger("recipes").info("%s", runtime.configure(args.threads))
    try:
        return args.func(args)
    except _USER_ERRORS as err:
        print(f"{PROG} {args.command}: error: {cfg_lib.error_message(err)}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
