r"""Multiply-accumulate counts of one forward of one image, by kind, by part and by layer: a view of the
operation record of :mod:`zoo.trace`.

    report = count_macs(model, image_size=(512, 512))          # eval mode, on the meta device
    report.total, report.by_kind(), report.by_part()
    print(report.to_markdown(per_layer=True))

What is counted (every row of the report names its kind; :data:`CONVENTIONS` says how):

- ``conv_linear``: every ``nn.Conv1d``/``nn.Conv2d``/``nn.Linear`` call, from its output
  shape: ``out elements x in_channels / groups x kernel elements`` (Linear:
  ``out elements x in_features``). Biases, BatchNorm (foldable, see
  :mod:`zoo.fuse`), layer scales, residual additions and neurons are not counted.
- ``attention_product``, ``mask_einsum``, ``other_product``: the parameter-free matrix
  products the models compute in their own ``forward`` (``Q K^T``, ``K^T V`` and
  the second product; the SDME ``einsum``). They are caught at the ATen level
  (``mm``/``bmm``/``addmm``/``baddbmm``, which ``@``, ``matmul`` and ``einsum``
  lower to), so the count follows the order the model actually multiplies in:
  ``m x n x k`` per ``[m, k] @ [k, n]`` product. The kind is that of the innermost
  module running the product, as that module's class declares it (``product_kind =
  "attention_product"``); a product in any other module is ``other_product`` so that
  nothing goes uncounted silently.
- ``deformable_sampling``: the SDDA aggregation of eq. 4, one multiply-accumulate
  per bilinearly sampled value (each ``grid_sample`` output element is weighted by
  its attention weight and summed over the points exactly once). The 4 bilinear
  taps behind each sample are not counted, like every other interpolation
  (FPN upsampling, mask resizing).

The count runs by default on the ``meta`` device: parameters and buffers are
swapped for shape-only stand-ins (``torch.func.functional_call``), the input is a
meta tensor, nothing is computed or allocated, so even the 34M models at
1024x1024 take 1-3 s on 2 cores. ``device=None`` instead runs a real forward on a
zero image on the model's own device (one inference's time and memory).

Convention of the ``macs`` recorded in the pretrained configs: the ``total`` (all
kinds) of ``count_macs(model, cfg.crop_size, T=1)`` in eval mode, i.e. what
inference executes per time step (Spike2Former: last query state only, attention
and mask products in the model's default orders, ``model.execution``).
A forward at T time steps executes T times this; the energy convention of
``analysis.energy`` multiplies the per-step count by T.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from .execution import using
from .trace import KINDS, OpRecord, Trace

__all__ = ["KINDS", "CONVENTIONS", "LayerMacs", "MacReport", "count_macs", "mac_rows", "eval_mode_with_time_steps"]

CONVENTIONS = {
    "conv_linear": "Conv/Linear modules: out elements x in_channels/groups x kernel elements "
                   "(Linear: out elements x in_features); no bias, no BN",
    "attention_product": "parameter-free Q K^T / K^T V and the second product, as executed "
                         "(ATen mm/bmm: m x n x k)",
    "deformable_sampling": "SDDA weighted sum: 1 MAC per bilinearly sampled value "
                           "(grid_sample output elements); bilinear taps not counted",
    "mask_einsum": "SDME einsum(mask embedding, mask features), as executed (ATen bmm: m x n x k)",
    "other_product": "any other parameter-free matrix product (ATen mm/bmm: m x n x k)",
}

@dataclass
class LayerMacs:
    """The MACs of one module (all its calls) of one kind."""

    name: str  # module path in the model ("" for the model itself)
    kind: str
    op: str  # what was counted: the layer, or the ATen ops and how often
    calls: int = 0
    macs: int = 0

    @property
    def part(self) -> str:
        """The top-level child the module belongs to (backbone, pixel_decoder, ..., neck, head)."""
        return self.name.split(".", 1)[0] if self.name else "(model)"


@dataclass
class MacReport:
    """MACs of one forward of one image; ``layers`` in the order they first ran."""

    model: str
    image_size: Tuple[int, int]
    T: int
    layers: List[LayerMacs] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(row.macs for row in self.layers)

    def by_kind(self) -> Dict[str, int]:
        """Total MACs of every kind in :data:`KINDS` (zero when the model has none)."""
        totals = dict.fromkeys(KINDS, 0)
        for row in self.layers:
            totals[row.kind] += row.macs
        return totals

    def by_part(self) -> Dict[str, Dict[str, int]]:
        """``{part: {kind: MACs}}`` for the kinds the part has, parts in execution order."""
        parts: Dict[str, Dict[str, int]] = {}
        for row in self.layers:
            kinds = parts.setdefault(row.part, {})
            kinds[row.kind] = kinds.get(row.kind, 0) + row.macs
        return parts

    def select(self, prefix: str = "", kinds: Optional[Sequence[str]] = None) -> int:
        """MACs of the modules under ``prefix`` (a module path), optionally of some kinds only."""
        def under(name: str) -> bool:
            return not prefix or name == prefix or name.startswith(prefix + ".")
        return sum(r.macs for r in self.layers if under(r.name) and (kinds is None or r.kind in kinds))

    def to_markdown(self, per_layer: bool = False) -> str:
        """Totals by kind and by part (GMACs), the conventions, and optionally every layer."""
        h, w = self.image_size
        kinds = [k for k, v in self.by_kind().items() if v]
        lines = [f"MACs of {self.model} at {h}x{w}, T={self.T}, batch 1: {_g(self.total)} G", "",
                 "| part | " + " | ".join(kinds) + " | total |", "|---" * (len(kinds) + 2) + "|"]
        for part, totals in self.by_part().items():
            cells = [_g(totals.get(k, 0)) for k in kinds]
            lines.append(f"| {part} | " + " | ".join(cells) + f" | {_g(sum(totals.values()))} |")
        cells = [_g(v) for k, v in self.by_kind().items() if v]
        lines.append("| **total** | " + " | ".join(cells) + f" | {_g(self.total)} |")
        lines += ["", "| kind | convention |", "|---|---|"]
        lines += [f"| {k} | {CONVENTIONS[k]} |" for k in kinds]
        if per_layer:
            lines += ["", "| layer | kind | op | calls | GMACs |", "|---|---|---|---|---|"]
            lines += [f"| {r.name or '(model)'} | {r.kind} | {r.op} | {r.calls} | {r.macs / 1e9:.4f} |"
                      for r in self.layers]
        return "\n".join(lines)


def _g(macs: int) -> str:
    return f"{macs / 1e9:.3f}"


def mac_rows(records: Sequence[OpRecord]) -> List[LayerMacs]:
    """The records of a :class:`zoo.trace.Trace` summed per (module, kind), in the order they first ran;
    a product row's ``op`` says which ATen ops it ran and how often."""
    rows: Dict[Tuple[str, str], LayerMacs] = {}
    aten_ops: Dict[Tuple[str, str], Dict[str, int]] = {}
    for record in records:
        key = (record.name, record.kind)
        row = rows.get(key)
        if row is None:
            row = rows[key] = LayerMacs(record.name, record.kind, record.op)
        row.calls += record.calls
        row.macs += record.macs
        if record.aten_ops:
            counts = aten_ops.setdefault(key, {})
            for op in record.aten_ops:
                counts[op] = counts.get(op, 0) + 1
            row.op = ", ".join(f"{n} x {op}" for op, n in counts.items())
    return list(rows.values())


