"""``python -m analysis``: firing rates, spike degradation, query mask patterns and energy of a model
over a few images, written to a folder as PNG, CSV, JSON and Markdown.

    python -m analysis firing      --model spike2former_camvid --weights runs/camvid/best.pth --data camvid --out out/f
    python -m analysis degradation --model spike2former_camvid --weights runs/camvid/best.pth --data camvid --out out/d
    python -m analysis degradation --models saved/s2f saved/fpn --data camvid --out out/degr_models
    python -m analysis masks       --model saved/s2f --data camvid --limit 101 --out out/masks
    python -m analysis energy      --model spikefpn_camvid --data photos/ --size 360x480 --out out/energy
    python -m analysis demo        [--model spike2former_camvid] [--images a.jpg ...] [--out spikezoo-demo]

demo (the quick start) segments the CamVid frames that ship with the package (zoo/samples) with the
weights that ship with the package, offline: overlays beside the ground truth with a class legend
(demo.png), each image's label map, firing rate and energy (demo.csv, summary.md). --images segments
your own images instead; --weights uses a checkpoint instead of the shipped weights.

Model
  --model      a registered name (zoo.list_models()) or a folder written by save_pretrained (with its weights)
  --weights    a checkpoint loaded strictly: ours (runs/x/best.pth), a saved folder, .safetensors, an official one.
               Without --weights a registered name gets its own trained weights (pretrained=True: shipped with
               the package, or its Hub repo) when it has them, as the notebooks do; `--weights random`, and a
               name without trained weights, give the random initial weights drawn after
               torch.manual_seed(--seed): the numbers are those of an untrained network.
  --set K=V    a constructor argument, as a Python literal (repeatable): --set T=2 --set embed_dims=8,16,32,40

Data
  --data       a recipe (a name from `python -m recipes list`, or a .py file): its dataset, the split --split
               (default: the recipe's validation split) in the recipe's data.root (a folder under
               $SPIKEZOO_DATA, else ./data, as for `python -m recipes`; --data-root overrides it), resized as
               its eval transforms do.
               Or a folder of .jpg/.jpeg/.png images (sub-folders are not searched; write ./camvid for a folder
               named like a recipe), in name order, at their own size.
               Images are normalised with the model's mean/std (its pretrained_cfg).
  --limit N    the first N images (default 20; 0: all of them)
  --size S     resize every image before normalisation, instead of the recipe's eval resize: S = short side
               (keeping the aspect ratio) or HxW (exactly), e.g. --size 180 or --size 180x240 for quick CPU runs

Outputs (in --out)
  firing       firing_layers.csv (one row per spiking neuron, analysis.firing.LayerFiring), firing_groups.csv
               (per module group), firing_groups.png (firing rate and non-zero fraction per group)
  degradation  degradation.png/.svg (firing rate against depth, analysis.degradation), degradation.csv (the plotted
               points: model, depth, layer, group, firing_rate), degradation_marked.csv (the starred SDME neurons)
  masks        query_masks.npz, query_masks_classes.csv, query_masks_masks.png/.svg (mean mask of every query),
               query_masks_classes.png/.svg (class histogram per query) (analysis.masks)
  energy       energy.csv, energy.json, energy.md (every row, with the convention of analysis.energy),
               energy_by_part.csv and energy_by_part.png (mJ per part: MAC and AC energy stacked)
  every one    summary.json and summary.md: the model, the images and the headline numbers

The firing rate is the mean integer count per neuron per time step (analysis.firing).

`degradation --model M` compares a Spike2Former with and without its ME-Shortcut. The ablated model is
built with me_shortcut=False and gets every weight of M except the shortcut's own (sdme.shortcut_conv.*,
sdme.shortcut_weight), whether M's weights are random (seeded) or loaded: with trained weights it is the
trained network with the shortcut cut out (not retrained), not the paper's ablation trained without it.
`--models A B ...` compares models instead (names or saved folders; the same --seed and --set for each;
images normalised with the first one's mean/std).

Bad input (unknown model, missing data, empty image folder, a checkpoint that does not fit) ends with an
error message, without a traceback, and exit status 2, as argparse's own errors do.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from recipes import runtime

runtime.prepare()  # OpenMP reads its spin-wait setting once, when torch loads it

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision import tv_tensors  # noqa: E402
from torchvision.transforms import v2  # noqa: E402
from torchvision.transforms.v2 import functional as TF  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import zoo  # noqa: E402
from recipes.config import DATA_ENV, apply_overrides, dataset_path, error_message, list_recipes, load_recipe  # noqa: E402
from recipes.datasets import DatasetError, build_dataset  # noqa: E402
from recipes.transforms import Normalize, build_transforms, short_side_size  # noqa: E402
from zoo.figures import save_figure  # noqa: E402
from zoo.hub import CONFIG_NAME, CheckpointMismatchError, WeightsUnavailableError  # noqa: E402
from zoo.images import ImageReadError, read_rgb  # noqa: E402
from zoo.registry import SHIPPED_WEIGHTS, is_model  # noqa: E402

from .degradation import spike_degradation, without_me_shortcut
from .demo import class_pixel_counts, segment_frame, write_demo
from .export import ExportError, export_run
from .export import __doc__ as export_doc
from .energy import E_AC_PJ, E_MAC_PJ, estimate
from .firing import FiringReport, measure_firing
from .masks import query_mask_patterns, write_query_mask_patterns

PROG = "python -m analysis"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
DEFAULT_LIMIT = 20
RANDOM_WEIGHTS = "random"  # --weights value: the seeded initial weights, even for a name with trained ones
MASK_EMBEDDING_NEURON = "sdme.embed_spike"
WITH_SHORTCUT, WITHOUT_SHORTCUT = "ME-Shortcut", "no ME-Shortcut"
_PJ_PER_MJ = 1e9

Size = Union[int, Tuple[int, int]]


class UsageError(Exception):
    """Bad command-line input: reported as a message with exit status 2, without a traceback."""


# ------------------------------------------------------------------------------------ images

class ResizeTo:
    """Resize a sample's image to a short side (an int, keeping the ratio) or to exactly (H, W)."""

    def __init__(self, size: Size):
        self.size = size

    def __call__(self, sample: dict) -> dict:
        image = sample["image"]
        height, width = image.shape[-2:]
        size = short_side_size(height, width, self.size) if isinstance(self.size, int) else self.size
        return {**sample, "image": TF.resize(image, list(size), interpolation=v2.InterpolationMode.BILINEAR,
                                             antialias=True)}

    def __repr__(self):
        return f"ResizeTo({self.size})"


