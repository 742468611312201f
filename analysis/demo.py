"""Segment a few images with a model and say what each cost: the quick start's main job.

    python -m analysis demo                      # the shipped spike2former_camvid on the bundled CamVid frames
    python -m analysis demo --model spikefpn_camvid --images a.jpg b.png --out demo/

For every image: the label map at the image's own size, the pooled firing rate of the whole
network (mean integer count per neuron per step, :mod:`analysis.firing`), the energy of that
inference (mJ, :mod:`analysis.energy`) and, where a label map comes with the image, the pixel
accuracy against it. :func:`write_demo` draws them: image, prediction overlay and ground truth
side by side, with a legend of the classes.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image

from recipes.engine import to_label_size
from zoo.figures import save_figure
from zoo.images import read_rgb

from .energy import estimate
from .firing import FiringRateMonitor, eval_mode

__all__ = ["FrameResult", "predict_labels", "pixel_accuracy", "segment_frame", "class_pixel_counts", "write_demo"]


@dataclass
class FrameResult:
    name: str
    image: np.ndarray            # uint8 [H, W, 3]
    labels: np.ndarray           # int64 [H, W], the prediction at the image's size
    firing_rate: float           # pooled over every spiking neuron of the network
    energy_mj: float
    truth: Optional[np.ndarray] = None      # the given label map, if any
    pixel_accuracy: Optional[float] = None  # % of the labelled pixels (void excluded)


def class_pixel_counts(labels: np.ndarray, num_classes: int) -> List[int]:
    """How many pixels of ``labels`` each class has: the fingerprint recorded with shipped weights."""
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes].astype(int).tolist()


def predict_labels(model: nn.Module, rgb: np.ndarray) -> np.ndarray:
    """The label map ``int64 [H, W]`` of ``uint8 [H, W, 3]`` at the image's size: preprocessed by the model's
    config (``model.preprocess``), predicted, brought back to the image's size as the recipes evaluate."""
    batch = model.preprocess(rgb).to(next(model.parameters()).device)
    with eval_mode(model), torch.no_grad():
        return to_label_size(model.predict(batch)[0].cpu(), rgb.shape[:2]).numpy().astype(np.int64)


def read_label_map(truth: Union[str, Path, np.ndarray]) -> np.ndarray:
    return np.asarray(Image.open(truth)) if isinstance(truth, (str, Path)) else np.asarray(truth)


def pixel_accuracy(model: nn.Module, labels: np.ndarray, truth: np.ndarray, name: str = "image") -> Optional[float]:
    """% of ``truth``'s labelled pixels that ``labels`` gets right; void (the dataset's ignore index, and
    any value past the model's classes) excluded; None when no pixel is labelled."""
    from zoo.datasets_meta import DATASETS
    cfg = model.pretrained_cfg
    if truth.shape != labels.shape:
        raise ValueError(f"the label map of {name} is {truth.shape[1]}x{truth.shape[0]}, the image "
                         f"{labels.shape[1]}x{labels.shape[0]}: they must match")
    valid = truth < cfg.num_classes
    if cfg.dataset in DATASETS:
        valid &= truth != DATASETS[cfg.dataset].ignore_index
    return 100.0 * float((labels[valid] == truth[valid]).mean()) if valid.any() else None


def segment_frame(model: nn.Module, image: Union[str, Path, np.ndarray], name: Optional[str] = None,
                  truth: Union[str, Path, np.ndarray, None] = None) -> FrameResult:
    """Segment one image (a path or ``uint8 [H, W, 3]``) with a semantic model built by ``zoo.create``.

    The labels come from :func:`predict_labels`; firing and energy are measured on two more forwards of
    the same input (each with the neurons reset); with ``truth``, the :func:`pixel_accuracy` against it.
    """
    cfg = model.pretrained_cfg
    if cfg.task != "semantic":
        raise ValueError(f"{cfg.name} is a {cfg.task} model; the demo segments semantically: use "
                         "`python -m recipes predict` for its segments")
    rgb = read_rgb(image) if isinstance(image, (str, Path)) else np.asarray(image)
    name = name or (Path(image).stem if isinstance(image, (str, Path)) else "image")
    labels = predict_labels(model, rgb)
    batch = model.preprocess(rgb).to(next(model.parameters()).device)
    with eval_mode(model), torch.no_grad():
        with FiringRateMonitor(model) as monitor:
            model(batch)
        firing_rate = monitor.report().pooled_rate
    energy_mj = estimate(model, batch).total_mj
    result = FrameResult(name, rgb, labels, firing_rate, energy_mj)
    if truth is not None:
        result.truth = read_label_map(truth)
        result.pixel_accuracy = pixel_accuracy(model, labels, result.truth, name)
    return result


def _colours(labels: np.ndarray, palette: np.ndarray, void: Optional[np.ndarray] = None) -> np.ndarray:
    colours = palette[np.clip(labels, 0, len(palette) - 1)]
    if void is not None:
        colours[void] = 0
    return colours


def write_demo(results: Sequence[FrameResult], class_names: Sequence[str], palette: Sequence[Sequence[int]],
               path: Union[str, Path], title: str, alpha: float = 0.55) -> Path:
    """One figure: a row per image (image | prediction overlay | ground truth when given), a class legend."""
    palette = np.asarray(palette, dtype=np.float64)
    with_truth = any(r.truth is not None for r in results)
    columns = 3 if with_truth else 2
    fig = Figure(figsize=(4.2 * columns, 3.3 * len(results) + 1.2))
    axes = np.asarray(fig.subplots(len(results), columns, squeeze=False))
    for row, result in zip(axes, results):
        image = result.image.astype(np.float64)
        panels = [(result.image, result.name),
                  ((1 - alpha) * image + alpha * _colours(result.labels, palette),
                   f"prediction: {result.firing_rate:.3f} spikes/neuron/step, {result.energy_mj:.3g} mJ")]
        if with_truth:
            if result.truth is None:
                panels.append((np.zeros_like(image), "no label map"))
            else:
                void = result.truth >= len(palette)
                accuracy = "" if result.pixel_accuracy is None else f" (pixel accuracy {result.pixel_accuracy:.1f}%)"
                panels.append(((1 - alpha) * image + alpha * _colours(result.truth, palette, void),
                               f"ground truth{accuracy}"))
        for ax, (picture, caption) in zip(row, panels):
            ax.imshow(np.clip(picture, 0, 255).astype(np.uint8))
            ax.set_title(caption, fontsize=8)
            ax.axis("off")
    handles = [Patch(color=palette[i] / 255, label=name) for i, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.06 * 3 / (len(results) + 1), 1, 0.97))
    path = Path(path)
    save_figure(fig, path, dpi=110)
    return path
