"""zoo.spike_driven on whole models: binary events give the integer model's output, counts are exact.

References are independent of the machinery under test: the integer model itself
(no hooks of ours), its layers' inputs captured by plain forward pre-hooks, and a
unit table written here from the architecture (alpha / norm in the SDME, 1 / norm
elsewhere), not read from the tracked marks.

Weights and biases are put on a dyadic grid (multiples of 2^-8): every
accumulation is then exact in float32 whatever the summation order, so the
event path and the dense path agree bit for bit and a neuron sitting on a
rounding boundary cannot flip and amplify a 1e-7 difference into a different
segmentation. ``test_generic_weights_layer_by_layer`` checks the same layers with
arbitrary float weights, one layer at a time.
"""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import conftest
import zoo
from zoo.execution import using
import zoo.spike_driven as sd
import zoo.spikes
from neurons import NILIFNode
from zoo.spike_driven import spike_driven_forward, spike_driven_mode
from zoo.spikes import SpikeTensor
from conftest import lively, tiny

SEGMENTORS = conftest.segmentors()
SYNAPSES = (nn.Conv1d, nn.Conv2d, nn.Linear)
# layers fed by another linear layer with no neuron between (plus the stem, fed by the image)
DENSE_SUFFIXES = ("stem.conv", "sepconv.pw2", "repconv.dw", "repconv.pw_out")


# tiny tensors: one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def run(model, images):
    return model(images, all_layers=True) if isinstance(model, zoo.spike2former.Spike2Former) else model(images)


def outputs(out):
    return [out["pred_logits"], out["pred_masks"]] if isinstance(out, dict) else [out]


def assert_close_rel(actual, expected, rel=1e-4):
    scale = expected.abs().max().clamp_min(1e-12)
    err = float((actual - expected).abs().max() / scale)
    assert err <= rel, f"relative error {err:.3g}"


def expected_unit(model, name):
    """The value of one count at the input of layer ``name``, from the architecture."""
    node = next(m for m in model.modules() if isinstance(m, NILIFNode))
    norm = float(node.D) if node.norm is None else float(node.norm)
    alpha = model.sdme.alpha if name.startswith("sdme.") else 1.0
    return alpha / norm, node.D


def as_counts(x, unit, D):
    """Integer counts of ``x`` in units of ``unit``, or None if ``x`` is not such counts."""
    k = torch.round(x.double() / unit)
    ok = torch.allclose(k * unit, x.double(), rtol=1e-6, atol=1e-7) and bool(((k >= 0) & (k <= D)).all())
    return k if ok else None


def reference_acs(layer, counts):
    """Synaptic accumulations: each count times its targets, by a conv/linear with all-one weights."""
    ones = torch.ones_like(layer.weight, dtype=torch.float64)
    if isinstance(layer, nn.Linear):
        return int(F.linear(counts, ones).sum())
    conv = F.conv1d if isinstance(layer, nn.Conv1d) else F.conv2d
    return int(conv(counts, ones, None, layer.stride, layer.padding, layer.dilation, layer.groups).sum())


CASES = [(name, {"T": T}) for name in SEGMENTORS for T in (1, 2)] + [
    ("spike2former_voc2012", {"neuron": "ilif"}),
    ("spikefpn_camvid", {"neuron": "ilif", "T": 2}),
    ("spike2former_ade20k", {"D": 2, "T": 2}),
    ("spikefpn_voc2012", {"D": 2}),
    ("spike2former_ade20k", {"official": True, "T": 2}),
    ("spike2former_ade20k", {"spike_query": True, "multi_scale_queries": True, "shortcut_conv": False}),
]


@pytest.mark.parametrize("name,kwargs", CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_spike_driven_model_equals_integer_model(name, kwargs):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 64)
    model = lively(tiny(name, **kwargs), images)

    # the integer model, with every neuron output and every layer input captured by plain hooks
    spikes, inputs = [], {}
    hooks = [m.register_forward_hook(lambda m, i, o: spikes.append(o))
             for m in model.modules() if isinstance(m, NILIFNode)]
    hooks += [m.register_forward_pre_hook(lambda m, i, n=n: inputs.setdefault(n, []).append(i[0].detach()))
              for n, m in model.named_modules() if isinstance(m, SYNAPSES)]
    with torch.no_grad(), using(model, mask_order="features_first"):  # every layer, as spike_driven_mode runs them
        expected = run(model, images)
    for h in hooks:
        h.remove()
    fired = sum(int((s > 0).sum()) for s in spikes) / sum(s.numel() for s in spikes)
    active = sum(bool((s > 0).any()) for s in spikes) / len(spikes)
    assert fired > 0.3 and active > 0.9, (fired, active)  # else the comparison proves little

    with torch.no_grad(), zoo.spike_driven_mode(model) as stats:
        got = run(model, images)
    for a, b in zip(outputs(got), outputs(expected)):
        assert type(a) is torch.Tensor and a.shape == b.shape
        assert_close_rel(a, b)

    layers = dict(model.named_modules())
    assert {r.name for r in stats.rows} == set(inputs)
    assert stats.row("backbone.stem.conv").kind == "dense"
    for row in stats.rows:
        layer, xs = layers[row.name], inputs[row.name]
        assert row.calls == len(xs)
        outs = [layer(x) for x in xs]
        assert row.macs == sum(o.numel() for o in outs) * layer.weight[0].numel()
        if row.kind == "dense":
            assert row.name.endswith(DENSE_SUFFIXES), row
            assert row.events is None and row.acs is None
            assert all(as_counts(x, *expected_unit(model, row.name)) is None for x in xs), row.name
            continue
        assert not row.name.endswith(DENSE_SUFFIXES), row
        unit, D = expected_unit(model, row.name)
        assert row.unit == pytest.approx(unit) and row.D == D, row
        counts = [as_counts(x, unit, D) for x in xs]
        assert all(c is not None for c in counts), row.name
        assert row.events == sum(int(c.sum()) for c in counts)
        assert row.acs == sum(reference_acs(layer, c) for c in counts)
    spike = stats.spike_rows()
    assert len(spike) > 2 * len(stats.dense_rows())
    assert sum(r.events for r in spike) > 0.1 * sum(r.input_elements for r in spike)


