r"""Tensors saved for backward, kept small: spikes as 1-byte counts, cheap layer outputs recomputed.

Training keeps, for backward, the input of every layer fed by a neuron: a tensor of
normalised counts ``S = k / norm`` with integer ``k`` in ``0..D``, stored as 4-byte
floats. Inside :func:`compact_saved_spikes` each such tensor is stored instead as
``uint8`` counts ``k = round(S * norm)`` and rebuilt as ``k / norm`` -- the neuron's
own formula, so the rebuilt values are bit-identical -- when backward reads it::

    with compact_saved_spikes(model) as stats:
        loss = criterion(model(images), target)
    loss.backward()                      # same gradients, a quarter of the spike memory
    stats.tensors, stats.original_bytes, stats.stored_bytes

Which saved tensors are spikes is known from the graph, never guessed from values:
a forward hook marks every output of the model's neurons (:class:`NILIFNode` with
``D <= 255``: ``norm`` from the neuron; SpikingJelly's other ``BaseNode`` neurons: binary,
``norm = 1``), and a saved tensor is compacted only if it shares the storage of a
marked output that is still alive, has its dtype, and has not been modified in
place since the neuron wrote it (version counter). Anything else is saved as usual.
A tensor saved several times (the input of the Q, K and V projections) is compacted
once. Backward may run after the context has exited.

``recompute_macs_per_output=N`` (N > 0) also drops the outputs of cheap layers that
autograd saves -- a BatchNorm's input is the output of the conv before it -- when the
layer costs at most N multiply-adds per output element (depth-wise convs: k x k;
1x1 convs and Linear layers: their input width) and its weight is trained (so that
the layer saves its own input anyway). Such a tensor is stored as the layer and its
input (the input's compact form, shared with the layer's own saved copy) and
recomputed by the same functional call when backward reads it: same input, weights
and autocast state, hence the same values. A weight changed in place between
forward and backward makes backward fail with an error instead of using stale values.
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron as sj_neuron

from .layer_costs import SYNAPTIC_LAYERS, macs_per_output
from .nilif import NILIFNode

__all__ = ["compact_saved_spikes", "count_norm", "CompactionStats"]

_CHUNK = 1 << 20  # elements converted to counts at a time (4 MB of float32)


def count_norm(module: nn.Module) -> Optional[float]:
    """The divisor turning a neuron's output into integer counts that fit a byte, or None."""
    if isinstance(module, NILIFNode):
        return float(module.dynamics.norm) if module.D <= 255 else None
    if isinstance(module, sj_neuron.BaseNode):
        return 1.0
    return None


class _Mark(NamedTuple):
    output: "weakref.ReferenceType[torch.Tensor]"
    version: int
    norm: float
    packed: Dict[Tuple, "_Packed"]  # per mark: a later output reusing the memory starts afresh


class _Packed(NamedTuple):
    counts: torch.Tensor
    norm: float
    dtype: torch.dtype


class _LayerMark(NamedTuple):
    output: "weakref.ReferenceType[torch.Tensor]"
    version: int
    layer: nn.Module
    input: object  # what pack() makes of the layer's input (spike counts, a recipe, or the tensor)
    input_version: int
    weight_version: int
    autocast: Optional[Tuple[str, torch.dtype]]


class _Recompute(NamedTuple):
    layer: nn.Module
    input: object  # what pack() made of the layer's input
    input_version: int  # checked when the input is kept as it is
    weight_version: int
    autocast: Optional[Tuple[str, torch.dtype]]
    geometry: Tuple[Tuple[int, ...], Tuple[int, ...], int]  # the saved view: shape, stride, offset
    output_stride: Tuple[int, ...]


@dataclass
class CompactionStats:
    """What :func:`compact_saved_spikes` stored: distinct spike tensors, their bytes as floats and as
    counts; layer outputs left to recompute and their bytes."""
    tensors: int = 0
    original_bytes: int = 0
    stored_bytes: int = 0
    recomputed: int = 0
    recomputed_bytes: int = 0


def _autocast_state(device_type: str) -> Optional[Tuple[str, torch.dtype]]:
    if torch.is_autocast_enabled(device_type):
        return device_type, torch.get_autocast_dtype(device_type)
    return None


