"""Firing-rate monitor and spike-degradation plot, against references computed here."""

import csv
from collections import OrderedDict
from dataclasses import fields

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.neuron import IFNode

import zoo
from analysis.degradation import group_bands, spike_degradation
from analysis.firing import FiringRateMonitor, LayerFiring, default_group, measure_firing
from neurons import NILIFNode
from zoo.registry import get_test_args
from zoo.spikes import spike_source_of

BACKBONE_GROUPS = ["backbone.stage1", "backbone.stage2", "backbone.stage3", "backbone.stage4"]


def tiny(name, **kwargs):
    torch.manual_seed(0)
    return zoo.create(name, **{**get_test_args(name), **kwargs}).eval()


class CountingNet(nn.Module):
    """Neurons whose counts follow from an integer input ``x`` [B, N] held for T steps.

    Without leak (beta = 1) and with a constant integer input, NI-LIF emits
    ``clip(x, 0, D)`` at every step (the surplus above D stays in H and keeps it
    saturated; negative inputs never fire); the binary IF neuron fires at every
    step where ``x >= 1``, and again when called a second time in the same forward
    (it resets to 0 after each spike; below threshold it only sinks). ``fold_time``
    feeds the T replicas as one step of a T*B batch, as the official mode does;
    each replica then fires the same.
    """

    def __init__(self, T, fold_time=False):
        super().__init__()
        self.T, self.fold_time = T, fold_time
        self.nilif = NILIFNode(D=4, beta=1.0, step_mode="m")              # outputs k / 4
        self.ilif = NILIFNode(D=2, beta=1.0, norm=1.0, step_mode="m")     # outputs k
        self.const = NILIFNode(D=4, beta=1.0, norm=8.0, step_mode="m")    # outputs k / 8
        self.binary = IFNode(step_mode="m")                               # outputs 0 / 1

    def forward(self, x):
        functional.reset_net(self)
        seq = x.unsqueeze(0).expand(self.T, *x.shape)
        if self.fold_time:
            seq = seq.reshape(1, -1, *x.shape[1:])
        return [self.nilif(seq), self.ilif(seq), self.const(seq), self.binary(seq), self.binary(seq)]


def expected_counts(x, T):
    """Per-layer (sum of counts, nonzero outputs, elements) for CountingNet, from the input alone."""
    fires = (x >= 1).float()
    per_step = {"nilif": x.clamp(0, 4), "ilif": x.clamp(0, 2), "const": x.clamp(0, 4),
                "binary": torch.cat([fires, fires])}  # called twice
    return {name: (T * int(k.sum()), T * int((k > 0).sum()), T * k.numel()) for name, k in per_step.items()}


def integer_inputs(*shapes):
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(-2, 7, shape, generator=gen).float() for shape in shapes]


@pytest.mark.parametrize("fold_time", [False, True])
def test_known_counts_pooled_over_batches_of_different_sizes(fold_time):
    T = 3
    net = CountingNet(T, fold_time)
    inputs = integer_inputs((2, 6), (3, 10))
    with FiringRateMonitor(net) as monitor:
        for x in inputs:
            net(x)
    report = monitor.report()
    assert [row.name for row in report.layers] == ["nilif", "ilif", "const", "binary"]
    assert [row.depth for row in report.layers] == [0, 1, 2, 3]
    assert report.images == 5
    totals = [expected_counts(x, T) for x in inputs]
    for row in report.layers:
        count_sum = sum(t[row.name][0] for t in totals)
        nonzero = sum(t[row.name][1] for t in totals)
        elements = sum(t[row.name][2] for t in totals)
        assert (row.count_sum, row.nonzero, row.elements) == (count_sum, nonzero, elements)
        assert row.mean_count == pytest.approx(count_sum / elements, rel=1e-12)
        assert row.nonzero_fraction == pytest.approx(nonzero / elements, rel=1e-12)
        # neurons per image per step: (2*6 + 3*10) elements per step over 5 images, per call
        calls = 2 if row.name == "binary" else 1
        assert row.neurons == pytest.approx(calls * (2 * 6 + 3 * 10) / 5, rel=1e-12)
        assert row.image_steps == 5 * T and row.calls == 2 * calls
        assert row.group == row.name  # top-level modules form their own groups
    units = {row.name: (row.unit, row.D) for row in report.layers}
    assert units == {"nilif": (0.25, 4), "ilif": (1.0, 2), "const": (0.125, 4), "binary": (1.0, 1)}
    # pooling weighs by elements: the average of the two forwards' rates would differ
    per_forward = [t["nilif"][0] / t["nilif"][2] for t in totals]
    assert report.layer("nilif").mean_count != pytest.approx(sum(per_forward) / 2)