def test_generic_weights_layer_by_layer():
    """Arbitrary float weights: every spike-driven layer matches its dense self on the same input."""
    torch.manual_seed(1)
    images = torch.randn(1, 3, 64, 64)
    model = lively(tiny("spike2former_ade20k", T=2), images, seed=1, grid=None)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SYNAPSES)}
    checked = []

    def compare(name):
        def hook(module, args, out):
            x = args[0]
            if isinstance(x, SpikeTensor):
                dense = type(module).forward(module, x.plain())
                assert_close_rel(out, dense, rel=1e-5)
                checked.append(name)
        return hook

    hooks = [m.register_forward_hook(compare(n)) for n, m in layers.items()]
    with torch.no_grad(), spike_driven_mode(model) as stats:
        run(model, images)
    for h in hooks:
        h.remove()
    assert sorted(checked) == sorted(r.name for r in stats.spike_rows()) and len(checked) > 50


def test_wrong_event_weight_breaks_equality(monkeypatch):
    """The paper's "W x D" read literally (instead of W / D) must be caught."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 64)
    model = lively(tiny("spikefpn_camvid"), images)
    with torch.no_grad():
        expected = model(images)
    monkeypatch.setattr(sd, "_event_weight", lambda layer, unit, D: layer.weight * D)
    got, _ = spike_driven_forward(model, images)
    assert float((got - expected).abs().max() / expected.abs().max()) > 0.1


def test_wrong_unit_is_rejected(monkeypatch):
    """A neuron declared with the wrong unit gives inputs that are not counts: an error, not a guess."""
    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 64)
    model = lively(tiny("spike2former_camvid"), images)
    monkeypatch.setitem(zoo.spikes._SPIKE_SOURCES, NILIFNode, lambda node: (2.0 / node.D, node.D))
    with pytest.raises(ValueError, match="not k\\*unit"):
        spike_driven_forward(model, images)
    assert "forward" not in model.backbone.stem.conv.__dict__  # restored after the error


def test_marks_follow_layout_and_alpha_only():
    s = SpikeTensor.mark(torch.tensor([[0.0, 0.25], [0.5, 1.0]]), 0.25, 4, "sn")
    for y in (s.flatten(), s.t(), s.reshape(4, 1).transpose(0, 1), s[1], s.split(1)[0], torch.cat([s, s])):
        assert isinstance(y, SpikeTensor) and (y.unit, y.D, y.source) == (0.25, 4, "sn")
    scaled = 4 * s
    assert isinstance(scaled, SpikeTensor) and scaled.unit == 1.0 and torch.equal(scaled.plain(), 4 * s.plain())
    assert (s / 2).unit == 0.125
    assert F.dropout2d(s[None, :, :, None], 0.5, training=False).unit == 0.25
    for y in (s + s, s * s, s + 1, torch.sigmoid(s), 2 / s, F.dropout2d(s[None, :, :, None], 0.5, True),
              torch.cat([s, SpikeTensor.mark(s.plain(), 0.5, 4, "other")]), s * torch.tensor(4.0)):
        assert type(y) is torch.Tensor
    t = s.clone()
    t.mul_(3)
    assert t.unit is None


def test_unrecognised_spikes_stay_dense_and_are_reported():
    class Quantiser(nn.Module):  # spikes, but not a declared spike source
        def forward(self, x):
            return torch.clamp(torch.round(x), 0, 4) / 4

    net = nn.Sequential(NILIFNode(step_mode="m"), nn.Linear(6, 3), Quantiser(), nn.Linear(3, 2)).eval()
    x = torch.rand(2, 5, 6) * 4
    with torch.no_grad():
        expected = net(x)
        out, stats = spike_driven_forward(net, x)
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-6)
    assert [(r.name, r.kind) for r in stats.rows] == [("1", "spike"), ("3", "dense")]
    assert stats.row("1").source == "0" and stats.row("3").reason == "input is not spikes"
    assert stats.totals()["dense_macs"] == 2 * 5 * 2 * 3
    assert all("forward" not in m.__dict__ for m in net) and not net[0]._forward_hooks


def test_one_activation_at_a_time():
    net = nn.Sequential(NILIFNode(step_mode="m"), nn.Linear(4, 2))
    with spike_driven_mode(net):
        with pytest.raises(RuntimeError, match="already active"):
            with spike_driven_mode(net):
                pass
        with pytest.raises(RuntimeError, match="instance-level forward"):
            with spike_driven_mode(net[1]):
                pass
        assert "forward" in net[1].__dict__  # the outer activation is left intact
    assert "forward" not in net[1].__dict__