@contextlib.contextmanager
def eval_mode_with_time_steps(model: nn.Module, T: Optional[int]) -> Iterator[None]:
    """Within the block ``model`` is in eval mode and runs ``T`` time steps (None: its own); both restored."""
    modes = {m: m.training for m in model.modules()}
    saved_T = getattr(model, "T", None)
    model.eval()
    if T is not None:
        if saved_T is None:
            raise ValueError(f"{type(model).__name__} has no time steps T to set")
        model.T = T
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training
        if T is not None:
            model.T = saved_T


@torch.no_grad()
def count_macs(model: nn.Module, image_size: Tuple[int, int] = (512, 512), T: Optional[int] = None,
               device: Optional[str] = "meta", product_order_override: Optional[str] = None,
               mask_order_override: Optional[str] = None, **forward_kwargs) -> MacReport:
    """MACs of one eval-mode forward of one ``[1, 3, H, W]`` image through a spikezoo model.

    :param image_size: (H, W) of the input (the model pads it to its size divisor).
    :param T: time steps to run with (None: the model's own ``T``). Counts scale with T.
    :param device: 'meta' (no computation, parameters never touched) or None to run a real
        forward on a zero image on the model's own device.
    :param product_order_override: run attention in this order (``ExecutionOptions.product_order``),
        e.g. 'qk_first' for the official ``(Q K^T) V``.
    :param mask_order_override: ``ExecutionOptions.mask_order``, e.g. 'features_first' for the
        official mask features conv followed by the mask product.
    :param forward_kwargs: passed to the forward, e.g. ``all_layers=True`` for all 7 predictions.

    The model's train/eval flags, ``T`` and product orders are restored afterwards, and its
    neurons are reset (a meta forward leaves shape-only membrane states behind).
    """
    height, width = image_size
    try:
        with eval_mode_with_time_steps(model, T), \
                using(model, product_order=product_order_override, mask_order=mask_order_override, compile=False):
            time_steps = getattr(model, "T", 1)
            if device is None:
                reference = next(model.parameters())
                image = torch.zeros(1, 3, height, width, device=reference.device, dtype=reference.dtype)
                with Trace(model) as trace:
                    model(image, **forward_kwargs)
            else:
                stand_ins = {name: torch.empty_like(t, device=device)
                             for name, t in [*model.named_parameters(), *model.named_buffers()]}
                image = torch.zeros(1, 3, height, width, device=device)
                with Trace(model) as trace:
                    torch.func.functional_call(model, stand_ins, (image,), forward_kwargs, strict=True)
    finally:
        functional.reset_net(model)
    name = getattr(getattr(model, "pretrained_cfg", None), "name", "") or type(model).__name__
    return MacReport(name, (height, width), time_steps, mac_rows(trace.records))