class _Compactor:
    """The saved-tensor hooks of :func:`compact_saved_spikes` and what they remember between forward and
    backward: which storages hold neuron outputs (``marks``) and cheap layers' outputs (``layer_marks``)."""

    def __init__(self):
        self.marks: Dict[int, _Mark] = {}
        self.layer_marks: Dict[int, _LayerMark] = {}
        self.stats = CompactionStats()
        self.scratch: Dict[Tuple, torch.Tensor] = {}  # per (device, dtype): to_counts' reused buffer

    # ------------------------------------------------------------------ forward hooks: what may be packed
    def mark_output(self, norm: float):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                mark = _Mark(weakref.ref(output), output._version, norm, {})
                self.marks[output.untyped_storage().data_ptr()] = mark
        return hook

    def mark_layer_output(self, module, inputs, output):
        x = inputs[0] if inputs else None
        if (isinstance(output, torch.Tensor) and output.requires_grad and isinstance(x, torch.Tensor)
                and module.weight.requires_grad and output.layout == torch.strided):
            # the layer saves its input itself (its weight is trained): holding it here costs nothing
            self.layer_marks[output.untyped_storage().data_ptr()] = _LayerMark(
                weakref.ref(output), output._version, module, self.recipe_or_counts(x), x._version,
                module.weight._version, _autocast_state(output.device.type))

    # ------------------------------------------------------------------ packing
    def pack_spikes(self, t: torch.Tensor):
        mark = self.marks.get(t.untyped_storage().data_ptr())
        if mark is None:
            return None
        output = mark.output()
        if output is None or output._version != mark.version or output.dtype != t.dtype:
            return None
        key = (t.storage_offset(), tuple(t.shape), t.stride())
        if key not in mark.packed:
            counts = self.to_counts(t.detach(), mark.norm)
            mark.packed[key] = _Packed(counts, mark.norm, t.dtype)
            self.stats.tensors += 1
            self.stats.original_bytes += t.numel() * t.element_size()
            self.stats.stored_bytes += counts.numel()
        return mark.packed[key]

    def to_counts(self, t: torch.Tensor, norm: float) -> torch.Tensor:
        """``round(t * norm)`` as uint8, through a small reused float buffer: no full-size temporaries."""
        if not t.is_contiguous():
            return torch.round(t * norm).to(torch.uint8)
        flat = t.view(-1)
        counts = torch.empty(flat.shape, dtype=torch.uint8, device=t.device)
        key = (t.device, t.dtype)
        if key not in self.scratch:
            self.scratch[key] = torch.empty(_CHUNK, dtype=t.dtype, device=t.device)
        buffer = self.scratch[key]
        for start in range(0, flat.numel(), _CHUNK):
            part = flat[start:start + _CHUNK]
            work = buffer[:part.numel()]
            torch.mul(part, norm, out=work).round_()
            counts[start:start + _CHUNK].copy_(work)
        return counts.view(t.shape)

    def pack_layer_output(self, t: torch.Tensor):
        mark = self.layer_marks.get(t.untyped_storage().data_ptr())
        if mark is None:
            return None
        output = mark.output()
        if (output is None or output._version != mark.version or output.dtype != t.dtype
                or mark.layer.weight._version != mark.weight_version):
            return None
        return _Recompute(mark.layer, mark.input, mark.input_version, mark.weight_version, mark.autocast,
                          (tuple(t.shape), t.stride(), t.storage_offset() - output.storage_offset()),
                          output.stride())

    def recipe_or_counts(self, t: torch.Tensor):
        if t.layout != torch.strided:
            return t
        packed = self.pack_spikes(t)
        if packed is None and self.layer_marks:
            packed = self.pack_layer_output(t)
        return t if packed is None else packed

    def pack(self, t: torch.Tensor):
        packed = self.recipe_or_counts(t)
        if isinstance(packed, _Recompute):
            self.stats.recomputed += 1
            self.stats.recomputed_bytes += t.numel() * t.element_size()
        return packed

    # ------------------------------------------------------------------ unpacking, in backward
    def unpack(self, saved):
        if isinstance(saved, _Packed):
            return saved.counts.to(torch.float32).div_(saved.norm).to(saved.dtype)
        if isinstance(saved, _Recompute):
            return self.recomputed(saved)
        return saved

    def recomputed(self, saved: "_Recompute") -> torch.Tensor:
        layer = saved.layer
        stale = layer.weight._version != saved.weight_version or (
            isinstance(saved.input, torch.Tensor) and saved.input._version != saved.input_version)
        if stale:
            raise RuntimeError(f"the weight or input of {layer} was modified in place between forward and "
                               "backward; its output, dropped to save memory, cannot be recomputed (turn "
                               "recomputation off: model.set_execution(recompute_macs_per_output=0))")
        x = self.unpack(saved.input)
        autocast = (torch.autocast(saved.autocast[0], dtype=saved.autocast[1]) if saved.autocast
                    else contextlib.nullcontext())
        with torch.no_grad(), autocast:
            output = type(layer).forward(layer, x)  # the class's forward: no module hooks run again
        if output.stride() != saved.output_stride:
            raise RuntimeError(f"recomputing {layer} gave strides {output.stride()}, "
                               f"forward gave {saved.output_stride}")
        shape, stride, offset = saved.geometry
        return output.as_strided(shape, stride, output.storage_offset() + offset)


@contextlib.contextmanager
def compact_saved_spikes(model: nn.Module, recompute_macs_per_output: int = 0) -> Iterator[CompactionStats]:
    """Store the model's neuron outputs that autograd saves for backward as uint8 counts, and
    recompute saved outputs of layers with at most ``recompute_macs_per_output`` MACs per element."""
    compactor = _Compactor()
    handles = [module.register_forward_hook(compactor.mark_output(norm)) for module in model.modules()
               if (norm := count_norm(module)) is not None]
    if recompute_macs_per_output > 0:
        handles += [module.register_forward_hook(compactor.mark_layer_output) for module in model.modules()
                    if isinstance(module, SYNAPTIC_LAYERS) and macs_per_output(module) <= recompute_macs_per_output]
    try:
        with torch.autograd.graph.saved_tensors_hooks(compactor.pack, compactor.unpack):
            yield compactor.stats
    finally:
        for handle in handles:
            handle.remove()
