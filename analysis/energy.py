r"""Energy of one inference per image: analog inputs cost MACs, spike inputs cost ACs; by layer and by part.

Usage::

    from analysis.energy import estimate
    report = estimate(model, images)          # images [N, ...]: every figure is per image, the mean over N
    report.total_macs, report.total_acs, report.total_mj
    report.by_part()                          # backbone / pixel_decoder / transformer_decoder / sdme (neck / head)
    print(report.to_markdown(per_layer=True))
    report.to_csv("energy.csv"); report.to_json("energy.json"); report.to_dict()
    estimate(model, images, exact=True)       # adds the exact event counts of the binary-expanded model

    estimate_registered("spike2former_ade20k")  # a registered model at its crop size, random weights and image
    # the same from a shell: python -m analysis.energy spike2former_ade20k --size 512 512 --per-layer

The convention below is also the ``convention`` text of every report.

Convention
----------
Energy = MACs x E_MAC + ACs x E_AC with E_MAC = 4.6 pJ and E_AC = 0.9 pJ (45 nm, 32-bit
float; the paper's appendix eqs 11-13). Nothing else is charged: no memory
access, neuron update, BatchNorm, addition, residual or interpolation.

1. Operations counted: the multiply-accumulates of zoo.complexity.count_macs, as executed by
   one eval-mode forward: every Conv1d/Conv2d/Linear call (output elements x fan-in, zero
   padding included, no bias, no BN), the parameter-free matrix products (attention products,
   SDME mask einsum, any other matmul; ATen mm/bmm in the order the model multiplies) and the
   SDDA weighted sum (one per bilinearly sampled value). These are the dense MACs; a forward at
   T time steps executes T times the per-step count. Spike2Former runs its mask product in the
   paper's order here (``mask_order='features_first'``: the mask-feature conv on its spikes, then
   the einsum), not the cheaper association inference uses.
2. MAC or AC is decided per call from the data flow, never from layer names. Spiking neurons
   mark their outputs as spikes (zoo.spike_driven: the neuron's unit and D); the mark survives
   only reshapes, indexing, concatenation, eval-mode dropout and scaling by a number. A
   Conv/Linear whose input carries the mark is a synapse fed by spikes and costs ACs. Any other
   input is analog and costs its MACs: the image (the stem), a BN output, a sum, or the output
   of a layer with no neuron in between (Meta-SpikeFormer's SepConv.pw2, RepConv.dw and
   RepConv.pw_out).
3. ACs of a synapse fed by spikes = events x fan-out, computed analytically as
   dense MACs x (mean integer count per input element) = MACs per step x T x (mean integer
   count per neuron per step). Events are the integer counts (value / unit, 0..D) summed over
   the input of all T steps: a count k is k binary events, so D is not multiplied in again.
4. Products with spikes (any two-operand matmul/mm/bmm/einsum: attention Q K^T, K^T V and the
   product with V, the SDME einsum of the spiking mask embedding with real mask features):
   ACs = events of the spike operand x its fan-out, the fan-out being MACs / elements of that
   operand (the multiply-accumulates each of its elements takes part in). With spikes on both
   sides, the operand giving fewer ACs sends the events. SDDA weighted sum: when the tensor that
   scales the sampled values is spikes (the attention weights of eq. 7), ACs = events of the
   weights x the values each weight scales (the channels of its group). Products of two real
   tensors, and products not recognised, cost MACs.
5. Analytic versus exact ACs. The analytic count (3) gives every event of a conv's input the
   layer's mean fan-out t = output positions x kernel elements / input positions, which counts
   the kernel taps that land in zero padding. The exact count (exact=True: the event counter of
   zoo.spike_driven on the binary-expanded model) gives an event at input position p its true
   targets n(p), the (output position, kernel tap) pairs that read p, padding excluded. Both are
   multiplied by C_out / groups, so per call
       analytic - exact = (C_out / groups) x sum_p c(p) (t - n(p)),   c(p) = counts at p.
   Hence: analytic = exact for Linear and 1x1 stride-1 convs (every input element has the same
   fan-out: n = t); exact <= analytic for stride-1 convs padded to keep their size
   (n(p) <= kernel elements = t), with equality when no event lies within the padding's reach of
   the border; for strided convs min n / t <= exact / analytic <= max n / t, either side of 1
   (3x3/2 convs with padding 1 on even sizes: n in 1..4, t = 2.25). Products have no padding:
   their analytic and exact counts are equal.
6. Per image, one forward: every figure covers the T steps of one forward and is the mean over
   the given images. The model runs in eval mode without gradients (Spike2Former then predicts
   from its last query state only); all neurons are reset before every batch of batch_size
   images, and eval-mode results do not depend on the batching. A model that pads its input
   (to a multiple of 32) is counted on the padded input, as it computes.
7. Totals: total_macs = MACs charged at E_MAC (analog inputs); total_acs = ACs; dense_macs =
   every MAC of the dense model (both kinds of rows); total_mj = total_macs x 4.6 pJ +
   total_acs x 0.9 pJ, in mJ. A row's rate is the mean integer count per neuron per step of its
   spike input (events / input elements).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

import zoo
from zoo.complexity import eval_mode_with_time_steps, mac_rows
from zoo.execution import using
from zoo.spike_driven import spike_driven_mode
from zoo.spikes import marking_spikes
from zoo.trace import OpRecord, Trace

__all__ = ["E_MAC_PJ", "E_AC_PJ", "CONVENTION", "EnergyRow", "EnergyReport", "estimate", "estimate_registered"]

E_MAC_PJ = 4.6
E_AC_PJ = 0.9
# The module docstring is the one statement of the convention (empty under python -OO, which strips it).
CONVENTION = (__doc__ or "").partition("Convention\n----------\n")[2].strip()

_PJ_PER_MJ = 1e9

Key = Tuple[str, str]  # (module name, kind), the rows of zoo.complexity's MAC count


@dataclass
class EnergyRow:
    """The operations of one module of one kind that cost the same, per image (mean over the images).

    ``charged_as`` is 'MAC' (analog input: ``macs`` x E_MAC) or 'AC' (spike input: ``acs`` x E_AC);
    ``macs`` are the dense MACs in both cases. ``events`` and ``input_elements`` are those of the
    spike input (zero for MAC rows); ``exact_acs`` is filled by ``estimate(..., exact=True)``.
    """

    name: str
    kind: str
    charged_as: str
    op: str
    macs: float
    acs: float = 0.0
    events: float = 0.0
    input_elements: float = 0.0
    exact_acs: Optional[float] = None

    @property
    def part(self) -> str:
        """The top-level child the module belongs to (backbone, pixel_decoder, ..., neck, head)."""
        return self.name.split(".", 1)[0] if self.name else "(model)"

    @property
    def rate(self) -> Optional[float]:
        """Mean integer count per neuron per step of the spike input; None for an analog input."""
        if self.charged_as != "AC":
            return None
        return self.events / self.input_elements if self.input_elements else 0.0

    @property
    def energy_pj(self) -> float:
        return self.acs * E_AC_PJ if self.charged_as == "AC" else self.macs * E_MAC_PJ

    def to_dict(self) -> dict:
        return {**asdict(self), "part": self.part, "rate": self.rate, "energy_pj": self.energy_pj}


@dataclass
class EnergyReport:
    """Energy of one forward per image; ``rows`` in the order the modules first ran."""

    model: str
    images: int
    input_shape: Tuple[int, ...]  # of one image
    T: Optional[int]
    rows: List[EnergyRow] = field(default_factory=list)
    convention: str = CONVENTION

    @property
    def total_macs(self) -> float:
        """MACs charged at E_MAC: the operations on analog inputs."""
        return sum(r.macs for r in self.rows if r.charged_as == "MAC")

    @property
    def total_acs(self) -> float:
        return sum(r.acs for r in self.rows if r.charged_as == "AC")

    @property
    def dense_macs(self) -> float:
        """Every MAC of the dense model, whatever its charge (zoo.complexity's total times T)."""
        return sum(r.macs for r in self.rows)

    @property
    def total_exact_acs(self) -> Optional[float]:
        """The exact event count's ACs (``exact=True``), else None."""
        spiking = [r for r in self.rows if r.charged_as == "AC"]
        if any(r.exact_acs is None for r in spiking):
            return None
        return sum(r.exact_acs for r in spiking)

    @property
    def total_mj(self) -> float:
        return sum(r.energy_pj for r in self.rows) / _PJ_PER_MJ

    def by_part(self) -> Dict[str, Dict[str, float]]:
        """``{part: {'macs', 'acs', 'dense_macs', 'mj'}}``, parts in execution order."""
        parts: Dict[str, Dict[str, float]] = {}
        for row in self.rows:
            totals = parts.setdefault(row.part, dict.fromkeys(("macs", "acs", "dense_macs", "mj"), 0.0))
            if row.charged_as == "MAC":
                totals["macs"] += row.macs
            else:
                totals["acs"] += row.acs
            totals["dense_macs"] += row.macs
            totals["mj"] += row.energy_pj / _PJ_PER_MJ
        return parts

    def to_dict(self) -> dict:
        return {"model": self.model, "images": self.images, "input_shape": list(self.input_shape), "T": self.T,
                "e_mac_pj": E_MAC_PJ, "e_ac_pj": E_AC_PJ, "total_macs": self.total_macs,
                "total_acs": self.total_acs, "dense_macs": self.dense_macs, "total_mj": self.total_mj,
                "total_exact_acs": self.total_exact_acs, "by_part": self.by_part(),
                "convention": self.convention, "rows": [r.to_dict() for r in self.rows]}

    def to_json(self, path: Union[str, Path, None] = None) -> str:
        """The report as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_csv(self, path: Union[str, Path]) -> None:
        """One line per row; the convention and the totals lead as ``#`` comment lines."""
        columns = ["name", "part", "kind", "charged_as", "op", "macs", "acs", "exact_acs", "events",
                   "input_elements", "rate", "energy_pj"]
        with open(path, "w", newline="") as f:
            for line in self._summary_lines() + [""] + self.convention.splitlines():
                f.write(f"# {line}".rstrip() + "\n")
            writer = csv.DictWriter(f, columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(r.to_dict() for r in self.rows)

    def _summary_lines(self) -> List[str]:
        shape = "x".join(map(str, self.input_shape))
        return [f"Energy of {self.model} per image ({self.images} image(s) of {shape}, T={self.T}): "
                f"{self.total_mj:.4g} mJ",
                f"MACs at {E_MAC_PJ} pJ: {_g(self.total_macs)} G; ACs at {E_AC_PJ} pJ: {_g(self.total_acs)} G; "
                f"dense MACs: {_g(self.dense_macs)} G"]

    def to_markdown(self, per_layer: bool = False) -> str:
        """Totals, the per-part table, the convention and optionally every row."""
        lines = [*self._summary_lines(), "", "| part | MACs (G) | ACs (G) | dense MACs (G) | energy (mJ) |",
                 "|---|---|---|---|---|"]
        for part, t in self.by_part().items():
            lines.append(f"| {part} | {_g(t['macs'])} | {_g(t['acs'])} | {_g(t['dense_macs'])} | {t['mj']:.4g} |")
        lines += [f"| **total** | {_g(self.total_macs)} | {_g(self.total_acs)} | {_g(self.dense_macs)} | "
                  f"{self.total_mj:.4g} |", "", "Convention:", "", "```", self.convention, "```"]
        if per_layer:
            lines += ["", "| layer | kind | charged as | op | MACs (G) | ACs (G) | rate | energy (mJ) |",
                      "|---|---|---|---|---|---|---|---|"]
            for r in self.rows:
                rate = "" if r.rate is None else f"{r.rate:.4f}"
                lines.append(f"| {r.name or '(model)'} | {r.kind} | {r.charged_as} | {r.op} | {_g(r.macs)} | "
                             f"{_g(r.acs)} | {rate} | {r.energy_pj / _PJ_PER_MJ:.4g} |")
        return "\n".join(lines)


def _g(count: float) -> str:
    return f"{count / 1e9:.4g}"


@dataclass
class _SpikeShare:
    """The part of a (module, kind) row whose operations had a spike operand."""

    macs: int = 0
    acs: float = 0.0
    events: int = 0
    elements: int = 0
    exact_acs: Optional[int] = 0


def _spike_charge(record: OpRecord) -> Optional[Tuple[float, int, int]]:
    """``(ACs, events, elements)`` of a call with a spike operand: its events x (MACs / its elements),
    the operand giving fewer ACs when both are spikes; None when no operand is spikes."""
    best = None
    for x in record.spike_operands:
        acs = record.macs * x.events / x.elements
        if best is None or acs < best[0]:
            best = (acs, x.events, x.elements)
    return best


def _rows(records: Sequence[OpRecord], images: int, exact: bool) -> List[EnergyRow]:
    shares: Dict[Key, _SpikeShare] = {}
    for record in records:
        charge = _spike_charge(record)
        if charge is None:
            continue
        share = shares.setdefault((record.name, record.kind), _SpikeShare())
        share.macs += record.macs
        share.acs += charge[0]
        share.events += charge[1]
        share.elements += charge[2]
        if exact:
            share.exact_acs += _exact_acs(record) if record.kind == "conv_linear" else charge[0]
    rows = []
    for dense_row in mac_rows(records):
        name, kind = key = (dense_row.name, dense_row.kind)
        share = shares.get(key)
        if share is not None:
            rows.append(EnergyRow(name, kind, "AC", dense_row.op, share.macs / images, share.acs / images,
                                  share.events / images, share.elements / images,
                                  share.exact_acs / images if exact else None))
        analog = dense_row.macs - (share.macs if share is not None else 0)
        if share is None or analog:
            rows.append(EnergyRow(name, kind, "MAC", dense_row.op, analog / images))
    return rows


def _exact_acs(record: OpRecord) -> int:
    run = record.event_run
    if run is None or not run.on_events:
        reason = "no event forward" if run is None else run.reason
        raise RuntimeError(f"{record.name!r} is fed by spikes here but ran dense in spike_driven_mode ({reason})")
    return run.acs


@torch.no_grad()
def estimate(model: nn.Module, images: torch.Tensor, *, T: Optional[int] = None, batch_size: int = 1,
             exact: bool = False, **forward_kwargs) -> EnergyReport:
    """Energy of one eval-mode forward per image of ``images`` ([N, ...], batch first) through ``model``.

    :param T: time steps to run with (None: the model's own ``T``); restored afterwards.
    :param batch_size: images per forward; neurons are reset before each.
    :param exact: also count exactly, on the binary-expanded model (``zoo.spike_driven``), the ACs of
        every synapse fed by spikes (``EnergyRow.exact_acs``; slower: D passes per such layer).
    :param forward_kwargs: passed to every forward, e.g. ``all_layers=True`` for all 7 predictions.

    Plain networks (no spiking neuron) may run on the ``meta`` device: then nothing is computed.
    The model's train/eval flags and ``T`` are restored and its neurons reset afterwards. Wrap the call
    in ``zoo.execution.using(model, product_order='qk_first')`` to count attention in the official order.
    """
    if images.dim() < 1 or images.shape[0] < 1:
        raise ValueError(f"images must be a batch [N, ...] with N >= 1, got shape {tuple(images.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    trace = Trace(model, events=True)
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(eval_mode_with_time_steps(model, T))
            stack.enter_context(using(model, mask_order="features_first", compile=False))
            time_steps = getattr(model, "T", None)
            if exact:
                stack.enter_context(spike_driven_mode(model, trace=trace))
            else:
                stack.enter_context(marking_spikes(model))
                stack.enter_context(trace)
            for batch in images.split(batch_size):
                functional.reset_net(model)
                model(batch, **forward_kwargs)
                trace.end_forward()
    finally:
        functional.reset_net(model)
    name = getattr(getattr(model, "pretrained_cfg", None), "name", "") or type(model).__name__
    return EnergyReport(name, images.shape[0], tuple(images.shape[1:]), time_steps,
                        _rows(trace.records, images.shape[0], exact))


def estimate_registered(name: str = "spike2former_ade20k", image_size: Optional[Tuple[int, int]] = None,
                        images: int = 1, seed: int = 0, pretrained: bool = False, **create_kwargs) -> EnergyReport:
    """Energy of a registered model on ``images`` random normal images of ``image_size`` (default: the
    config's crop size), with random weights (seeded) unless ``pretrained``.

    Random weights fire differently from trained ones: the figure is not the paper's.
    """
    torch.manual_seed(seed)
    model = zoo.create(name, pretrained=pretrained, **create_kwargs).eval()
    height, width = image_size or model.pretrained_cfg.crop_size
    return estimate(model, torch.randn(images, 3, height, width))


def main(argv: Optional[Sequence[str]] = None) -> None:
    """``python -m analysis.energy spike2former_ade20k --size 512 512 --per-layer``"""
    parser = argparse.ArgumentParser(description="Energy per image of a registered model (random weights and image).")
    parser.add_argument("name", nargs="?", default="spike2former_ade20k")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), help="default: the config's crop size")
    parser.add_argument("--images", type=int, default=1)
    parser.add_argument("--pretrained", action="store_true")
    parser.add_argument("--per-layer", action="store_true")
    args = parser.parse_args(argv)
    report = estimate_registered(args.name, tuple(args.size) if args.size else None, args.images,
                                 pretrained=args.pretrained)
    print(report.to_markdown(per_layer=args.per_layer))


if __name__ == "__main__":
    main()