@dataclass
class Images:
    """The images an analysis runs on, read and transformed one at a time (re-iterable, so several
    models can see the same images); ``sizes`` collects the (H, W) of the images handed out."""

    description: str
    count: int
    read: Callable[[int], dict]
    transform: Callable[[dict], dict]
    sizes: Set[Tuple[int, int]] = field(default_factory=set)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.count:
            raise IndexError(index)
        image = self.transform(self.read(index))["image"].as_subclass(torch.Tensor)
        self.sizes.add(tuple(image.shape[-2:]))
        return image

    def __iter__(self):
        return (self[i] for i in range(self.count))


def parse_size(text: str) -> Size:
    match = re.fullmatch(r"([1-9]\d*)(?:x([1-9]\d*))?", text.strip().lower())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected S (short side) or HxW, e.g. 180 or 180x240, got {text!r}")
    height, width = match.groups()
    return int(height) if width is None else (int(height), int(width))


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 0 or more, got {value}")
    return value


def _read_rgb(path: Path) -> dict:
    try:
        rgb = read_rgb(path)  # 16-bit images scaled to 8 bits, not clipped
    except ImageReadError as err:
        raise UsageError(str(err)) from None
    return {"image": tv_tensors.Image(torch.from_numpy(rgb).permute(2, 0, 1))}


def _is_recipe(data: str) -> bool:
    return data in list_recipes() or (data.endswith(".py") and Path(data).is_file())


