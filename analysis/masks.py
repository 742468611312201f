r"""Query mask patterns (the paper's Fig. 3): each query's average mask and class histogram over a dataset.

The model runs in eval mode and only its last query state is used
(``pred_logits[-1]`` ``[B, Q, K+1]``, ``pred_masks[-1]`` ``[B, Q, h, w]``). Over the
``N`` images of the dataset:

- **Mean mask** of query ``q`` (``[Q, size, size]``, ``size`` = 200 by default)::

      mean_mask[q] = (1 / N) * sum_images resize(sigmoid(crop(mask_logits[q])), size x size)

  ``crop`` drops the rows and columns that only cover the padding the model added
  (the image is padded to ``model.size_divisor``): of ``h`` mask rows over ``Hp``
  padded input rows, the first ``ceil(H * h / Hp)`` cover the ``H`` image rows
  (exact when H is a multiple of ``Hp / h``, i.e. even for Spike2Former's
  half-resolution masks). ``resize`` is bilinear with ``align_corners=False``,
  without antialiasing. Each image thus weighs the same whatever its size.
- **Class histogram** ``[Q, K+1]``: ``hist[q, c]`` is the number of images whose
  class logits for query ``q`` have their argmax, over all K+1 entries, at ``c``.
  The last column counts the images where the query predicts "no object"
  (unused), so every row sums to ``N``; the first K columns say which classes
  the query specialises in.

:func:`write_query_mask_patterns` saves the arrays (``.npz``), the histogram
(``.csv``), the grid of mean masks and the histogram heat-map (PNG and SVG).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure

from zoo.figures import save_figure

from .firing import ImageSource, eval_mode, image_batches

__all__ = ["QueryMaskPatterns", "query_mask_patterns", "write_query_mask_patterns"]


@dataclass(frozen=True)
class QueryMaskPatterns:
    """``mean_masks`` [Q, size, size] float64, ``class_histogram`` [Q, K+1] int64 (last: no object), ``images`` N."""

    mean_masks: np.ndarray
    class_histogram: np.ndarray
    images: int

    @property
    def num_classes(self) -> int:
        """K, the object classes (the histogram has K + 1 columns)."""
        return self.class_histogram.shape[1] - 1


def _crop_to_image(mask_logits: torch.Tensor, image_size, size_divisor: int) -> torch.Tensor:
    """Keep the mask rows/columns that cover the image, dropping those over the padding."""
    keep = []
    for n, m in zip(image_size, mask_logits.shape[-2:]):
        padded = math.ceil(n / size_divisor) * size_divisor
        keep.append(math.ceil(n * m / padded))
    return mask_logits[..., : keep[0], : keep[1]]


def query_mask_patterns(model: nn.Module, data: ImageSource, size: int = 200,
                        progress: bool = True) -> QueryMaskPatterns:
    """Mean mask and class histogram of every query of a mask-classification model over ``data``.

    ``model(images)`` must return ``{"pred_logits", "pred_masks"}`` (Spike2Former);
    ``data`` as for :func:`analysis.firing.measure_firing`. Eval mode, no gradients;
    the model's modes are restored afterwards. Definitions: module docstring.
    """
    device = next(model.parameters()).device
    size_divisor = getattr(model, "size_divisor", 1)
    mask_sum = histogram = None
    images = 0
    with eval_mode(model):
        for batch in image_batches(data, device, progress, "query masks"):
            out = model(batch)
            if not isinstance(out, Mapping) or "pred_masks" not in out:
                raise TypeError(f"{type(model).__name__} does not predict query masks "
                                "(its output has no 'pred_logits'/'pred_masks')")
            class_logits, mask_logits = out["pred_logits"][-1], out["pred_masks"][-1]
            masks = _crop_to_image(mask_logits, batch.shape[-2:], size_divisor).sigmoid()
            masks = F.interpolate(masks, size=(size, size), mode="bilinear", align_corners=False)
            masks = masks.sum(0, dtype=torch.float64)
            votes = F.one_hot(class_logits.argmax(-1), class_logits.shape[-1]).sum(0)
            mask_sum = masks if mask_sum is None else mask_sum + masks
            histogram = votes if histogram is None else histogram + votes
            images += batch.shape[0]
    if images == 0:
        raise ValueError("no images in data")
    return QueryMaskPatterns((mask_sum / images).cpu().numpy(), histogram.cpu().numpy().astype(np.int64), images)


def _class_labels(num_classes: int, class_names: Optional[Sequence[str]]):
    if class_names is None:
        return [str(c) for c in range(num_classes)] + ["no_object"]
    if len(class_names) != num_classes:
        raise ValueError(f"need {num_classes} class names, got {len(class_names)}")
    return [*class_names, "no_object"]


def _mask_grid(patterns: QueryMaskPatterns, labels: Sequence[str], columns: int) -> Figure:
    queries = patterns.mean_masks.shape[0]
    rows = math.ceil(queries / columns)
    fig = Figure(figsize=(1.3 * columns + 1.2, 1.45 * rows + 0.6))
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    # one colour scale for all tiles keeps queries comparable; the data's own range keeps the contrast
    low, high = float(patterns.mean_masks.min()), float(patterns.mean_masks.max())
    image = None
    for q, ax in enumerate(axes):
        ax.set_axis_off()
        if q >= queries:
            continue
        image = ax.imshow(patterns.mean_masks[q], vmin=low, vmax=max(high, low + 1e-6), cmap="viridis")
        objects = patterns.class_histogram[q, :-1]
        top = labels[int(objects.argmax())] if objects.any() else "no object"
        ax.set_title(f"q{q}: {top}", fontsize=6)
    fig.colorbar(image, ax=axes.tolist(), shrink=0.6, label="mean sigmoid mask")
    fig.suptitle(f"Query mask patterns over {patterns.images} images", fontsize=9)
    return fig


def _histogram_heatmap(patterns: QueryMaskPatterns, labels: Sequence[str]) -> Figure:
    queries, columns = patterns.class_histogram.shape
    fig = Figure(figsize=(min(max(6.0, 2 + 0.12 * columns), 24), min(max(3.5, 2 + 0.12 * queries), 16)))
    ax = fig.subplots()
    image = ax.imshow(patterns.class_histogram, aspect="auto", interpolation="nearest", cmap="magma")
    if columns <= 40:
        ax.set_xticks(range(columns), labels, rotation=90, fontsize=6)
    if queries <= 40:
        ax.set_yticks(range(queries))
        ax.tick_params(axis="y", labelsize=6)
    ax.set_xlabel("predicted class (argmax over K+1; last = no object)")
    ax.set_ylabel("query")
    ax.set_title(f"Predicted class per query over {patterns.images} images", fontsize=9)
    fig.colorbar(image, ax=ax, label="images")
    fig.tight_layout()
    return fig


def write_query_mask_patterns(patterns: QueryMaskPatterns, path: Union[str, Path],
                              class_names: Optional[Sequence[str]] = None, columns: int = 10) -> Dict[str, Path]:
    """Save ``patterns`` next to ``path`` (a stem): returns the written files by kind.

    ``npz`` (``mean_masks``, ``class_histogram``, ``images``), ``csv`` (one row per
    query, one column per class + ``no_object``), ``masks_png``/``masks_svg`` (a grid of
    the mean masks, each titled with the query's most frequent object class) and
    ``classes_png``/``classes_svg`` (the histogram as a heat-map).
    """
    stem = Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    labels = _class_labels(patterns.num_classes, class_names)
    paths = {"npz": stem.with_suffix(".npz"), "csv": stem.with_name(stem.name + "_classes.csv")}
    np.savez_compressed(paths["npz"], mean_masks=patterns.mean_masks, class_histogram=patterns.class_histogram,
                        images=patterns.images)
    with paths["csv"].open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", *labels])
        writer.writerows([q, *counts] for q, counts in enumerate(patterns.class_histogram.tolist()))
    for kind, fig in (("masks", _mask_grid(patterns, labels, columns)),
                      ("classes", _histogram_heatmap(patterns, labels))):
        for ext in ("png", "svg"):
            paths[f"{kind}_{ext}"] = stem.with_name(f"{stem.name}_{kind}.{ext}")
            save_figure(fig, paths[f"{kind}_{ext}"], dpi=150)
    return paths
