r"""One record of the operations a forward executes, shared by every tool that counts them.

    with Trace(model, events=True) as trace:
        model(images)
    trace.records          # one OpRecord per Conv/Linear call and per product or sampling call

Each :class:`OpRecord` is one call of one operation that multiplies and accumulates, in the order the
calls finished: the module that ran it (the innermost one, by its path in the model), its kind, what it
was (the layer, or the ATen ops a product lowered to), the dense multiply-accumulates it executed, and
the operands that may carry spikes, with their marks (:mod:`zoo.spikes`) and, with ``events=True``,
their integer event counts. Three tools are views of these records:

- :func:`zoo.complexity.count_macs`: the MACs by module and kind;
- :func:`zoo.spike_driven.spike_driven_mode`: what each synapse computed on binary events (the event
  forward leaves its exact counts on the layer's record);
- :func:`analysis.energy.estimate`: which MACs had a spike operand and cost accumulates instead.

What is recorded:

- ``conv_linear``: every ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` call (a forward hook), MACs
  ``output elements x fan-in`` (:func:`neurons.layer_costs.macs_per_output`); its operand is the
  layer's input.
- Products: the ATen ``mm``/``addmm``/``bmm``/``baddbmm`` calls outside those layers, ``m x n x k``
  each, in the order the model multiplies (what ``@``, ``matmul`` and ``einsum`` lower to). The kind
  is the running module's declared ``product_kind`` (``attention_product``, ``mask_einsum``), else
  ``other_product``. The ATen level sees the MACs but not the spike marks, which live on the
  tensors the model passed in, so the products are also watched one level up (``matmul``, ``mm``,
  ``bmm``, ``einsum``, ``grid_sample``): the ATen calls made inside one such call form one record,
  whose operands are that call's two tensors. ATen products reached any other way are recorded
  without operands (never spikes).
- ``deformable_sampling``: each ATen ``grid_sampler_2d`` call, one MAC per sampled value. Its
  operand is the tensor that then multiplies the samples (the SDDA attention weights), found when
  that multiplication happens.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from neurons.layer_costs import SYNAPTIC_LAYERS, macs_per_output

from .spikes import spike_mark

__all__ = ["KINDS", "Operand", "EventRun", "OpRecord", "Trace", "layer_macs"]

KINDS = ("conv_linear", "attention_product", "deformable_sampling", "mask_einsum", "other_product")

_aten = torch.ops.aten
_ATEN_MATMULS = {_aten.mm.default, _aten.addmm.default, _aten.bmm.default, _aten.baddbmm.default}
_MATMULS = {"matmul", "__matmul__", "__rmatmul__", "mm", "bmm"}
_MULS = {"mul", "__mul__", "__rmul__", "multiply"}


@dataclass
class Operand:
    """One operand of a recorded call: its spike mark (``(unit, D, source)``, None for real values), its
    element count and, for marked operands of a trace with ``events=True``, the sum of its integer counts."""

    mark: Optional[Tuple[float, int, str]]
    elements: int
    events: Optional[int] = None


@dataclass
class EventRun:
    """How :func:`zoo.spike_driven.spike_driven_mode` ran a synapse: on binary events (``events``, exact
    ``acs``) or dense (``reason``)."""

    on_events: bool
    events: Optional[int] = None
    acs: Optional[int] = None
    reason: str = ""


@dataclass
class OpRecord:
    """One executed call: module path (``""``: the model itself), kind (:data:`KINDS`), what ran, its
    dense MACs, the ATen calls it counts (products; 1 for a layer), its operands and, under spike-driven
    inference, how a synapse ran."""

    name: str
    kind: str
    op: str
    macs: int
    calls: int = 1
    operands: Tuple[Operand, ...] = ()
    layer_type: str = ""
    event_run: Optional[EventRun] = None
    aten_ops: List[str] = field(default_factory=list)

    @property
    def spike_operands(self) -> List[Operand]:
        return [x for x in self.operands if x.mark is not None]


def layer_macs(module: nn.Module, output: torch.Tensor) -> Tuple[str, int]:
    """Description and MACs of one Conv1d/Conv2d/Linear call that produced ``output``."""
    macs = output.numel() * macs_per_output(module)
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}", macs
    groups = f", groups {module.groups}" if module.groups > 1 else ""
    stride = f"/{module.stride[0]}" if any(s != 1 for s in module.stride) else ""
    size = "k" + "x".join(map(str, module.kernel_size))
    return f"{type(module).__name__} {size}{stride} {module.in_channels}->{module.out_channels}{groups}", macs


def _matmul_macs(func, args) -> int:
    """m x n x k of an ATen mm/addmm/bmm/baddbmm call (batched: times the batch)."""
    a, b = (args[1], args[2]) if func in (_aten.addmm.default, _aten.baddbmm.default) else (args[0], args[1])
    batch = a.shape[0] if a.dim() == 3 else 1
    return batch * a.shape[-2] * a.shape[-1] * b.shape[-1]


def _events(x: torch.Tensor, mark: Tuple[float, int, str]) -> int:
    """The sum of the integer counts of a marked tensor.

    The values are trusted to be ``k * unit``: the mark is set on neurons' outputs and kept only by
    operations that do not change values (or scale them with the unit); checking them (as the event
    forward of zoo.spike_driven does) would take most of the time of a large model's trace.
    """
    counts = x.plain() / mark[0]
    counts.round_()
    # float32 sums of integer counts are exact below 2^24, far above a row's (last axis) total;
    # the rows are then summed in float64 (summing everything in float64 is three times slower)
    return int(counts.sum(-1).sum(dtype=torch.float64))


class _Call:
    """A product call watched at the function level: its operand tensors and the records it made."""

    def __init__(self, tensors: Sequence):
        self.tensors = tensors
        self.operands: Optional[Tuple[Operand, ...]] = None
        self.records: Dict[str, OpRecord] = {}


class Trace:
    """Records every conv/linear/product/sampling call of ``model`` inside the ``with`` block.

    :param events: also sum the integer counts of every spike operand (needs real values, not 'meta').
    """

    def __init__(self, model: nn.Module, events: bool = False):
        self.model = model
        self.events = events
        self.records: List[OpRecord] = []
        self._stack: List[Tuple[str, nn.Module]] = []
        self._calls: List[_Call] = []
        self._event_runs: Dict[nn.Module, EventRun] = {}
        # grid_sample outputs awaiting the tensor that weights them: id -> (weak reference, record)
        self._samples: Dict[int, Tuple[weakref.ref, OpRecord]] = {}
        self._handles = []
        self._modes = (_Products(self), _ProductOperands(self))

    def __enter__(self) -> "Trace":
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_pre_hook(self._enter_module(name)))
            self._handles.append(module.register_forward_hook(self._leave_module(name), always_call=True))
        try:
            for mode in self._modes:
                mode.__enter__()
        except BaseException:
            self._remove_hooks()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            for mode in reversed(self._modes):
                mode.__exit__(*exc)
        finally:
            self._remove_hooks()
            self._samples.clear()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def end_forward(self) -> None:
        """Forget sampled values still waiting for their weights (call between forwards)."""
        self._samples.clear()

    def note_event_run(self, module: nn.Module, run: EventRun) -> None:
        """How a synapse is about to finish its call; goes onto the record its forward hook makes."""
        self._event_runs[module] = run

    # ---------------------------------------------------------------- layers

    def _enter_module(self, name: str):
        def hook(module, args):
            self._stack.append((name, module))
        return hook

    def _leave_module(self, name: str):
        def hook(module, args, output):
            self._stack.pop()
            if isinstance(module, SYNAPTIC_LAYERS) and output is not None:  # None: the forward raised
                op, macs = layer_macs(module, output)
                operands = (self._operand(args[0]),) if args else ()
                self.records.append(OpRecord(name, "conv_linear", op, macs, 1, operands, type(module).__name__,
                                             self._event_runs.pop(module, None)))
        return hook

    def _operand(self, x) -> Operand:
        mark = spike_mark(x)
        if mark is None or not self.events:
            return Operand(mark, x.numel())
        if x.is_meta:
            raise ValueError(f"an input of {self._stack[-1][0] if self._stack else 'the model'!r} is spikes, "
                             "whose counts need values: trace on a real device, not 'meta'")
        return Operand(mark, x.numel(), _events(x, mark))

    # ---------------------------------------------------------------- products

    def _inside_layer(self) -> bool:
        return bool(self._stack) and isinstance(self._stack[-1][1], SYNAPTIC_LAYERS)

    def _product(self, kind: Optional[str], aten_op: str, macs: int) -> None:
        """Adds one ATen product to the innermost running module; ``kind=None``: that module's product kind."""
        name, module = self._stack[-1] if self._stack else ("", None)
        kind = kind or getattr(module, "product_kind", None) or "other_product"
        if kind not in KINDS:
            raise ValueError(f"{type(module).__name__}.product_kind is {kind!r}; zoo.trace knows {KINDS}")
        call = self._calls[-1] if self._calls else None
        record = call.records.get(kind) if call is not None else None
        if record is None:
            operands = ()
            if call is not None:
                if call.operands is None:
                    call.operands = tuple(self._operand(x) for x in call.tensors)
                operands = call.operands
            record = OpRecord(name, kind, "", 0, 0, operands)
            self.records.append(record)
            if call is not None:
                call.records[kind] = record
        record.macs += macs
        record.calls += 1
        record.aten_ops.append(aten_op)

    def _sampled(self, out: torch.Tensor, record: OpRecord) -> None:
        self._samples[id(out)] = (weakref.ref(out), record)

    def _weighted(self, args) -> None:
        """``sampled * weights``: the weights become the operand of the sampling record."""
        for sampled, weights in (args, args[::-1]):
            entry = self._samples.get(id(sampled))
            if entry is not None and entry[0]() is sampled:
                del self._samples[id(sampled)]
                entry[1].operands = (self._operand(weights),)
                return


