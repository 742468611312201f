r"""Spikes saved for backward as 1-byte counts.

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
"""
from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Dict, Iterator, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import neuron as sj_neuron

from .nilif import NILIFNode

__all__ = ["compact_saved_spikes", "count_norm", "CompactionStats"]


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


@dataclass
class CompactionStats:
    """What :func:`compact_saved_spikes` stored: distinct tensors, their bytes as floats and as counts."""
    tensors: int = 0
    original_bytes: int = 0
    stored_bytes: int = 0


@contextlib.contextmanager
def compact_saved_spikes(model: nn.Module) -> Iterator[CompactionStats]:
    """Store the model's neuron outputs that autograd saves for backward as uint8 counts."""
    marks: Dict[int, _Mark] = {}
    stats = CompactionStats()

    def mark_output(norm: float):
        def hook(module, inputs, output):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                mark = _Mark(weakref.ref(output), output._version, norm, {})
                marks[output.untyped_storage().data_ptr()] = mark
        return hook

    def pack(t: torch.Tensor):
        mark = marks.get(t.untyped_storage().data_ptr()) if t.layout == torch.strided else None
        if mark is None:
            return t
        output = mark.output()
        if output is None or output._version != mark.version or output.dtype != t.dtype:
            return t
        key = (t.storage_offset(), tuple(t.shape), t.stride())
        if key not in mark.packed:
            counts = torch.round(t.detach() * mark.norm).to(torch.uint8)
            mark.packed[key] = _Packed(counts, mark.norm, t.dtype)
            stats.tensors += 1
            stats.original_bytes += t.numel() * t.element_size()
            stats.stored_bytes += counts.numel()
        return mark.packed[key]

    def unpack(saved):
        if not isinstance(saved, _Packed):
            return saved
        return saved.counts.to(torch.float32).div_(saved.norm).to(saved.dtype)

    handles = [module.register_forward_hook(mark_output(norm)) for module in model.modules()
               if (norm := count_norm(module)) is not None]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield stats
    finally:
        for handle in handles:
            handle.remove()
