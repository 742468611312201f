"""Turn a finished training run into weights that ship with the package, with their record.

    python -m analysis export runs/camvid-ship                  # -> zoo/weights/<arch>.<tag>.{safetensors,json}
    python -m analysis export runs/camvid-ship --to out/ --images 20

The run folder is the one ``python -m recipes train`` writes (``config.json``, ``metrics.json``,
``log.csv``, ``last.pth``). The final weights are exported (not the best evaluation's: choosing
among evaluations would tune on the validation split a second time). The JSON beside them fills
the model's pretrained config when the package is imported (:mod:`zoo.registry`):

- ``metrics``: the run's final validation metrics (mIoU, mAcc, aAcc, per-class IoU and accuracy);
- ``firing_rate`` and ``energy_mj``: measured here over the first ``--images`` validation images at
  the evaluation size (pooled firing rate of every spiking neuron; energy per image, analysis.energy);
- ``training``: recipe, the command that reproduces the run, iterations, epochs, wall time (while it
  ran: the sum over its starts, so a run stopped in one session and resumed in the next is not charged
  for the pause; ``starts`` counts them; :func:`running_seconds`),
  seconds per iteration, machine, date, and a ``history`` the caller gives (``--history``);
- ``sample_predictions``: how many pixels of each class the weights predict on each frame bundled
  in ``zoo/samples/<dataset>``, so that a test can tell when weights and code drift apart.

Only runs of a registered model with its registered arguments are exported: shipped weights must
load into ``zoo.create(name, pretrained=True)`` as it stands.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import statistics
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from tqdm.auto import tqdm

import zoo
from recipes import config as cfg_lib
from recipes.engine import build_train_data, build_val_data
from zoo.hub import write_files_atomically
from zoo.images import read_rgb
from zoo.registry import SHIPPED_WEIGHTS

from .demo import class_pixel_counts, pixel_accuracy, predict_labels, read_label_map
from .energy import estimate
from .firing import FiringReport, measure_firing

__all__ = ["ExportError", "export_run", "measure_on_val", "reproducing_command", "run_started", "running_seconds",
           "sample_prediction_drift"]

RUN_FILES = ("config.json", "metrics.json", "log.csv")


class ExportError(ValueError):
    """A run folder that cannot become shipped weights (unfinished, changed model, missing files)."""


def _leaves(tree: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(tree, dict):
        out: Dict[str, Any] = {}
        for key, value in tree.items():
            out.update(_leaves(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: list(tree) if isinstance(tree, tuple) else tree}


def _literal(value: Any) -> str:
    """``value`` as ``--set`` parses it back (a Python literal; a bare string where that is unambiguous)."""
    if isinstance(value, (list, tuple)):
        return "(" + ",".join(map(_literal, value)) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, str) and cfg_lib.parse_value(value) == value:
        return value
    return repr(value)


def reproducing_command(recipe: Dict[str, Any], out: str = "runs/NAME") -> str:
    """``python -m recipes train NAME [--set k=v ...]``: the registered recipe and what the run changed."""
    name = recipe["name"]
    registered = json.loads(json.dumps(cfg_lib.load_recipe(name)))  # tuples as lists, as in config.json
    ran, reference = _leaves(recipe), _leaves(registered)
    changed = [f"--set {shlex.quote(f'{key}={_literal(value)}')}" for key, value in ran.items()
               if key != "name" and reference.get(key, object()) != value]
    return " ".join(["python -m recipes train", name, f"--out {out}", *changed])


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} threads, "
            f"{platform.system()} {platform.machine()}, torch {torch.__version__}")


def _read_run(run: Path) -> Tuple[Dict[str, Any], Dict[str, Any], List[List[str]]]:
    if not run.is_dir():
        raise ExportError(f"{run} is not a run folder (python -m recipes train --out {run} writes one)")
    missing = [name for name in RUN_FILES if not (run / name).is_file()]
    if missing:
        raise ExportError(f"{run} lacks {', '.join(missing)}: export needs a finished training run")
    recipe = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    log = [line.split(",", 4) for line in (run / "log.csv").read_text().splitlines()[1:] if line]
    return recipe, metrics, log


def measure_on_val(model: torch.nn.Module, recipe: Dict[str, Any], images: Optional[int] = None,
                   progress: bool = False) -> Tuple[FiringReport, float, int]:
    """Firing of every neuron (pooled over the images) and the mean energy per image (mJ) of ``model`` over
    the first ``images`` (None: all) validation images of ``recipe`` at the evaluation size; and how many."""
    val_set, eval_tf = build_val_data(recipe, model)
    count = len(val_set) if images is None else min(images, len(val_set))
    samples = [eval_tf(val_set[i])["image"] for i in tqdm(range(count), desc="val images", disable=not progress)]
    firing = measure_firing(model, ({"image": s} for s in samples), progress=progress)
    energies = [estimate(model, s.unsqueeze(0)).total_mj for s in tqdm(samples, desc="energy", disable=not progress)]
    return firing, statistics.fmean(energies), count


def _starts(run: Path) -> List[Tuple[int, float]]:
    """``(start, last write)`` in seconds since the epoch, per start of the run, in order: every start opens
    a TensorBoard event file named after its creation time, and its modification time is its last write."""
    starts = []
    for path in (run / "tensorboard").glob("events.out.tfevents.*"):
        field = path.name.split(".")[3]
        if field.isdigit():
            starts.append((int(field), path.stat().st_mtime))
    return sorted(starts)


def run_started(run: Path) -> Tuple[dt.datetime, int]:
    """When the run started and how many times it was started (once, plus once per ``--resume``), from
    its TensorBoard event files; without them, ``config.json``'s time (rewritten by each resume, so only
    right for a run that never resumed)."""
    starts = _starts(run)
    if starts:
        return dt.datetime.fromtimestamp(starts[0][0], dt.timezone.utc), len(starts)
    return dt.datetime.fromtimestamp((run / "config.json").stat().st_mtime, dt.timezone.utc), 1


def running_seconds(run: Path) -> float:
    """How long the run was running: the sum over its starts of the time from each start to that start's
    last write (the last start's end is ``metrics.json``'s time when later). Pauses between a stop and a
    resume, e.g. across sessions, do not count. Without event files: ``config.json``'s time to
    ``metrics.json``'s."""
    finished = (run / "metrics.json").stat().st_mtime
    starts = _starts(run)
    if not starts:
        return max(0.0, finished - (run / "config.json").stat().st_mtime)
    *earlier, (last_start, last_end) = starts
    return sum(max(0.0, end - start) for start, end in earlier) + max(0.0, max(last_end, finished) - last_start)


