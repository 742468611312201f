r"""Which tensors are spikes: the neurons that emit them and the mark their outputs carry.

    with marking_spikes(model):
        out = model(x)          # inside, every spiking neuron's output is a SpikeTensor
    spike_mark(tensor)          # (unit, D, source neuron) of a marked tensor, else None

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
  known from the graph, never inferred from values.

The tools that tell spikes from real values read these marks: the operation record of
:mod:`zoo.trace`, spike-driven inference (:mod:`zoo.spike_driven`), the energy report
(:mod:`analysis.energy`) and the firing monitor (:mod:`analysis.firing`).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Dict, Iterator, Optional, Tuple, Type

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import neuron as sj_neuron

from neurons.nilif import NILIFNode

__all__ = ["SpikeTensor", "spike_mark", "marking_spikes", "register_spike_source", "spike_source_of", "strip_marks"]


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

    Made by :func:`marking_spikes`' neuron hooks; see the module docstring for the
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
            return strip_marks(out)
        spec = _propagated_mark(func, name, args, kwargs)
        if spec is None:
            return strip_marks(out)
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


def _wrap(out, unit, D, source):
    if isinstance(out, torch.Tensor):
        return SpikeTensor.mark(out, unit, D, source)
    if isinstance(out, (tuple, list)):
        return type(out)(_wrap(o, unit, D, source) for o in out)
    return out


@contextlib.contextmanager
def marking_spikes(model: nn.Module) -> Iterator[None]:
    """Within the block every spiking neuron's output is a :class:`SpikeTensor`."""
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


def strip_marks(out):
    """``out`` (a tensor, or a dict, tuple or list of them) with every spike mark removed."""
    if isinstance(out, SpikeTensor):
        return out.plain()
    if isinstance(out, dict):
        return {k: strip_marks(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(strip_marks(o) for o in out)
    return out