def load_images(args, mean: Sequence[float], std: Sequence[float]) -> Images:
    """``--data`` (a recipe or an image folder) with ``--split``, ``--data-root``, ``--limit`` and ``--size``."""
    resize = [ResizeTo(args.size)] if args.size is not None else []
    if _is_recipe(args.data):
        return _recipe_images(args, mean, std, resize)
    folder = Path(args.data)
    if not folder.is_dir():
        raise UsageError(f"--data {args.data}: neither a recipe ({', '.join(list_recipes())} or a .py file) "
                         "nor an existing folder of images")
    if args.split is not None or args.data_root is not None:
        raise UsageError("--split and --data-root apply to a recipe, not to an image folder")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise UsageError(f"{folder} holds no {'/'.join(IMAGE_SUFFIXES)} images (sub-folders are not searched)")
    files = files[: args.limit or None]
    return Images(f"{len(files)} image(s) of the folder {folder}", len(files), lambda i: _read_rgb(files[i]),
                  v2.Compose([*resize, Normalize(mean, std)]))


def _recipe_images(args, mean, std, resize) -> Images:
    try:
        recipe = load_recipe(args.data)
    except (KeyError, ValueError, OSError) as err:
        raise UsageError(error_message(err)) from None
    data = recipe["data"]
    split = args.split or data["val_split"]
    root = args.data_root or dataset_path(data["root"])
    try:
        dataset = build_dataset(data["dataset"], root, split)
    except (DatasetError, KeyError, OSError) as err:
        raise UsageError(f"recipe {recipe['name']}, {data['dataset']} {split} split at {root} (--data-root sets "
                         f"the dataset folder, ${DATA_ENV} the folder of all datasets): {error_message(err)}") from None
    # the recipe's eval resize unless --size replaces it
    transform = (v2.Compose([*resize, Normalize(mean, std)]) if resize
                 else build_transforms(recipe, False, mean, std))
    count = min(args.limit or len(dataset), len(dataset))

    def read(index: int) -> dict:
        try:
            return {"image": dataset[index]["image"]}
        except DatasetError as err:
            raise UsageError(str(err)) from None

    return Images(f"{count} image(s) of the {data['dataset']} {split} split at {root} (recipe {recipe['name']})",
                  count, read, transform)


# ------------------------------------------------------------------------------------ models

def model_kwargs(items: Sequence[str]) -> Dict[str, object]:
    """``--set K=V`` items -> constructor keyword arguments (values parsed as in ``python -m recipes``)."""
    for item in items:
        key, equals, _ = item.partition("=")
        if not equals or not key.strip().isidentifier():
            raise UsageError(f"--set expects KEY=VALUE with KEY a constructor argument, got {item!r}")
    return apply_overrides({"kwargs": {}}, [f"kwargs.{item}" for item in items])["kwargs"]


def _uses_pretrained(source: str, weights: Optional[str]) -> bool:
    """A registered name without ``--weights`` gets its own trained weights when its config has them."""
    return weights is None and is_model(source) and zoo.get_pretrained_cfg(source).has_weights


def load_model(source: str, weights: Optional[str], kwargs: Dict[str, object], seed: int,
               device: torch.device) -> nn.Module:
    """``zoo.create(source, **kwargs)`` after seeding, with ``weights`` loaded strictly (a checkpoint; None: the
    name's trained weights if it has them; ``random``: none); in eval mode."""
    path = Path(source)
    if not is_model(source) and path.is_dir() and not (path / CONFIG_NAME).is_file():
        raise UsageError(f"{source} is a folder without {CONFIG_NAME}: pass a registered model name or a folder "
                         "written by save_pretrained")
    if weights == RANDOM_WEIGHTS and not is_model(source):
        raise UsageError(f"--weights {RANDOM_WEIGHTS} applies to a registered model name; {source} is a saved "
                         "folder with its own weights")
    pretrained = _uses_pretrained(source, weights)
    torch.manual_seed(seed)
    try:
        model = zoo.create(source, pretrained=pretrained,
                           checkpoint_path=None if weights == RANDOM_WEIGHTS else weights, **kwargs)
    except TypeError as err:
        if not kwargs:
            raise
        raise UsageError(f"cannot build {source} with --set {kwargs}: {err}") from None
    except CheckpointMismatchError as err:
        hint = (f" (its trained weights do not fit --set {kwargs}: pass --weights {RANDOM_WEIGHTS} for random "
                "ones, or a checkpoint)" if pretrained and kwargs else "")
        raise UsageError(error_message(err) + hint) from None
    except (KeyError, ValueError, OSError, WeightsUnavailableError) as err:
        raise UsageError(error_message(err)) from None
    return model.to(device).eval()


