"""Spikes saved for backward as 1-byte counts: identical gradients, only spikes compacted."""
import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from neurons import NILIFNode, build
from neurons.saved_spikes import compact_saved_spikes
from conftest import lively, segmentors, tiny


class SpikeThenLinear(nn.Module):
    def __init__(self, neuron: nn.Module, scale_in_place: bool = False):
        super().__init__()
        self.fc1, self.neuron, self.fc2 = nn.Linear(3, 5), neuron, nn.Linear(5, 2)
        self.scale_in_place = scale_in_place

    def forward(self, x):
        s = self.neuron(self.fc1(x))
        if self.scale_in_place:
            s.mul_(2.0)  # no longer counts / norm: must be saved as it is
        return self.fc2(s)


def gradients(model, x, compact: bool):
    model.zero_grad(set_to_none=True)
    functional.reset_net(model)
    x = x.clone().requires_grad_(True)
    if compact:
        with compact_saved_spikes(model) as stats:
            out = model(x)
    else:
        stats, out = None, model(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [x.grad] + [p.grad for p in model.parameters()], stats


@pytest.mark.parametrize("neuron", [NILIFNode(D=4), NILIFNode(D=3), NILIFNode(D=4, norm=1.0), build("lif")],
                         ids=["nilif", "nilif_D3", "ilif", "lif"])
def test_hand_network_compacts_exactly_the_spike_input(neuron):
    torch.manual_seed(0)
    model = SpikeThenLinear(neuron)
    with torch.no_grad():
        model.fc1.weight.mul_(4)
    x = torch.randn(4, 3)
    plain, _ = gradients(model, x, compact=False)
    compact, stats = gradients(model, x, compact=True)
    assert stats.tensors == 1 and stats.original_bytes == 4 * 5 * 4 and stats.stored_bytes == 4 * 5
    assert plain[0].abs().sum() > 0
    for a, b in zip(plain, compact):
        assert torch.equal(a, b)


def test_counts_are_converted_chunk_by_chunk(monkeypatch):
    """Spike tensors larger than the conversion buffer (here 7 elements) are converted in pieces."""
    import neurons.saved_spikes as saved_spikes
    monkeypatch.setattr(saved_spikes, "_CHUNK", 7)
    torch.manual_seed(0)
    model = SpikeThenLinear(NILIFNode(D=3))
    with torch.no_grad():
        model.fc1.weight.mul_(4)
    x = torch.randn(6, 3)  # 30 spikes: 4 full chunks and a partial one
    plain, _ = gradients(model, x, compact=False)
    compact, stats = gradients(model, x, compact=True)
    assert stats.tensors == 1 and stats.stored_bytes == 30
    for a, b in zip(plain, compact):
        assert torch.equal(a, b)


def test_spikes_modified_in_place_are_not_compacted():
    torch.manual_seed(1)
    model = SpikeThenLinear(NILIFNode(D=4), scale_in_place=True)
    x = torch.randn(4, 3) * 4
    plain, _ = gradients(model, x, compact=False)
    compact, stats = gradients(model, x, compact=True)
    assert stats.tensors == 0
    for a, b in zip(plain, compact):
        assert torch.equal(a, b)


VARIANTS = {"T1": dict(T=1), "T2": dict(T=2), "official": dict(official=True, T=2)}
MODEL_CASES = [pytest.param(name, variant, id=f"{name}-{key}") for name in segmentors()
               for key, variant in VARIANTS.items()
               if not (variant.get("official") and name.startswith("spikefpn"))]  # SpikeFPN: no official layout


@pytest.mark.parametrize("name, variant", MODEL_CASES)
def test_every_model_trains_with_identical_gradients(name, variant):
    torch.manual_seed(2)
    images = torch.randn(2, 3, 64, 64)
    model = lively(tiny(name, **variant), images).train()
    reference = copy.deepcopy(model)
    reference.set_execution(compact_saved_spikes=False)

    def step(m):
        torch.manual_seed(3)  # dropout draws the same masks
        out = m(images)
        parts = [out["pred_logits"], out["pred_masks"]] if isinstance(out, dict) else [out]
        sum((p * torch.randn_like(p)).sum() for p in parts).backward()
        return {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    expected, actual = step(reference), step(model)
    assert expected.keys() == actual.keys()
    assert sum(float(g.abs().sum()) for g in expected.values()) > 0
    for key in expected:
        assert torch.equal(actual[key], expected[key]), key


def test_models_compact_in_training_only(monkeypatch):
    import zoo.base
    model = tiny("spike2former_camvid")
    calls = []
    original = zoo.base.compact_saved_spikes

    def spy(*args):
        calls.append(model.training)
        return original(*args)
    monkeypatch.setattr(zoo.base, "compact_saved_spikes", spy)
    images = torch.randn(1, 3, 64, 64)
    model.train()(images)
    with torch.no_grad():
        model(images)
    model.eval()(images)
    assert calls == [True]


class SpikeSepConvBN(nn.Module):
    """neuron -> depth-wise 3x3 -> 1x1 -> BN -> neuron -> 1x1: the 1x1 saves the depth-wise output and
    the BN the first 1x1's output, both outputs of cheap layers (9 and 4 MACs per element)."""

    def __init__(self, channels: int = 4):
        super().__init__()
        self.spike1, self.spike2 = NILIFNode(D=4), NILIFNode(D=4)
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.pw = nn.Conv2d(channels, channels, 1)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Conv2d(channels, 3, 1)

    def forward(self, x):
        return self.head(self.spike2(self.bn(self.pw(self.dw(self.spike1(x))))))


def conv_bn_gradients(model, x, recompute: int, autocast: bool = False):
    model.zero_grad(set_to_none=True)
    functional.reset_net(model)
    with compact_saved_spikes(model, recompute) as stats, torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        out = model(x * 3)
    (out.float() * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return [p.grad for p in model.parameters()], stats


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
def test_cheap_layer_outputs_are_recomputed_with_identical_gradients(autocast):
    torch.manual_seed(4)
    model = SpikeSepConvBN().train()
    x = torch.randn(2, 4, 8, 8)
    kept, kept_stats = conv_bn_gradients(model, x, 0, autocast)
    recomputed, stats = conv_bn_gradients(model, x, 9, autocast)
    assert kept_stats.recomputed == 0 and stats.recomputed == 2
    assert stats.recomputed_bytes == 2 * (2 * 4 * 8 * 8) * (2 if autocast else 4)  # bf16 under autocast
    assert all(float(g.abs().sum()) > 0 for g in kept)
    for a, b in zip(kept, recomputed):
        assert torch.equal(a, b)
    _, too_expensive = conv_bn_gradients(model, x, 3, autocast)
    assert too_expensive.recomputed == 0


def test_recomputing_after_the_weight_changed_fails_loudly():
    model = SpikeSepConvBN().train()
    with compact_saved_spikes(model, 64):
        out = model(torch.randn(2, 4, 8, 8) * 3)
    with torch.no_grad():
        model.dw.weight.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place"):
        out.sum().backward()
