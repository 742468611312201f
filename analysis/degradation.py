r"""Spike degradation: firing rate against depth, one line per model, bands per module group.

The firing rate of a layer is :class:`analysis.firing.LayerFiring`'s ``mean_count``
(mean integer count per neuron per step); depth is the layer's index in execution
order. Background bands mark the module groups of the *first* model's layers
(consecutive layers of one group form one band). Each model's values at the
``marked`` neurons are drawn as stars, labelled, and returned.

The neurons marked by default belong to Spike2Former's SDME:

- ``sdme.query_spike``: SDME's input neuron, ``SN(sigmoid(q))`` of the last
  decoder state; it lies upstream of the ME-Shortcut, so the shortcut cannot
  change its rate in an untrained model built from the same seed.
- ``sdme.embed_spike``: the neuron that emits the mask embedding,
  ``SN(MLP(s) + w * BN(Conv_Q(s)))``; this is where the ME-Shortcut adds its
  input. The paper reports 0.266 with ME-Shortcut and 0.086 without (trained
  weights) for the layer feeding the mask product.

Models lacking a marked neuron (SpikeFPN) just have no star there.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Sequence, Tuple, Union

import torch.nn as nn
from matplotlib.figure import Figure

import zoo
from zoo.figures import save_figure
from zoo.hub import load_strict

from .firing import FiringReport, ImageSource, measure_firing

__all__ = ["MASK_EMBEDDING_NEURONS", "DegradationPlot", "group_bands", "plot_spike_degradation",
           "spike_degradation", "without_me_shortcut"]

MASK_EMBEDDING_NEURONS = ("sdme.query_spike", "sdme.embed_spike")


@dataclass(frozen=True)
class DegradationPlot:
    """The plotted numbers and the files written.

    ``depths[label]``, ``rates[label]`` and ``names[label]`` are aligned lists per
    model; ``bands`` are ``(group, first_depth, last_depth)``; ``marked[label][neuron]
    = (depth, rate)`` for the marked neurons that model has; ``paths`` = (PNG, SVG).
    """

    depths: Dict[str, List[int]]
    rates: Dict[str, List[float]]
    names: Dict[str, List[str]]
    bands: List[Tuple[str, int, int]]
    marked: Dict[str, Dict[str, Tuple[int, float]]]
    paths: Tuple[Path, Path]


def group_bands(report: FiringReport) -> List[Tuple[str, int, int]]:
    """Runs of consecutive layers of one group: ``(group, first_depth, last_depth)``."""
    bands = []
    for group, rows in itertools.groupby(report.layers, key=lambda row: row.group):
        rows = list(rows)
        bands.append((group, rows[0].depth, rows[-1].depth))
    return bands


def plot_spike_degradation(reports: Mapping[str, FiringReport], path: Union[str, Path],
                           marked: Sequence[str] = MASK_EMBEDDING_NEURONS,
                           title: str = "Spike degradation") -> DegradationPlot:
    """Plot ``reports`` (``label -> FiringReport``) to ``path`` + ``.png`` and ``.svg``."""
    if not reports:
        raise ValueError("no reports to plot")
    stem = Path(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    depths = {label: [row.depth for row in r.layers] for label, r in reports.items()}
    rates = {label: [row.mean_count for row in r.layers] for label, r in reports.items()}
    names = {label: [row.name for row in r.layers] for label, r in reports.items()}
    stars = {label: {row.name: (row.depth, row.mean_count) for row in r.layers if row.name in marked}
             for label, r in reports.items()}
    bands = group_bands(next(iter(reports.values())))

    # a bare Figure renders with Agg (PNG) and the SVG backend without touching pyplot's global state
    fig = Figure(figsize=(12, 4.5))
    ax = fig.subplots()
    # headroom above the highest rate for the group labels
    top = max(max(values, default=0.0) for values in rates.values()) * 1.3 or 1.0
    for i, (group, first, last) in enumerate(bands):
        ax.axvspan(first - 0.5, last + 0.5, color=("0.93", "0.82")[i % 2], zorder=0)
        ax.text((first + last) / 2, top, group, rotation=90, ha="center", va="top", fontsize=6, color="0.3")
    for label in reports:
        line, = ax.plot(depths[label], rates[label], marker=".", markersize=3, linewidth=1, label=label)
        for neuron, (depth, rate) in stars[label].items():
            ax.plot(depth, rate, marker="*", markersize=11, color=line.get_color(), zorder=3)
            ax.annotate(f"{neuron.rsplit('.', 1)[-1]} {rate:.3f}", (depth, rate), textcoords="offset points",
                        xytext=(-6, 8), ha="right", fontsize=7, color=line.get_color())
    ax.set_xlim(-0.5, max(max(d, default=0) for d in depths.values()) + 0.5)
    ax.set_ylim(0.0, top * 1.02)
    ax.set_xlabel("layer (spiking neuron, execution order)")
    ax.set_ylabel("firing rate (mean count per neuron per step)")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8)
    fig.tight_layout()
    paths = (stem.with_suffix(".png"), stem.with_suffix(".svg"))
    for out in paths:
        save_figure(fig, out, dpi=150)
    return DegradationPlot(depths, rates, names, bands, stars, paths)


def spike_degradation(models: Mapping[str, nn.Module], data: ImageSource, path: Union[str, Path],
                      marked: Sequence[str] = MASK_EMBEDDING_NEURONS, progress: bool = True
                      ) -> Tuple[DegradationPlot, Dict[str, FiringReport]]:
    """Measure every model on ``data`` (which must be re-iterable: a list, dataset or DataLoader) and plot.

    E.g. ``{"ME-Shortcut": spike2former_ade20k(), "no ME-Shortcut": spike2former_ade20k(me_shortcut=False)}``.
    Returns the plot's numbers and paths, and each model's :class:`FiringReport`.
    """
    reports = {label: measure_firing(model, data, progress=progress) for label, model in models.items()}
    return plot_spike_degradation(reports, path, marked), reports


def without_me_shortcut(model: nn.Module) -> Tuple[nn.Module, List[str]]:
    """The Spike2Former ``model`` rebuilt with ``me_shortcut=False`` holding all of ``model``'s weights but the
    shortcut's; returns it and the names of the weights it leaves out."""
    ablated = zoo.create(model.pretrained_cfg.name, **{**model.model_args, "me_shortcut": False})
    kept = ablated.state_dict().keys()
    state = model.state_dict()
    # strict: every weight of the ablated model must come from the full one
    load_strict(ablated, {k: v for k, v in state.items() if k in kept}, source=f"{model.pretrained_cfg.name} weights")
    dropped = [k for k in state if k not in kept]
    return ablated.to(next(model.parameters()).device).eval(), dropped