def _model_from_args(args) -> nn.Module:
    return load_model(args.model, args.weights, model_kwargs(args.set or []), args.seed, _device(args))


def _device(args) -> torch.device:
    return torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))


# ------------------------------------------------------------------------------------ outputs

def _mask_embedding_rate(report: FiringReport) -> Optional[float]:
    names = {row.name for row in report.layers}
    return report.layer(MASK_EMBEDDING_NEURON).mean_count if MASK_EMBEDDING_NEURON in names else None


def _table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> List[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(v) for v in row) + " |" for row in rows)]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        # repr keeps every float exact through a round trip
        writer.writerows([repr(v) if isinstance(v, float) else v for v in row] for row in rows)


def _weights_of(source: str, weights: Optional[str]) -> Optional[str]:
    """What the model's weights come from: the checkpoint, the saved folder, the name's trained weights, or
    None (random)."""
    if weights == RANDOM_WEIGHTS:
        return None
    if _uses_pretrained(source, weights):
        cfg = zoo.get_pretrained_cfg(source)
        return f"{cfg.name} (pretrained=True: {'shipped with the package' if cfg.shipped_file else cfg.hub_id})"
    return weights or (None if is_model(source) else source)


def _describe(args, models: Dict[str, nn.Module], sources: Dict[str, str], images: Images) -> dict:
    return {"models": {label: {"name": model.pretrained_cfg.name,
                               "weights": _weights_of(sources[label], args.weights)}
                       for label, model in models.items()},
            "seed": args.seed, "model_kwargs": model_kwargs(args.set or []),
            "data": images.description, "images": len(images),
            "image_sizes": [list(size) for size in sorted(images.sizes)]}


def _describe_one(args, model: nn.Module, images: Images) -> dict:
    return _describe(args, {args.model: model}, {args.model: args.model}, images)


def _preamble(title: str, summary: dict) -> List[str]:
    weights = sorted({m["weights"] or f"random (seed {summary['seed']}: untrained)"
                      for m in summary["models"].values()})
    sizes = ", ".join(f"{h}x{w}" for h, w in summary["image_sizes"])
    return [f"# {title}", "", f"{summary['data']} (size {sizes}); weights: {', '.join(weights)}.", ""]


def _finish(out: Path, command: str, summary: dict, markdown: List[str]) -> int:
    (out / "summary.json").write_text(json.dumps({"command": command, **summary}, indent=2))
    text = "\n".join(markdown) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    print(f"wrote to {out}: {', '.join(sorted(p.name for p in out.iterdir()))}")
    return 0


# ------------------------------------------------------------------------------------ commands

def _plot_groups(report: FiringReport, title: str, path: Path) -> None:
    groups = report.groups
    x = np.arange(len(groups))
    # a bare Figure renders with Agg without touching pyplot's global state
    fig = Figure(figsize=(max(6.0, 0.75 * len(groups) + 2), 4.2))
    ax = fig.subplots()
    ax.bar(x - 0.2, [g.mean_count for g in groups], 0.4, label="firing rate (mean count per neuron per step)")
    ax.bar(x + 0.2, [g.nonzero_fraction for g in groups], 0.4, label="non-zero fraction")
    ax.set_xticks(x, [g.group for g in groups], rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("per neuron per step")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=150)


def cmd_firing(args, out: Path) -> int:
    model = _model_from_args(args)
    cfg = model.pretrained_cfg
    images = load_images(args, cfg.mean, cfg.std)
    report = measure_firing(model, images, progress=not args.no_progress)
    report.to_csv(out / "firing_layers.csv")
    report.groups_to_csv(out / "firing_groups.csv")
    _plot_groups(report, f"Firing rate per module group: {cfg.name}, {len(images)} image(s)",
                 out / "firing_groups.png")
    summary = {**_describe_one(args, model, images), "layers": len(report.layers),
               "mean_firing_rate": report.pooled_rate, "mask_embedding_rate": _mask_embedding_rate(report),
               "groups": {g.group: {"firing_rate": g.mean_count, "nonzero_fraction": g.nonzero_fraction,
                                    "layers": g.layers, "neurons": g.neurons} for g in report.groups}}
    embedding = summary["mask_embedding_rate"]
    markdown = [*_preamble(f"Firing rates of {cfg.name}", summary),
                f"Firing rate (mean count per neuron per step) over all {len(report.layers)} spiking neurons: "
                f"{summary['mean_firing_rate']:.4f}; mask-embedding neuron {MASK_EMBEDDING_NEURON}: "
                + (f"{embedding:.4f}" if embedding is not None else "none in this model"), "",
                *_table(["group", "layers", "neurons per image-step", "firing rate", "non-zero fraction"],
                        [(g.group, g.layers, f"{g.neurons:.0f}", f"{g.mean_count:.4f}", f"{g.nonzero_fraction:.4f}")
                         for g in report.groups])]
    return _finish(out, "firing", summary, markdown)


