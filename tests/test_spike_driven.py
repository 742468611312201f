"""Spike-driven expansion (eqs. 19-21) against the integer (normalised count) path."""
import pytest
import torch
import torch.nn as nn

from neurons import NILIFNode
from neurons.spike_driven import SpikeDrivenSynapse, fold_batchnorm, from_events, to_events


def spikes(shape, D, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * D / 2 + D / 4
    return NILIFNode(D=D, step_mode="m")(x)


def assert_close_rel(actual, expected, rel=1e-5):
    scale = expected.abs().max().clamp_min(1e-12)
    assert (actual - expected).abs().max() <= rel * scale


def test_thermometer_code_by_hand():
    s = torch.tensor([[0.0, 0.25, 0.5, 1.0]])
    events = to_events(s, 4)
    assert events.dtype == torch.bool and events.shape == (4, 4)
    # column j holds count j's events: slot d fires when count > d
    assert events.int().T.tolist() == [[0, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("D", [1, 2, 4, 8])
def test_round_trip_and_event_count(D):
    s = spikes((3, 2, 5, 6), D, seed=D)
    events = to_events(s, D, dtype=torch.uint8)
    assert events.shape == (3 * D, 2, 5, 6) and events.max() <= 1
    assert torch.equal(from_events(events, D), s)
    assert int(events.sum()) == int(torch.round(s * D).sum())
    assert int(events.sum()) > 0


def test_rejects_values_that_are_not_counts():
    with pytest.raises(ValueError, match="normalised count"):
        to_events(torch.tensor([[0.3]]), 4)
    with pytest.raises(ValueError, match="normalised count"):
        to_events(torch.tensor([[1.25]]), 4)
    with pytest.raises(ValueError, match="multiple of D"):
        from_events(torch.ones(5, 2), 4)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("D", [2, 4, 8])
def test_conv2d_on_events_equals_integer_path(D, bias):
    torch.manual_seed(D)
    conv = nn.Conv2d(6, 5, 3, padding=1, bias=bias)
    s = spikes((2, 3, 6, 9, 9), D)  # [T, B, C, H, W]
    expected = conv(s.flatten(0, 1)).reshape(2, 3, 5, 9, 9)
    got = SpikeDrivenSynapse(conv, D)(to_events(s, D))
    assert got.shape == expected.shape
    assert_close_rel(got, expected)


@pytest.mark.parametrize("bias", [True, False])
def test_conv1d_and_linear_on_events(bias):
    torch.manual_seed(0)
    D = 4
    conv1d = nn.Conv1d(8, 4, 1, bias=bias)
    s = spikes((2, 3, 8, 10), D)
    expected = conv1d(s.flatten(0, 1)).reshape(2, 3, 4, 10)
    assert_close_rel(SpikeDrivenSynapse(conv1d, D)(to_events(s, D)), expected)

    linear = nn.Linear(10, 7, bias=bias)
    assert_close_rel(SpikeDrivenSynapse(linear, D)(to_events(s, D)), linear(s))


def test_batchnorm_folded_before_expansion():
    torch.manual_seed(1)
    D = 4
    conv, bn = nn.Conv2d(4, 6, 3, padding=1), nn.BatchNorm2d(6)
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    bn.weight.data.uniform_(0.5, 1.5)
    bn.bias.data.uniform_(-0.5, 0.5)
    bn.eval()
    s = spikes((2, 2, 4, 7, 7), D)
    expected = bn(conv(s.flatten(0, 1))).reshape(2, 2, 6, 7, 7)
    folded = fold_batchnorm(conv, bn)
    assert_close_rel(folded(s.flatten(0, 1)).reshape(expected.shape), expected)
    assert_close_rel(SpikeDrivenSynapse(folded, D)(to_events(s, D)), expected)
    assert conv.weight.data_ptr() != folded.weight.data_ptr()  # the original layer is untouched


def test_weight_scale_is_one_over_D_not_D():
    """The paper's 'W x D' read literally would scale the output by D**2."""
    D = 4
    linear = nn.Linear(3, 2, bias=False)
    s = torch.full((1, 1, 3), 0.75)
    events = to_events(s, D)
    per_event = nn.functional.linear(events.float(), linear.weight).sum(0)  # W per event
    assert_close_rel(per_event / D, linear(s)[0])
    assert_close_rel(SpikeDrivenSynapse(linear, D)(events), linear(s))