class _Products(TorchDispatchMode):
    """The ATen level: the MACs of every product and sampling call, as executed."""

    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        trace = self.trace
        if func in _ATEN_MATMULS and not trace._inside_layer():
            trace._product(None, func.__name__.split(".")[0], _matmul_macs(func, args))
        elif func is _aten.grid_sampler_2d.default:
            trace._product("deformable_sampling", "grid_sampler_2d", out.numel())
        return out


class _ProductOperands(TorchFunctionMode):
    """The function level: the operands of each product call, with their spike marks still on them."""

    def __init__(self, trace: Trace):
        super().__init__()
        self.trace = trace

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        trace = self.trace
        name = getattr(func, "__name__", "")
        if name in _MULS and trace._samples and len(args) == 2:
            out = func(*args, **kwargs)
            trace._weighted(args)
            return out
        sampling = func is F.grid_sample
        tensors = () if sampling else _product_operands(name, args)
        if tensors is None:
            return func(*args, **kwargs)
        call = _Call(tensors)
        trace._calls.append(call)
        try:
            out = func(*args, **kwargs)
        finally:
            trace._calls.pop()
        if sampling and "deformable_sampling" in call.records:
            trace._sampled(out, call.records["deformable_sampling"])
        return out


def _product_operands(name: str, args) -> Optional[Tuple[torch.Tensor, torch.Tensor]]:
    """The two operands of a matrix product call, or None for anything else."""
    if name in _MATMULS and len(args) >= 2:
        return args[0], args[1]
    if name == "einsum":
        operands = args[1] if len(args) == 2 and isinstance(args[1], (list, tuple)) else args[1:]
        return tuple(operands) if len(operands) == 2 else None
    return None