def cmd_degradation(args, out: Path) -> int:
    kwargs = model_kwargs(args.set or [])
    device = _device(args)
    dropped = None
    if args.models:
        if args.weights:
            raise UsageError("--weights applies to --model; with --models pass saved folders (save_pretrained)")
        if len(set(args.models)) != len(args.models):
            raise UsageError("--models lists a model twice")
        models = {source: load_model(source, None, kwargs, args.seed, device) for source in args.models}
        sources = {source: source for source in args.models}
    else:
        model = load_model(args.model, args.weights, kwargs, args.seed, device)
        if not getattr(model, "has_me_shortcut", False):
            raise UsageError(f"{args.model} has no ME-Shortcut to remove (only a Spike2Former built with "
                             "me_shortcut=True has one); compare models with --models A B ...")
        ablated, dropped = without_me_shortcut(model)
        models = {WITH_SHORTCUT: model, WITHOUT_SHORTCUT: ablated}
        sources = dict.fromkeys(models, args.model)
    cfg = next(iter(models.values())).pretrained_cfg
    images = load_images(args, cfg.mean, cfg.std)
    plot, reports = spike_degradation(models, images, out / "degradation", progress=not args.no_progress)
    _write_csv(out / "degradation.csv", ["model", "depth", "layer", "group", "firing_rate"],
               [(label, row.depth, row.name, row.group, row.mean_count)
                for label, report in reports.items() for row in report.layers])
    _write_csv(out / "degradation_marked.csv", ["model", "neuron", "depth", "firing_rate"],
               [(label, neuron, depth, rate) for label, marked in plot.marked.items()
                for neuron, (depth, rate) in marked.items()])
    summary = {**_describe(args, models, sources, images), "ablation_dropped_weights": dropped,
               "per_model": {label: {"layers": len(r.layers), "mean_firing_rate": r.pooled_rate,
                                     "marked": {n: rate for n, (_, rate) in plot.marked[label].items()}}
                             for label, r in reports.items()}}
    title = (f"Spike degradation of {cfg.name} with and without ME-Shortcut" if dropped is not None
             else "Spike degradation of " + ", ".join(models))
    neurons = sorted({n for marked in plot.marked.values() for n in marked})
    markdown = [*_preamble(title, summary)]
    if dropped is not None:
        markdown += [f"The model without ME-Shortcut holds every weight of the full one except {', '.join(dropped)} "
                     "(not retrained).", ""]
    markdown += _table(["model", "layers", "mean firing rate", *neurons],
                       [(label, s["layers"], f"{s['mean_firing_rate']:.4f}",
                         *(f"{s['marked'][n]:.4f}" if n in s["marked"] else "-" for n in neurons))
                        for label, s in summary["per_model"].items()])
    return _finish(out, "degradation", summary, markdown)


