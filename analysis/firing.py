r"""Firing rates of every spiking neuron of a model, layer by layer, over a dataset.

Usage::

    with FiringRateMonitor(model) as monitor:
        for images in batches:
            model(images)
    report = monitor.report()
    report.to_csv("firing.csv"); report.groups_to_csv("firing_groups.csv")

    report = measure_firing(model, dataset)        # the same over a dataset, eval mode, no gradients

Definitions
-----------
A *layer* is one spiking-neuron module (every module for which
:func:`zoo.spikes.spike_source_of` gives ``(unit, D)``: NI-LIF and its
relatives, SpikingJelly's binary neurons); synapses are not hooked. A neuron's
output is ``S = k * unit`` with the integer count ``k`` in ``0..D`` (``unit =
1/norm`` for NI-LIF, 1 for binary neurons). Over everything the monitor saw
(every call of the layer in every forward, every image, every time step):

- ``mean_count`` (the firing rate) ``= sum(k) / elements``: the mean integer
  count per neuron per step. ``elements`` counts every output value, so with T
  steps each neuron counts T times whatever the layout: ``[T, B, ...]``
  (multi-step) or ``[1, T*B, ...]`` (official mode, T folded into the batch).
  Forwards with different batch or image sizes are pooled by their element
  counts, never by averaging their averages.
- ``nonzero_fraction = #(k > 0) / elements``.
- ``neurons = elements / image_steps``: neurons per image per step, i.e. the
  elements of one step's output for one image (averaged over the images when
  their sizes differ; a module called c times per forward counts c times).
  ``image_steps`` adds ``B * T`` for every forward of the monitored model in
  which the layer ran; ``B`` and ``T`` are read from the model's input:
  ``[B, ...]`` with ``T`` = the monitor's ``steps`` (default ``model.T``, 1 if
  absent), or ``[T, B, C, H, W]`` for a 5-D input (a bare backbone). If the
  monitored model itself was never called (only its submodules), ``neurons`` is NaN.
- ``depth``: the layer's index in execution order (order of first call).

*Groups* (``group_of(name)``, default :func:`default_group`) gather layers by
module: the four Meta-SpikeFormer stages (``backbone.stage1`` = stem + stage1a,
``stage2`` = down1b + stage1b, ``stage3`` = down2 + stage2, ``stage4`` =
down3..stage4), Spike2Former's ``sdte`` (the pixel decoder's 1/16 encoder path:
input projection, SDTE layers, output projection), ``fpn`` (lateral and output
convs, mask feature) and ``decoder.layer<i>``. Any other layer goes to the
first component of its name: Spike2Former's ``sdme``, SpikeFPN's ``neck`` and
``head``. A group's figures pool its layers' sums the same way (``neurons`` is
the sum of its layers' ``neurons``).
"""
from __future__ import annotations

import contextlib
import csv
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple, Union

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from zoo.execution import using
from zoo.spikes import spike_source_of

__all__ = ["LayerFiring", "GroupFiring", "FiringReport", "FiringRateMonitor", "default_group",
           "measure_firing", "image_batches", "eval_mode"]

_GROUP_RULES: Tuple[Tuple[re.Pattern, str], ...] = tuple((re.compile(p), g) for p, g in (
    (r"(backbone\.)?(stem|stage1a)\.", "backbone.stage1"),
    (r"(backbone\.)?(down1b|stage1b)\.", "backbone.stage2"),
    (r"(backbone\.)?(down2|stage2)\.", "backbone.stage3"),
    (r"(backbone\.)?(down3|stage3|down4|stage4)\.", "backbone.stage4"),
    (r"pixel_decoder\.(input_projs|encoder|output_projs)\.", "sdte"),
    (r"pixel_decoder\.(lateral_convs|output_convs|mask_feature)\.", "fpn"),
    (r"transformer_decoder\.layers\.(?P<layer>\d+)\.", r"decoder.layer\g<layer>"),
))


def default_group(name: str) -> str:
    """The module group of the neuron called ``name`` (see the module docstring)."""
    for pattern, group in _GROUP_RULES:
        match = pattern.match(name)
        if match:
            return match.expand(group)
    return name.split(".", 1)[0]