def _without_registered_kwargs(run: Path, recipe: Dict[str, Any]) -> Dict[str, Any]:
    """``recipe`` without the ``model.kwargs`` that equal the registered model's arguments: a run that tried
    widths with ``--set`` before they were registered built the registered model, and its record's command
    is the plain one. Any other ``model.kwargs`` built another model: refused."""
    name, kwargs = recipe["model"]["name"], recipe["model"].get("kwargs") or {}
    registered = json.loads(json.dumps(zoo.get_pretrained_cfg(name).model_args))  # tuples as lists
    changed = {key: value for key, value in kwargs.items() if registered.get(key, object()) != value}
    if changed:
        raise ExportError(f"{run} built {name} with model.kwargs={changed}, which the registered model does "
                          "not have: shipped weights must fit the registered model; register a variant for them")
    return {**recipe, "model": {**recipe["model"], "kwargs": {}}}


def export_run(run: Union[str, Path], to: Union[str, Path] = SHIPPED_WEIGHTS, checkpoint: str = "last.pth",
               images: Optional[int] = None, progress: bool = True, history: Optional[str] = None
               ) -> Tuple[Path, Path]:
    """Write ``<arch>.<tag>.safetensors`` and ``<arch>.<tag>.json`` for the run into ``to``; their paths.

    ``images``: how many validation images the firing rate and energy are measured over (None: all).
    ``history``: what the record cannot read from the run folder (e.g. that it was resumed with another
    ``train.iters``), recorded as ``training["history"]``.
    """
    from safetensors.torch import save

    run, to = Path(run), Path(to)
    recipe, metrics, log = _read_run(run)
    iters = int(recipe["train"]["iters"])
    done = int(log[-1][0]) if log else 0
    if done != iters or metrics.get("final") is None:
        raise ExportError(f"{run} stopped at iteration {done} of {iters}: finish it (--resume) before exporting")
    recipe = _without_registered_kwargs(run, recipe)
    if not (run / checkpoint).is_file():
        raise ExportError(f"{run / checkpoint} is missing")
    model = zoo.create(recipe["model"]["name"], checkpoint_path=run / checkpoint).eval()
    cfg = model.pretrained_cfg
    if cfg.task != "semantic":
        raise ExportError(f"{cfg.name} is a {cfg.task} model: export records semantic metrics only")

    firing, energy_mj, count = measure_on_val(model, recipe, images, progress)
    val_images = len(build_val_data(recipe, model)[0])

    from zoo.samples import sample_frames
    frames = {}
    for frame in sample_frames(cfg.dataset):
        labels = predict_labels(model, read_rgb(frame.image))
        accuracy = None if frame.label is None else pixel_accuracy(model, labels, read_label_map(frame.label),
                                                                    frame.name)
        frames[frame.name] = {"class_pixels": class_pixel_counts(labels, cfg.num_classes),
                              "pixel_accuracy": accuracy}

    final = metrics["final"]
    names = list(cfg.class_names)
    seconds = [float(row[3]) for row in log]
    _, starts = run_started(run)
    finished = dt.datetime.fromtimestamp((run / "metrics.json").stat().st_mtime, dt.timezone.utc)
    batch = int(recipe["data"]["batch_size"])
    train_images = len(build_train_data(recipe, model)[0])
    stem = cfg.name
    record = {
        "shipped_file": f"{stem}.safetensors",
        "metrics": {"val": {
            "mIoU": round(final["mIoU"], 2), "mAcc": round(final["mAcc"], 2), "aAcc": round(final["aAcc"], 2),
            "IoU_per_class": {n: _round(v) for n, v in zip(names, final["IoU_per_class"])},
            "Acc_per_class": {n: _round(v) for n, v in zip(names, final["Acc_per_class"])},
            "split": recipe["data"]["val_split"], "images": val_images}},
        "firing_rate": round(firing.pooled_rate, 5),
        "energy_mj": round(energy_mj, 5),
        "training": {
            "recipe": recipe["name"], "command": reproducing_command(recipe),
            "iterations": iters, "batch_size": batch, "epochs": round(iters * batch / train_images, 1),
            "seed": recipe["train"]["seed"], "weights": f"final ({checkpoint} at iteration {iters})",
            "wall_minutes": round(running_seconds(run) / 60, 1), "starts": starts,
            "seconds_per_iteration_median": round(statistics.median(seconds), 3) if seconds else None,
            "machine": _machine(), "date": finished.date().isoformat(),
            "measured_over": f"firing_rate and energy_mj: mean over the first {count} {recipe['data']['val_split']} "
                             f"images at the evaluation size"},
        "sample_predictions": frames,
    }
    if history:
        record["training"]["history"] = history
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    to.mkdir(parents=True, exist_ok=True)
    weights_path, meta_path = to / f"{stem}.safetensors", to / f"{stem}.json"
    write_files_atomically({weights_path: save(tensors, metadata={"format": "pt"}),
                            meta_path: (json.dumps(record, indent=2) + "\n").encode()},
                           "free some space and export again")
    return weights_path, meta_path


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None or value != value else round(value, 2)


def sample_prediction_drift(model: torch.nn.Module) -> Dict[str, float]:
    """Per bundled frame, how far the model's predictions are from those recorded with its shipped weights:
    ``sum |counts - recorded| / (2 * pixels)``, a lower bound on the share of pixels whose class changed."""
    cfg = model.pretrained_cfg
    recorded = cfg.sample_predictions
    if not recorded:
        raise ExportError(f"{cfg.name} records no sample predictions (its weights do not ship with the package)")
    from zoo.samples import sample_frames
    frames = {frame.name: frame for frame in sample_frames(cfg.dataset)}
    missing = sorted(set(recorded) - set(frames))
    if missing:
        raise ExportError(f"{cfg.name} recorded predictions for frames the package lacks: {missing}")
    drift = {}
    for name, record in recorded.items():
        counts = class_pixel_counts(predict_labels(model, read_rgb(frames[name].image)), cfg.num_classes)
        expected = record["class_pixels"]
        drift[name] = sum(abs(a - b) for a, b in zip(counts, expected)) / (2 * sum(expected))
    return drift