def cmd_masks(args, out: Path) -> int:
    model = _model_from_args(args)
    cfg = model.pretrained_cfg
    if getattr(model, "family", None) != "mask_classification":
        raise UsageError(f"{args.model} is a {type(model).__name__}, which predicts no query masks; "
                         "masks needs a mask-classification model (a Spike2Former)")
    images = load_images(args, cfg.mean, cfg.std)
    patterns = query_mask_patterns(model, images, size=args.mask_size, progress=not args.no_progress)
    names = list(cfg.class_names) if len(cfg.class_names) == patterns.num_classes else None
    write_query_mask_patterns(patterns, out / "query_masks", class_names=names, columns=args.columns)
    labels = names or [str(c) for c in range(patterns.num_classes)]
    queries = []
    for q, votes in enumerate(patterns.class_histogram):
        objects = votes[:-1]
        top = int(objects.argmax())
        queries.append({"query": q, "top_class": labels[top] if objects[top] else None,
                        "top_class_images": int(objects[top]), "no_object_images": int(votes[-1]),
                        "mean_mask": float(patterns.mean_masks[q].mean())})
    summary = {**_describe_one(args, model, images), "queries": len(queries),
               "num_classes": patterns.num_classes, "mask_size": args.mask_size, "per_query": queries}
    markdown = [*_preamble(f"Query mask patterns of {cfg.name}", summary),
                *_table(["query", "most predicted class", "images", "no-object images", "mean mask"],
                        [(q["query"], q["top_class"] or "-", q["top_class_images"], q["no_object_images"],
                          f"{q['mean_mask']:.4f}") for q in queries])]
    return _finish(out, "masks", summary, markdown)


def _plot_parts(parts: Dict[str, Dict[str, float]], title: str, path: Path) -> None:
    names = list(parts)
    mac = [parts[p]["mac_mj"] for p in names]
    ac = [parts[p]["ac_mj"] for p in names]
    fig = Figure(figsize=(max(5.0, 1.1 * len(names) + 2), 4.2))
    ax = fig.subplots()
    ax.bar(names, mac, label=f"MACs (analog input) x {E_MAC_PJ} pJ")
    ax.bar(names, ac, bottom=mac, label=f"ACs (spike input) x {E_AC_PJ} pJ")
    ax.set_ylabel("energy per image (mJ)")
    ax.set_title(title, fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=150)


def cmd_energy(args, out: Path) -> int:
    model = _model_from_args(args)
    cfg = model.pretrained_cfg
    images = load_images(args, cfg.mean, cfg.std)
    progress = not args.no_progress
    batch = list(tqdm(images, desc="reading images", disable=not progress))
    if len(images.sizes) > 1:
        raise UsageError(f"energy needs images of one size, got {sorted(images.sizes)}: pass --size HxW")
    with tqdm(total=len(batch), desc="energy", disable=not progress) as bar:
        handle = model.register_forward_hook(lambda module, inputs, output: bar.update(inputs[0].shape[0]))
        try:
            report = estimate(model, torch.stack(batch).to(next(model.parameters()).device))
        finally:
            handle.remove()
    report.to_csv(out / "energy.csv")
    report.to_json(out / "energy.json")
    (out / "energy.md").write_text(report.to_markdown(per_layer=True) + "\n")
    parts = {part: {**totals, "mac_mj": totals["macs"] * E_MAC_PJ / _PJ_PER_MJ,
                    "ac_mj": totals["acs"] * E_AC_PJ / _PJ_PER_MJ} for part, totals in report.by_part().items()}
    columns = ["macs", "acs", "dense_macs", "mac_mj", "ac_mj", "mj"]
    _write_csv(out / "energy_by_part.csv", ["part", *columns],
               [(part, *(totals[c] for c in columns)) for part, totals in parts.items()])
    _plot_parts(parts, f"Energy per image by part: {cfg.name}, {report.total_mj:.4g} mJ", out / "energy_by_part.png")
    summary = {**_describe_one(args, model, images), "T": report.T, "input_shape": list(report.input_shape),
               "total_mj": report.total_mj, "total_macs": report.total_macs, "total_acs": report.total_acs,
               "dense_macs": report.dense_macs, "by_part": parts,
               "paper_energy_mj": cfg.paper.get("energy_mj"), "measured_energy_mj": cfg.energy_mj}
    paper = summary["paper_energy_mj"]
    paper_text = (f"{paper} mJ, trained, at {cfg.crop_size[0]}x{cfg.crop_size[1]}" if paper is not None
                  else "no figure for this model")
    markdown = [*_preamble(f"Energy of {cfg.name}", summary),
                f"Energy per image: {report.total_mj:.4g} mJ (T={report.T}, input "
                f"{'x'.join(map(str, report.input_shape))}); paper (Table 1): {paper_text}", "",
                *_table(["part", "MACs (G)", "ACs (G)", "MAC energy (mJ)", "AC energy (mJ)", "energy (mJ)"],
                        [(p, f"{t['macs'] / 1e9:.4g}", f"{t['acs'] / 1e9:.4g}", f"{t['mac_mj']:.4g}",
                          f"{t['ac_mj']:.4g}", f"{t['mj']:.4g}") for p, t in parts.items()]),
                "", "Every layer, and the convention: energy.md, energy.csv, energy.json."]
    return _finish(out, "energy", summary, markdown)


