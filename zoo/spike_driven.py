r"""Spike-driven inference of a whole model: every synapse fed by spikes runs on binary events.

Usage (inference, eval mode)::

    with zoo.spike_driven_mode(model) as stats:
        out = model(images)          # the integer model's output, computed from binary events
    stats.rows                       # one SynapseRow per Conv1d/Conv2d/Linear that was called

    out, stats = zoo.spike_driven_forward(model, images)   # the same in one call

Convention (paper eqs 19-21 and the energy convention of ``analysis.energy``)
----------------------------------------------------------------------------

- **Which inputs are spikes.** The outputs of spiking neurons, marked as
  :class:`~zoo.spikes.SpikeTensor` with their ``unit`` (the value of one count)
  and ``D``, and what keeps the mark on its way (reshapes, indexing,
  concatenation, eval-mode dropout, scaling by a number): see :mod:`zoo.spikes`.
  The unit is known from the graph, never inferred from values; values are only
  *checked* (every input must be ``k * unit`` with integer ``k`` in ``0..D``,
  else an error is raised).
- **What runs on events.** A ``Conv1d``/``Conv2d``/``Linear`` whose input is a
  :class:`SpikeTensor` (and whose padding mode is ``'zeros'``) receives, for every
  input element of every logical step, ``D`` binary event slots in thermometer
  code, ``b_d = [k > d]`` for ``d = 0..D-1`` (:func:`neurons.spike_driven.to_events`
  uses the same code), and accumulates ``W * unit`` once per event:
  ``W x + b = sum_d (W * unit) b_d + b``. The bias is added once per logical step
  (once per output element of each frame), never per event. A BatchNorm after
  the layer is left as it is: it acts on the accumulated potential once per step
  (it could equally be folded into ``W`` and ``b``, :func:`neurons.spike_driven.fold_batchnorm`).
- **What stays dense.** A layer whose input is not a :class:`SpikeTensor` runs
  unchanged and is reported with ``kind='dense'``: the backbone stem (analog
  image), and every layer fed directly by another linear layer without a neuron
  in between (in Meta-SpikeFormer: ``RepConv.dw``/``RepConv.pw_out`` and
  ``SepConv.pw2``, which re-parameterisation would merge into their spiking
  predecessor). Products that are not layers (attention ``Q K^T V``, the SDDA
  deformable weighted sum, the SDME mask einsum) are evaluated as in the integer
  model and are not rows.
- **Counts.** Per layer (summed over its calls in the forward):
  ``events`` = number of binary events it received (the sum over slots, equal to
  the sum of integer counts of its input); ``acs`` = synaptic accumulations,
  every event times its fan-out, i.e. the number of output elements whose
  receptive field contains the event's position (zero padding excluded, so a
  border event of a 3x3 conv has fewer than ``9 * C_out`` targets), times
  ``C_out / groups``; ``macs`` = the dense layer's multiply-accumulates on the same
  input (``output elements x C_in/groups x kernel size``, padding included).
  With T time steps and a batch, all of them cover every step and every image.
  ``acs = macs x mean count`` holds only away from borders; do not multiply by D.
  The statistics are a view of the operation record (:mod:`zoo.trace`): the event
  forward leaves its counts on the record of the layer's call.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurons.layer_costs import SYNAPTIC_LAYERS

from .execution import using
from .spikes import SpikeTensor, marking_spikes, spike_mark, strip_marks
from .trace import EventRun, Trace

__all__ = ["SynapseRow", "SpikeDrivenStats", "spike_driven_mode", "spike_driven_forward"]


# ------------------------------------------------------------------------------------ rows

class SynapseRow(NamedTuple):
    """One synaptic layer's totals over a forward (all calls, steps and images).

    ``kind`` is ``'spike'`` (ran on binary events) or ``'dense'`` (analog input; ``events``,
    ``acs``, ``unit``, ``D`` and ``source`` are None and ``reason`` says why).
    """

    name: str
    kind: str
    events: Optional[int]
    acs: Optional[int]
    macs: int
    layer_type: str
    calls: int
    input_elements: int
    unit: Optional[float]
    D: Optional[int]
    source: Optional[str]
    reason: str = ""


@dataclass
class SpikeDrivenStats:
    """What :func:`spike_driven_mode` recorded, read from its :class:`~zoo.trace.Trace`; ``rows`` in the
    order the layers were first called, each summing the layer's calls."""

    trace: Trace

    @property
    def rows(self) -> List[SynapseRow]:
        rows: Dict[str, SynapseRow] = {}
        for record in self.trace.records:
            run = record.event_run
            if record.kind != "conv_linear" or run is None:
                continue
            mark = record.operands[0].mark if run.on_events else None
            unit, D, source = mark if mark is not None else (None, None, None)
            old = rows.get(record.name)
            if old is None:
                rows[record.name] = SynapseRow(
                    record.name, "spike" if run.on_events else "dense", run.events, run.acs, record.macs,
                    record.layer_type, 1, record.operands[0].elements, unit, D, source, run.reason)
                continue
            rows[record.name] = old._replace(
                events=None if run.events is None else old.events + run.events,
                acs=None if run.acs is None else old.acs + run.acs, macs=old.macs + record.macs,
                calls=old.calls + 1, input_elements=old.input_elements + record.operands[0].elements,
                source=old.source if old.source == source else f"{old.source}|{source}")
        return list(rows.values())

    def row(self, name: str) -> SynapseRow:
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no synapse {name!r} was called")

    def spike_rows(self) -> List[SynapseRow]:
        return [r for r in self.rows if r.kind == "spike"]

    def dense_rows(self) -> List[SynapseRow]:
        return [r for r in self.rows if r.kind == "dense"]

    def totals(self) -> Dict[str, int]:
        """Sum of events and ACs over spike-driven layers; dense MACs split by kind."""
        spike, dense = self.spike_rows(), self.dense_rows()
        return {"events": sum(r.events for r in spike), "acs": sum(r.acs for r in spike),
                "spike_layer_macs": sum(r.macs for r in spike), "dense_macs": sum(r.macs for r in dense)}

    def as_dicts(self) -> List[dict]:
        return [r._asdict() for r in self.rows]