def test_csv_round_trip_and_group_rows(tmp_path):
    net = CountingNet(2)
    with FiringRateMonitor(net, group_of=lambda name: "spiking" if name != "binary" else "binary") as monitor:
        for x in integer_inputs((2, 5)):
            net(x)
    report = monitor.report()
    with report.to_csv(tmp_path / "layers.csv").open() as f:
        read = list(csv.DictReader(f))
    types = {f.name: f.type for f in fields(LayerFiring)}
    cast = {"int": int, "float": float, "str": str}
    assert [{k: cast[types[k]](v) for k, v in row.items()} for row in read] == report.rows()

    layers = report.layers
    spiking = [r for r in layers if r.name != "binary"]
    with report.groups_to_csv(tmp_path / "groups.csv").open() as f:
        groups = {row["group"]: row for row in csv.DictReader(f)}
    assert list(groups) == ["spiking", "binary"]
    assert int(groups["spiking"]["layers"]) == 3
    assert int(groups["spiking"]["elements"]) == sum(r.elements for r in spiking)
    assert float(groups["spiking"]["mean_count"]) == pytest.approx(
        sum(r.count_sum for r in spiking) / sum(r.elements for r in spiking), rel=1e-12)
    assert float(groups["spiking"]["neurons"]) == pytest.approx(sum(r.neurons for r in spiking))


def reference_firing(model, batches):
    """Independent totals: every spiking neuron's raw outputs kept by our own hooks, summed in a loop."""
    outputs = OrderedDict()
    handles = []
    for name, module in model.named_modules():
        if spike_source_of(module) is not None:
            def keep(module, inputs, output, name=name):
                outputs.setdefault(name, []).append(output.detach().clone())
            handles.append(module.register_forward_hook(keep))
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        for images in batches:
            model(images)
    for handle in handles:
        handle.remove()
    image_steps = sum(images.shape[0] for images in batches) * model.T
    reference = OrderedDict()
    for name, outs in outputs.items():
        unit, D = spike_source_of(model.get_submodule(name))
        count_sum = nonzero = elements = 0
        for out in outs:
            counts = out / unit
            assert torch.allclose(counts, counts.round(), atol=1e-4) and counts.min() >= 0 and counts.max() <= D
            count_sum += int(counts.round().sum())
            nonzero += int((out != 0).sum())
            elements += out.numel()
        reference[name] = dict(count_sum=count_sum, nonzero=nonzero, elements=elements,
                               neurons=elements / image_steps)
    return monitor.report(), reference