def _demo_model(args) -> nn.Module:
    """``--weights`` if given, else the config's own trained weights (shipped, or on the Hub); never random."""
    if args.weights is None and is_model(args.model) and not zoo.get_pretrained_cfg(args.model).has_weights:
        with_weights = [name for name in zoo.list_pretrained() if zoo.get_pretrained_cfg(name).shipped_file]
        raise UsageError(f"{args.model} has no trained weights (none ship with the package and its config names "
                         f"no Hub repo): pass --weights CHECKPOINT, or a model whose weights ship: {with_weights}")
    try:
        model = zoo.create(args.model, pretrained=_uses_pretrained(args.model, args.weights),
                           checkpoint_path=args.weights)
    except (KeyError, ValueError, OSError, CheckpointMismatchError, WeightsUnavailableError) as err:
        raise UsageError(error_message(err)) from None
    return model.to(_device(args)).eval()


def cmd_demo(args, out: Path) -> int:
    from zoo.samples import sample_frames
    model = _demo_model(args)
    cfg = model.pretrained_cfg
    if cfg.task != "semantic":
        raise UsageError(f"{cfg.name} is a {cfg.task} model; the demo segments semantically: use "
                         "`python -m recipes predict` for its segments")
    if args.images:
        inputs = [(Path(p).stem, Path(p), None) for p in args.images]
    else:
        try:
            inputs = [(f.name, f.image, f.label) for f in sample_frames(cfg.dataset)]
        except FileNotFoundError as err:
            raise UsageError(f"{err}; pass --images") from None
    results = []
    for name, image, truth in tqdm(inputs, desc="segmenting", disable=args.no_progress):
        try:
            result = segment_frame(model, image, name, truth)
        except ImageReadError as err:
            raise UsageError(str(err)) from None
        Image.fromarray(result.labels.astype(np.uint8 if cfg.num_classes <= 256 else np.uint16)).save(
            out / f"{name}_labels.png")
        results.append(result)
    weights = args.weights or (cfg.shipped_file and f"shipped ({cfg.shipped_file})") or cfg.hub_id
    write_demo(results, cfg.class_names, cfg.palette, out / "demo.png", f"{cfg.name}, weights: {weights}")
    rows = [(r.name, f"{r.labels.shape[0]}x{r.labels.shape[1]}", f"{r.firing_rate:.4f}", f"{r.energy_mj:.4g}",
             "" if r.pixel_accuracy is None else f"{r.pixel_accuracy:.1f}") for r in results]
    header = ["image", "size", "firing rate", "energy (mJ)", "pixel accuracy (%)"]
    _write_csv(out / "demo.csv", header, rows)
    summary = {"model": cfg.name, "weights": weights, "val_metrics": cfg.metrics.get("val"),
               "images": [{"name": r.name, "firing_rate": r.firing_rate, "energy_mj": r.energy_mj,
                           "pixel_accuracy": r.pixel_accuracy,
                           "class_pixels": class_pixel_counts(r.labels, cfg.num_classes)} for r in results]}
    val = cfg.metrics.get("val") or {}
    headline = (f"{cfg.name} ({weights}; {val['mIoU']:.1f} val mIoU)" if "mIoU" in val else f"{cfg.name} ({weights})")
    markdown = [f"# Demo: {headline}", "", *_table(header, rows), "",
                "Firing rate: mean spike count per neuron per time step over the whole network; energy: one "
                "inference (analysis.energy's convention). demo.png: image | prediction | ground truth."]
    return _finish(out, "demo", summary, markdown)


def cmd_export(args, out: Optional[Path]) -> int:
    try:
        weights, meta = export_run(args.run, args.to, args.checkpoint, args.images or None,
                                   progress=not args.no_progress, history=args.history)
    except (ExportError, KeyError, OSError, CheckpointMismatchError) as err:
        raise UsageError(error_message(err)) from None
    record = json.loads(meta.read_text())
    val = record["metrics"]["val"]
    print(f"wrote {weights} ({weights.stat().st_size / 2 ** 20:.2f} MB) and {meta}: val mIoU {val['mIoU']}, "
          f"firing rate {record['firing_rate']}, {record['energy_mj']} mJ per image")
    return 0