# ------------------------------------------------------------------------------------ synapses on events

_TARGETS_CACHE: Dict[tuple, torch.Tensor] = {}


def _targets_per_position(layer: nn.Module, spatial: Tuple[int, ...], device) -> torch.Tensor:
    """For a conv: how many (output position, kernel tap) pairs read each input position."""
    key = (type(layer), spatial, layer.kernel_size, layer.stride, layer.padding, layer.dilation, str(device))
    if key not in _TARGETS_CACHE:
        if len(_TARGETS_CACHE) > 256:
            _TARGETS_CACHE.clear()
        _TARGETS_CACHE[key] = _count_targets(layer, spatial, device)
    return _TARGETS_CACHE[key]


def _count_targets(layer: nn.Module, spatial: Tuple[int, ...], device) -> torch.Tensor:
    ones = torch.ones((1, 1, *spatial), device=device, requires_grad=True)
    kernel = torch.ones((1, 1, *layer.kernel_size), device=device)
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    with torch.enable_grad():
        out = conv(ones, kernel, None, layer.stride, layer.padding, layer.dilation)
        (grad,) = torch.autograd.grad(out.sum(), ones)
    return grad[0, 0].round().to(torch.int64)


def _counts(x: torch.Tensor, unit: float, D: int, name: str) -> torch.Tensor:
    counts = torch.round(x / unit)
    if not torch.equal(counts.clamp(0, D), counts) or not torch.allclose(counts * unit, x, rtol=1e-5, atol=1e-6):
        raise ValueError(f"the input of {name!r} is marked as spikes (unit {unit:g}, D {D}) but its values are "
                         f"not k*unit with k in 0..{D}")
    return counts


def _event_weight(layer: nn.Module, unit: float, D: int) -> torch.Tensor:
    """The weight one event adds: ``W * unit`` (``W / D`` for NI-LIF; the paper's "W x D" would be wrong)."""
    return layer.weight * unit