@pytest.mark.parametrize("name, groups", [
    ("spike2former_camvid", BACKBONE_GROUPS + ["sdte", "fpn", "decoder.layer0", "decoder.layer1", "sdme"]),
    ("spikefpn_camvid", BACKBONE_GROUPS + ["neck", "head"]),
])
def test_registered_models_against_independent_hooks(name, groups):
    model = tiny(name)
    batches = [torch.randn(2, 3, 64, 64), torch.randn(1, 3, 64, 80)]
    report, reference = reference_firing(model, batches)
    neurons = {n for n, m in model.named_modules() if spike_source_of(m) is not None}
    assert [row.name for row in report.layers] == list(reference)  # execution order
    assert set(reference) == neurons
    assert report.images == 3
    for row in report.layers:
        ref = reference[row.name]
        assert (row.count_sum, row.nonzero, row.elements) == (ref["count_sum"], ref["nonzero"], ref["elements"])
        assert row.mean_count == pytest.approx(ref["count_sum"] / ref["elements"], rel=1e-12)
        assert row.neurons == pytest.approx(ref["neurons"], rel=1e-12)
        assert row.group == default_group(row.name)
    assert sum(row.count_sum for row in report.layers) > 0
    # every layer is in exactly one group, each group one contiguous run of depths
    assert [g.group for g in report.groups] == groups
    assert [band[0] for band in group_bands(report)] == groups
    assert sum(g.layers for g in report.groups) == len(report.layers)
    for g in report.groups:
        members = [r for r in report.layers if r.group == g.group]
        assert (g.first_depth, g.last_depth) == (members[0].depth, members[-1].depth)
        assert g.mean_count == pytest.approx(sum(r.count_sum for r in members) / sum(r.elements for r in members))


@pytest.mark.parametrize("kwargs", [dict(T=2, official=True), dict(T=2)])
def test_time_layouts_keep_the_per_step_definitions(kwargs):
    """Official mode folds T into the batch; neurons per image per step must not see the layout."""
    images = [torch.randn(1, 3, 64, 64)]
    base, _ = reference_firing(tiny("spike2former_camvid"), images)
    report, reference = reference_firing(tiny("spike2former_camvid", **kwargs), images)
    assert [r.neurons for r in report.layers] == pytest.approx([r.neurons for r in base.layers], rel=1e-12)
    for row in report.layers:
        assert row.image_steps == 2
        assert row.mean_count == pytest.approx(reference[row.name]["count_sum"] / reference[row.name]["elements"])


def test_measure_firing_on_dicts_restores_modes_and_disables_grad():
    model = tiny("spikefpn_camvid").train()
    model.backbone.stem.eval()
    seen = []
    model.register_forward_hook(lambda m, i, o: seen.append((m.training, torch.is_grad_enabled())))
    images = torch.randn(3, 3, 64, 64)
    data = [{"image": images[0]}, {"image": [images[1], images[2]]}]
    report = measure_firing(model, data, progress=False)
    assert seen == [(False, False)] * 3
    assert model.training and not model.backbone.stem.training and model.backbone.stage1a.training
    with FiringRateMonitor(model) as monitor, torch.no_grad():
        model.eval()(images)
    assert report.images == 3
    assert [(r.count_sum, r.elements) for r in report.layers] == \
        [(r.count_sum, r.elements) for r in monitor.report().layers]


def test_spike_degradation_plots_the_monitor_numbers(tmp_path):
    models = {"ME-Shortcut": tiny("spike2former_camvid"),
              "no ME-Shortcut": tiny("spike2former_camvid", me_shortcut=False)}
    images = [torch.randn(1, 3, 64, 64)]
    plot, reports = spike_degradation(models, images, tmp_path / "degradation", progress=False)
    for label, report in reports.items():
        assert plot.rates[label] == [row.mean_count for row in report.layers]
        assert plot.depths[label] == list(range(len(report.layers)))
        assert plot.names[label] == [row.name for row in report.layers]
        assert plot.marked[label] == {n: (report.layer(n).depth, report.layer(n).mean_count)
                                      for n in ("sdme.query_spike", "sdme.embed_spike")}
    bands = plot.bands
    assert bands[0][1] == 0 and bands[-1][2] == len(reports["ME-Shortcut"].layers) - 1
    assert all(b[1] == a[2] + 1 for a, b in zip(bands, bands[1:]))
    png, svg = plot.paths
    assert png.read_bytes().startswith(b"\x89PNG") and "<svg" in svg.read_text()
    again, _ = spike_degradation(models, images, tmp_path / "again", progress=False)
    for first, second in zip(plot.paths, again.paths):   # the same figure, the same bytes: reports diff cleanly
        assert first.read_bytes() == second.read_bytes(), first.name