# ------------------------------------------------------------------------------------ command line

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help_text: str, single_model: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=f"{help_text}. See `{PROG} --help`.")
        if single_model:
            p.add_argument("--model", required=True, help="a registered model name or a save_pretrained folder")
        p.add_argument("--weights", help="checkpoint to load, or 'random' (default: the folder's weights, a "
                                         "name's trained weights when it has them, else random ones)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="a constructor argument as a Python literal (repeatable)")
        p.add_argument("--seed", type=int, default=0, help="torch seed before building a model (random weights)")
        p.add_argument("--data", required=True, help="a recipe name or .py file, or a folder of jpg/png images")
        p.add_argument("--split", help="a recipe's split (default: its validation split)")
        p.add_argument("--data-root", help="a recipe's dataset folder (default: its data.root)")
        p.add_argument("--limit", type=_non_negative, default=DEFAULT_LIMIT,
                       help=f"the first N images (default {DEFAULT_LIMIT}; 0: all)")
        p.add_argument("--size", type=parse_size, help="resize: short side S or HxW, e.g. 180 or 180x240")
        p.add_argument("--out", required=True, help="output folder (created)")
        p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        runtime.add_threads_option(p)
        p.set_defaults(func=func)
        return p

    command("firing", cmd_firing, "firing rate of every spiking neuron and module group")
    degradation = command("degradation", cmd_degradation,
                          "firing rate against depth: with and without ME-Shortcut, or several models",
                          single_model=False)
    which = degradation.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a Spike2Former: compared with itself without ME-Shortcut")
    which.add_argument("--models", nargs="+", metavar="MODEL", help="models to compare (names or saved folders)")
    masks = command("masks", cmd_masks, "mean mask and class histogram of every query (Spike2Former)")
    masks.add_argument("--mask-size", type=int, default=200, help="side of the mean masks (default 200)")
    masks.add_argument("--columns", type=int, default=10, help="queries per row of the grid (default 10)")
    command("energy", cmd_energy, "MACs, ACs and energy per layer and per part")
    demo = sub.add_parser("demo", help="segment the bundled sample frames with shipped weights (offline)",
                          description="Segment images with a model's trained weights and report each one's "
                                      f"firing rate and energy. See `{PROG} --help`.")
    demo.add_argument("--model", default="spike2former_camvid",
                      help="a registered name with trained weights, or a save_pretrained folder "
                           "(default spike2former_camvid)")
    demo.add_argument("--weights", help="a checkpoint instead of the model's shipped weights")
    demo.add_argument("--images", nargs="+", metavar="IMAGE",
                      help="images to segment (default: the frames that ship for the model's dataset)")
    demo.add_argument("--out", default="spikezoo-demo", help="output folder (default spikezoo-demo)")
    demo.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    runtime.add_threads_option(demo)
    demo.set_defaults(func=cmd_demo)
    export = sub.add_parser("export", help="a finished training run -> shipped weights and their record",
                            description=export_doc)
    export.add_argument("run", help="the run folder of `python -m recipes train --out RUN`")
    export.add_argument("--to", default=str(SHIPPED_WEIGHTS), help=f"output folder (default {SHIPPED_WEIGHTS})")
    export.add_argument("--checkpoint", default="last.pth", help="the run's checkpoint to export (default last.pth)")
    export.add_argument("--images", type=_non_negative, default=0,
                        help="validation images to measure firing and energy over (default 0: all)")
    export.add_argument("--history", help="what the run folder cannot tell (e.g. a resume with other settings), "
                                          "recorded with the weights")
    export.add_argument("--no-progress", action="store_true", help="no progress bars")
    export.add_argument("--out", default=None, help=argparse.SUPPRESS)
    runtime.add_threads_option(export)
    export.set_defaults(func=cmd_export)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    print(runtime.configure(args.threads), file=sys.stderr)
    out = Path(args.out) if args.out is not None else None
    try:
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
        return args.func(args, out)
    except UsageError as err:
        print(f"{PROG} {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