def _event_forward(layer: nn.Module, x: torch.Tensor, unit: float, D: int, name: str
                   ) -> Tuple[torch.Tensor, int, int]:
    """The layer on binary events: returns (output, events, synaptic accumulations)."""
    counts = _counts(x, unit, D, name)
    weight = _event_weight(layer, unit, D)
    dtype = layer.weight.dtype
    linear = isinstance(layer, nn.Linear)
    out, events = None, 0
    for d in range(D):  # thermometer code: slot d carries an event where the count exceeds d
        slot = counts > d
        events += int(slot.sum())
        b = slot.to(dtype)
        y = F.linear(b, weight) if linear else layer._conv_forward(b, weight, None)
        out = y if out is None else out + y
    if layer.bias is not None:  # once per logical step
        out = out + (layer.bias if linear else layer.bias.view(-1, *([1] * (out.dim() - 2))))
    if linear:
        acs = events * layer.out_features
    else:
        spatial = tuple(counts.shape[-(out.dim() - 2):])
        per_position = counts.reshape(-1, *spatial).sum(0).to(torch.int64)
        targets = _targets_per_position(layer, spatial, counts.device)
        acs = int((per_position * targets).sum()) * (layer.out_channels // layer.groups)
    return out, events, acs


def _patched_forward(layer: nn.Module, name: str, trace: Trace, seen: Dict[str, tuple]):
    dense_forward = layer.forward  # the class's own forward, bound
    linear = isinstance(layer, nn.Linear)

    def check_same_kind(kind: str, unit=None, D=None) -> None:
        first = seen.setdefault(name, (kind, unit, D))
        if first != (kind, unit, D):
            raise RuntimeError(f"layer {name!r} was called with inputs of different kinds or units "
                               f"({first[0]}, unit {first[1]}, D {first[2]} and {kind}, unit {unit}, D {D})")

    def forward(x, *args, **kwargs):
        mark = spike_mark(x)
        if args or kwargs:
            reason = "extra forward arguments"
        elif mark is None:
            reason = "input is not spikes" if not isinstance(x, SpikeTensor) else "spikes changed in place"
        elif not linear and layer.padding_mode != "zeros":
            reason = f"padding_mode {layer.padding_mode!r}"
        else:
            unit, D, _ = mark
            check_same_kind("spike", unit, D)
            out, events, acs = _event_forward(layer, x.plain(), unit, D, name)
            trace.note_event_run(layer, EventRun(True, events, acs))
            return out
        check_same_kind("dense")
        out = dense_forward(x.plain() if isinstance(x, SpikeTensor) else x, *args, **kwargs)
        trace.note_event_run(layer, EventRun(False, reason=reason))
        return out

    return forward


# ------------------------------------------------------------------------------------ entry points

_ACTIVE = set()


@contextlib.contextmanager
def spike_driven_mode(model: nn.Module, trace: Optional[Trace] = None) -> Iterator[SpikeDrivenStats]:
    """Within the block, ``model`` runs spike-driven and the yielded stats fill up.

    Every Conv1d/Conv2d/Linear whose input is spikes runs on binary events (see the
    module docstring), the others stay dense and are reported as such; the model's
    output is the integer model's output. The model is restored on exit (also on
    error). Counts accumulate over every forward inside the block.

    :param trace: record into this (not yet entered) :class:`~zoo.trace.Trace`, e.g. one that also
        counts the events of every spike operand (``analysis.energy`` does); default: a new one.
    """
    if id(model) in _ACTIVE:
        raise RuntimeError("spike_driven_mode is already active on this model")
    trace = trace if trace is not None else Trace(model)
    seen: Dict[str, tuple] = {}
    patched = []
    _ACTIVE.add(id(model))
    try:
        with contextlib.ExitStack() as stack:
            # the layers as the paper defines them (Spike2Former's mask-feature conv runs on its spikes)
            stack.enter_context(using(model, mask_order="features_first", compile=False))
            stack.enter_context(marking_spikes(model))
            for name, module in model.named_modules():
                if isinstance(module, SYNAPTIC_LAYERS):
                    if "forward" in module.__dict__:
                        raise RuntimeError(f"{name!r} already has an instance-level forward")
                    module.forward = _patched_forward(module, name, trace, seen)
                    patched.append(module)
            stack.enter_context(trace)
            yield SpikeDrivenStats(trace)
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
        _ACTIVE.discard(id(model))


def spike_driven_forward(model: nn.Module, *args, **kwargs):
    """``model(*args, **kwargs)`` run spike-driven, without gradients: returns ``(output, stats)``."""
    with torch.no_grad(), spike_driven_mode(model) as stats:
        out = model(*args, **kwargs)
    return strip_marks(out), stats