@dataclass(frozen=True)
class LayerFiring:
    """One spiking-neuron module's totals (definitions in the module docstring)."""

    depth: int
    name: str
    group: str
    neuron_type: str
    unit: float
    D: int
    mean_count: float
    nonzero_fraction: float
    neurons: float
    calls: int
    count_sum: int
    nonzero: int
    elements: int
    image_steps: int


@dataclass(frozen=True)
class GroupFiring:
    """One group's pooled totals; ``first_depth``/``last_depth`` bound its layers in execution order."""

    group: str
    first_depth: int
    last_depth: int
    layers: int
    mean_count: float
    nonzero_fraction: float
    neurons: float
    count_sum: int
    nonzero: int
    elements: int


def _write_csv(path: Union[str, Path], rows: List[dict], columns: List[str]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        # repr keeps every float exact through a round trip
        writer.writerows({k: repr(v) if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    return path


@dataclass(frozen=True)
class FiringReport:
    """What a :class:`FiringRateMonitor` recorded: ``layers`` in execution order and their ``groups``."""

    layers: Tuple[LayerFiring, ...]
    images: int

    def layer(self, name: str) -> LayerFiring:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(f"no spiking neuron {name!r} was recorded")

    @property
    def pooled_rate(self) -> float:
        """Every neuron's counts pooled: the mean count per neuron per step over the whole model."""
        return sum(r.count_sum for r in self.layers) / sum(r.elements for r in self.layers)

    @property
    def groups(self) -> Tuple[GroupFiring, ...]:
        """Per-group pooled figures, groups in the order of their first layer."""
        members: Dict[str, List[LayerFiring]] = {}
        for row in self.layers:
            members.setdefault(row.group, []).append(row)
        out = []
        for group, rows in members.items():
            count_sum = sum(r.count_sum for r in rows)
            nonzero = sum(r.nonzero for r in rows)
            elements = sum(r.elements for r in rows)
            out.append(GroupFiring(group, rows[0].depth, rows[-1].depth, len(rows), count_sum / elements,
                                   nonzero / elements, sum(r.neurons for r in rows), count_sum, nonzero,
                                   elements))
        return tuple(out)

    def rows(self) -> List[dict]:
        return [asdict(row) for row in self.layers]

    def group_rows(self) -> List[dict]:
        return [asdict(row) for row in self.groups]

    def to_csv(self, path: Union[str, Path]) -> Path:
        return _write_csv(path, self.rows(), [f.name for f in fields(LayerFiring)])

    def groups_to_csv(self, path: Union[str, Path]) -> Path:
        return _write_csv(path, self.group_rows(), [f.name for f in fields(GroupFiring)])


class _LayerTotals:
    """Running sums of one neuron module; the sums stay on the output's device until read."""

    def __init__(self, depth: int, module: nn.Module, unit: float, D: int):
        self.depth, self.neuron_type, self.unit, self.D = depth, type(module).__name__, unit, D
        self.sums: Optional[torch.Tensor] = None  # [sum of counts, nonzero outputs], float64
        self.elements = self.calls = self.image_steps = 0
        self.last_forward = -1


class FiringRateMonitor:
    """Context manager that records the firing of every spiking neuron of ``model``.

    Hooks every module for which :func:`~zoo.spikes.spike_source_of` is not
    None, plus a pre-hook on ``model`` itself that counts images and steps.
    Totals accumulate over every forward inside the block (and across blocks
    until :meth:`reset`); :meth:`report` reads them. Definitions: module docstring.

    :param group_of: ``name -> group`` (default :func:`default_group`).
    :param steps: time steps per image; default ``model.T`` (1 if the model has none).
    """

    def __init__(self, model: nn.Module, group_of: Callable[[str], str] = default_group,
                 steps: Optional[int] = None):
        self.model = model
        self.group_of = group_of
        self.steps = steps if steps is not None else getattr(model, "T", 1)
        self._handles: List[torch.utils.hooks.RemovableHandle] = []
        self.reset()

    def reset(self) -> None:
        self._layers: Dict[str, _LayerTotals] = {}
        self._forwards = 0
        self._images = 0
        self._forward_image_steps = 0

    def __enter__(self) -> "FiringRateMonitor":
        if self._handles:
            raise RuntimeError("this FiringRateMonitor is already active")
        # hooks see every neuron's output only where the network runs eagerly
        self._eager = using(self.model, compile=False)
        self._eager.__enter__()
        self._handles.append(self.model.register_forward_pre_hook(self._count_images, with_kwargs=True))
        for name, module in self.model.named_modules():
            source = spike_source_of(module)
            if source is not None:
                self._handles.append(module.register_forward_hook(self._neuron_hook(name, *source)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._eager.__exit__(None, None, None)

    def _count_images(self, module, args, kwargs) -> None:
        x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
        if x is None:
            return
        batch, steps = (x.shape[1], x.shape[0]) if x.dim() == 5 else (x.shape[0], self.steps)
        self._forwards += 1
        self._images += batch
        self._forward_image_steps = batch * steps

    def _neuron_hook(self, name: str, unit: float, D: int):
        def hook(module, inputs, output):
            if name not in self._layers:
                self._layers[name] = _LayerTotals(len(self._layers), module, unit, D)
            totals = self._layers[name]
            out = output.detach()
            counts = torch.round(out / unit)
            sums = torch.stack([counts.sum(dtype=torch.float64), torch.count_nonzero(out).to(torch.float64)])
            totals.sums = sums if totals.sums is None else totals.sums + sums
            totals.elements += out.numel()
            totals.calls += 1
            if totals.last_forward != self._forwards:
                # a neuron called several times in one forward sees the forward's images once
                totals.last_forward = self._forwards
                totals.image_steps += self._forward_image_steps
        return hook

    @property
    def images(self) -> int:
        """Images seen by the monitored model's forwards."""
        return self._images

    def report(self) -> FiringReport:
        rows = []
        for name, t in sorted(self._layers.items(), key=lambda item: item[1].depth):
            count_sum, nonzero = (int(v) for v in t.sums.tolist())
            neurons = t.elements / t.image_steps if t.image_steps else math.nan
            rows.append(LayerFiring(t.depth, name, self.group_of(name), t.neuron_type, t.unit, t.D,
                                    count_sum / t.elements, nonzero / t.elements, neurons, t.calls,
                                    count_sum, nonzero, t.elements, t.image_steps))
        return FiringReport(tuple(rows), self._images)


# ------------------------------------------------------------------------------------ datasets

ImageSource = Union[Iterable[torch.Tensor], Iterable[Mapping[str, object]]]


def image_batches(data: ImageSource, device: Optional[torch.device] = None, progress: bool = False,
                  desc: Optional[str] = None) -> Iterator[torch.Tensor]:
    """Plain ``[B, 3, H, W]`` tensors (on ``device``) from batches, single images, or dicts holding ``"image"``.

    A dict's ``"image"`` may be one image ``[3, H, W]``, a batch, or a list of
    differently sized images (``recipes.datasets.collate_samples``), yielded one by one.
    ``progress`` shows a tqdm bar over ``data``'s items.
    """
    for item in tqdm(data, desc=desc, disable=not progress):
        images = item["image"] if isinstance(item, Mapping) else item
        for x in (images if isinstance(images, (list, tuple)) else [images]):
            x = x.as_subclass(torch.Tensor)  # tv_tensors.Image would re-wrap every result
            yield (x.unsqueeze(0) if x.dim() == 3 else x).to(device)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode without gradients; every module's own mode is restored on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, training in modes:
            module.training = training


def measure_firing(model: nn.Module, data: ImageSource, group_of: Callable[[str], str] = default_group,
                   progress: bool = True) -> FiringReport:
    """Firing of every spiking neuron of ``model`` over ``data`` (eval mode, no gradients).

    ``data``: an iterable of normalised image batches ``[B, 3, H, W]`` (or single images),
    or of dicts with ``"image"`` (a dataset with eval transforms, or a DataLoader over one).
    Images are moved to the model's device; the model's modes are restored afterwards.
    """
    device = next(model.parameters()).device
    with eval_mode(model), FiringRateMonitor(model, group_of) as monitor:
        for images in image_batches(data, device, progress, "firing rates"):
            model(images)
    return monitor.report()
