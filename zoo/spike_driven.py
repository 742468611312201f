r"""Spike-driven inference of a whole model: every synapse fed by spikes runs on binary events.

Usage (inference, eval mode)::

    with zoo.spike_driven_mode(model) as stats:
        out = model(images)          # the integer model's output, computed from binary events
    stats.rows                       # one SynapseRow per Conv1d/Conv2d/Linear that was called

    out, stats = zoo.spike_driven_forward(model, images)   # the same in one call

Convention (paper eqs 19-21 and the energy convention of ``analysis.energy``)
----------------------------------------------------------------------------

- **Where spikes come from.** A forward hook on every spiking neuron marks its
  output as a :class:`SpikeTensor` carrying ``unit`` (the value of one count)
  and ``D`` (the largest count per logical step), read from the neuron itself:
  a :class:`~neurons.NILIFNode` gives ``unit = 1 / norm`` (``1/D`` for NI-LIF,
  ``1`` for I-LIF, ``1/8`` for the "norm with const 8" ablation) and its ``D``;
  SpikingJelly's binary ``IFNode``/``LIFNode``/``ParametricLIFNode`` give
  ``unit = 1, D = 1``. Other neuron classes can be declared with
  :func:`register_spike_source`; an undeclared one marks nothing.
- **How the mark travels.** It survives only operations that move or select
  values without changing them (reshape/view/flatten/permute/transpose/split/
  indexing/contiguous/clone/detach/expand/squeeze/unsqueeze, ``cat``/``stack`` of
  spikes with one unit, dropout in eval mode) and multiplication or division by
  a Python number, which rescales the unit: the SDME's ``alpha * SN(x)`` arrives
  with ``unit = alpha / D``. Any other operation (addition, products with a
  tensor, BN, interpolation, ...) returns a plain tensor. The unit is therefore
  known from the graph, never inferred from values; values are only *checked*
  (every input must be ``k * unit`` with integer ``k`` in ``0..D``, else an
  error is raised).
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
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import neuron as sj_neuron

from neurons.nilif import NILIFNode
from neurons.layer_costs import macs_per_output

from .execution import using

__all__ = ["SpikeTensor", "SynapseRow", "SpikeDrivenStats", "spike_driven_mode", "spike_driven_forward",
           "spike_mark", "marking_spikes",
           "register_spike_source", "spike_source_of"]

SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Linear)


# ------------------------------------------------------------------------------------ spike sources

def _nilif_source(node: NILIFNode) -> Tuple[float, int]:
    dyn = node.dynamics
    return 1.0 / dyn.norm, dyn.D


def _binary_source(node: nn.Module) -> Tuple[float, int]:
    return 1.0, 1


_SPIKE_SOURCES: Dict[Type[nn.Module], Callable[[nn.Module], Tuple[float, int]]] = {
    NILIFNode: _nilif_source,
    sj_neuron.IFNode: _binary_source,
    sj_neuron.LIFNode: _binary_source,
    sj_neuron.ParametricLIFNode: _binary_source,
}


def register_spike_source(cls: Type[nn.Module], unit_and_D: Callable[[nn.Module], Tuple[float, int]]) -> None:
    """Declare that modules of ``cls`` emit spikes: ``unit_and_D(module) -> (unit, D)``.

    The output of such a module must be ``k * unit`` with integer ``k`` in ``0..D``.
    """
    _SPIKE_SOURCES[cls] = unit_and_D


def spike_source_of(module: nn.Module) -> Optional[Tuple[float, int]]:
    """``(unit, D)`` of a spiking neuron, or None for a module that is not a declared spike source."""
    for cls in type(module).__mro__:
        if cls in _SPIKE_SOURCES:
            return _SPIKE_SOURCES[cls](module)
    return None


# ------------------------------------------------------------------------------------ the spike mark

_KEEP_SINGLE = {
    "reshape", "view", "view_as", "flatten", "unflatten", "permute", "transpose", "t", "movedim",
    "squeeze", "unsqueeze", "contiguous", "clone", "detach", "expand", "expand_as", "__getitem__",
    "select", "narrow", "split", "chunk", "unbind", "tensor_split",
    "to", "float", "double", "half", "bfloat16", "cpu", "cuda",
}
_KEEP_MANY = {"cat", "concat", "concatenate", "stack"}
_SCALE = {"mul", "__mul__", "__rmul__", "multiply"}
_DIVIDE = {"div", "__truediv__", "divide", "true_divide"}
_DROPOUT = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout, F.feature_alpha_dropout}


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class SpikeTensor(torch.Tensor):
    """A tensor of spikes: values ``k * unit`` with integer ``k`` in ``0..D``, from neuron ``source``.

    Made by :func:`spike_driven_mode`'s neuron hooks; see the module docstring for the
    operations that keep the mark. ``unit`` is None once an in-place operation has
    changed the values.
    """

    unit: Optional[float]
    D: int
    source: str

    @staticmethod
    def mark(data: torch.Tensor, unit: float, D: int, source: str) -> "SpikeTensor":
        with torch._C.DisableTorchFunctionSubclass():
            out = data.as_subclass(SpikeTensor)
        out.unit, out.D, out.source = unit, D, source
        return out

    def plain(self) -> torch.Tensor:
        with torch._C.DisableTorchFunctionSubclass():
            return self.as_subclass(torch.Tensor)

    def __repr__(self, **kwargs):  # noqa: D105
        return f"SpikeTensor(unit={self.unit}, D={self.D}, source={self.source!r}, {self.plain()!r})"

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
        name = getattr(func, "__name__", "")
        if name.endswith("_") and not name.endswith("__") or "out" in kwargs:
            # in place: the values changed, the mark no longer holds
            for a in (*args, kwargs.get("out")):
                if isinstance(a, SpikeTensor):
                    a.unit = None
            return _strip(out)
        spec = _propagated_mark(func, name, args, kwargs)
        if spec is None:
            return _strip(out)
        return _wrap(out, *spec)


def spike_mark(x) -> Optional[Tuple[float, int, str]]:
    """``(unit, D, source neuron)`` of a tensor marked as spikes, None for any other value."""
    if isinstance(x, SpikeTensor) and x.unit is not None:
        return x.unit, x.D, x.source
    return None


def _propagated_mark(func, name, args, kwargs) -> Optional[Tuple[float, int, str]]:
    if func in _DROPOUT:
        training = kwargs.get("training", args[2] if len(args) > 2 else True)
        return spike_mark(args[0]) if not training else None
    if name in _KEEP_SINGLE:
        return spike_mark(args[0]) if args else None
    if name in _KEEP_MANY:
        tensors = args[0] if args else kwargs.get("tensors", ())
        marks = [spike_mark(t) for t in tensors]
        if not marks or any(m is None for m in marks) or len({m[:2] for m in marks}) != 1:
            return None
        sources = {m[2] for m in marks}
        return marks[0][0], marks[0][1], sources.pop() if len(sources) == 1 else "+".join(sorted(sources))
    if name in _SCALE or name in _DIVIDE:
        if len(args) != 2 or kwargs:
            return None
        a, b = args
        mark, number = (spike_mark(a), b) if spike_mark(a) is not None else (spike_mark(b), a)
        if mark is None or not _is_number(number) or number == 0 or not math.isfinite(number):
            return None
        if name in _DIVIDE:
            if not isinstance(a, SpikeTensor):
                return None  # number / spikes is not spikes
            return mark[0] / number, mark[1], mark[2]
        return mark[0] * number, mark[1], mark[2]
    return None


def _strip(out):
    if isinstance(out, SpikeTensor):
        return out.plain()
    if isinstance(out, (tuple, list)):
        return type(out)(_strip(o) for o in out)
    return out


def _wrap(out, unit, D, source):
    if isinstance(out, torch.Tensor):
        return SpikeTensor.mark(out, unit, D, source)
    if isinstance(out, (tuple, list)):
        return type(out)(_wrap(o, unit, D, source) for o in out)
    return out


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
    """What :func:`spike_driven` recorded; ``rows`` in the order the layers were first called."""

    _rows: Dict[str, SynapseRow] = field(default_factory=dict)

    @property
    def rows(self) -> List[SynapseRow]:
        return list(self._rows.values())

    def row(self, name: str) -> SynapseRow:
        return self._rows[name]

    def spike_rows(self) -> List[SynapseRow]:
        return [r for r in self._rows.values() if r.kind == "spike"]

    def dense_rows(self) -> List[SynapseRow]:
        return [r for r in self._rows.values() if r.kind == "dense"]

    def totals(self) -> Dict[str, int]:
        """Sum of events and ACs over spike-driven layers; dense MACs split by kind."""
        spike, dense = self.spike_rows(), self.dense_rows()
        return {"events": sum(r.events for r in spike), "acs": sum(r.acs for r in spike),
                "spike_layer_macs": sum(r.macs for r in spike), "dense_macs": sum(r.macs for r in dense)}

    def as_dicts(self) -> List[dict]:
        return [r._asdict() for r in self._rows.values()]

    def clear(self) -> None:
        self._rows.clear()

    def _add(self, name: str, layer: nn.Module, kind: str, events, acs, macs: int, numel: int,
             unit=None, D=None, source=None, reason: str = "") -> None:
        old = self._rows.get(name)
        if old is None:
            self._rows[name] = SynapseRow(name, kind, events, acs, macs, type(layer).__name__, 1, numel,
                                          unit, D, source, reason)
            return
        if old.kind != kind or old.unit != unit or old.D != D:
            raise RuntimeError(f"layer {name!r} was called with inputs of different kinds or units "
                               f"({old.kind}, unit {old.unit}, D {old.D} and {kind}, unit {unit}, D {D})")
        self._rows[name] = old._replace(
            events=None if events is None else old.events + events,
            acs=None if acs is None else old.acs + acs, macs=old.macs + macs, calls=old.calls + 1,
            input_elements=old.input_elements + numel,
            source=old.source if old.source == source else f"{old.source}|{source}")


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


def _patched_forward(layer: nn.Module, name: str, stats: SpikeDrivenStats):
    dense_forward = layer.forward  # the class's own forward, bound
    linear = isinstance(layer, nn.Linear)

    def forward(x, *args, **kwargs):
        mark = spike_mark(x)
        if args or kwargs:
            reason = "extra forward arguments"
        elif mark is None:
            reason = "input is not spikes" if not isinstance(x, SpikeTensor) else "spikes changed in place"
        elif not linear and layer.padding_mode != "zeros":
            reason = f"padding_mode {layer.padding_mode!r}"
        else:
            unit, D, source = mark
            plain = x.plain()
            out, events, acs = _event_forward(layer, plain, unit, D, name)
            stats._add(name, layer, "spike", events, acs, out.numel() * macs_per_output(layer), plain.numel(),
                       unit, D, source)
            return out
        plain = x.plain() if isinstance(x, SpikeTensor) else x
        out = dense_forward(plain, *args, **kwargs)
        stats._add(name, layer, "dense", None, None, out.numel() * macs_per_output(layer), plain.numel(), reason=reason)
        return out

    return forward


# ------------------------------------------------------------------------------------ entry points

_ACTIVE = set()


@contextlib.contextmanager
def spike_driven_mode(model: nn.Module) -> Iterator[SpikeDrivenStats]:
    """Within the block, ``model`` runs spike-driven and the yielded stats fill up.

    Every Conv1d/Conv2d/Linear whose input is spikes runs on binary events (see the
    module docstring), the others stay dense and are reported as such; the model's
    output is the integer model's output. The model is restored on exit (also on
    error). Counts accumulate over every forward inside the block.
    """
    if id(model) in _ACTIVE:
        raise RuntimeError("spike_driven_mode is already active on this model")
    stats = SpikeDrivenStats()
    patched = []
    _ACTIVE.add(id(model))
    try:
        with contextlib.ExitStack() as stack:
            # the layers as the paper defines them (Spike2Former's mask-feature conv runs on its spikes)
            stack.enter_context(using(model, mask_order="features_first", compile=False))
            stack.enter_context(marking_spikes(model))
            for name, module in model.named_modules():
                if isinstance(module, SYNAPSES):
                    if "forward" in module.__dict__:
                        raise RuntimeError(f"{name!r} already has an instance-level forward")
                    module.forward = _patched_forward(module, name, stats)
                    patched.append(module)
            yield stats
    finally:
        for module in patched:
            module.__dict__.pop("forward", None)
        _ACTIVE.discard(id(model))


@contextlib.contextmanager
def marking_spikes(model: nn.Module) -> Iterator[None]:
    """Within the block every spiking neuron's output is a :class:`SpikeTensor` (as in
    :func:`spike_driven_mode`, without running any layer on events)."""
    handles = [module.register_forward_hook(_neuron_hook(name))
               for name, module in model.named_modules() if spike_source_of(module) is not None]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _neuron_hook(name: str):
    def hook(module, inputs, output):
        if not isinstance(output, torch.Tensor):
            return output
        unit, D = spike_source_of(module)
        plain = output.plain() if isinstance(output, SpikeTensor) else output
        return SpikeTensor.mark(plain, unit, D, name)
    return hook


def spike_driven_forward(model: nn.Module, *args, **kwargs):
    """``model(*args, **kwargs)`` run spike-driven, without gradients: returns ``(output, stats)``."""
    with torch.no_grad(), spike_driven_mode(model) as stats:
        out = model(*args, **kwargs)
    return _strip_all(out), stats


def _strip_all(out):
    if isinstance(out, SpikeTensor):
        return out.plain()
    if isinstance(out, dict):
        return {k: _strip_all(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_strip_all(o) for o in out)
    return out
