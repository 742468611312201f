"""neurons.build: each ablation neuron against an independent definition."""
import pytest
import torch
from spikingjelly.activation_based import neuron as sj_neuron, surrogate

import neurons
from neurons import NILIFNode


def _input(T=4, seed=0):
    return torch.randn(T, 3, 11, generator=torch.Generator().manual_seed(seed)) * 3 + 1


def test_nilif_defaults_follow_the_paper():
    node = neurons.build("nilif")
    assert isinstance(node, NILIFNode)
    assert (node.D, node.beta, node.v_threshold, node.detach_reset, node.backend) == (4, 0.25, 1.0, True, "torch")


def test_ilif_is_spikingjelly_ilif_integer_output():
    x = _input()
    ours = neurons.build("ilif", step_mode="m")
    sj = sj_neuron.ILIFNode(tau=4.0 / 3.0, surrogate_function=surrogate.MultiLevelSpikeCount(4),
                            detach_reset=True, step_mode="m")
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, out_sj = ours(xa), sj(xb)
    out.sum().backward()
    out_sj.sum().backward()
    assert torch.equal(out, out_sj) and out.max() == 4
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-6)


def test_nilif_const_divides_the_count_by_a_constant():
    x = _input()
    counts = neurons.build("ilif", step_mode="m")(x)
    const = neurons.build("nilif_const", step_mode="m")
    assert torch.equal(const(x), counts / 8)
    xg = torch.tensor([[1.2, 9.0]], requires_grad=True)
    neurons.build("nilif_const", step_mode="m")(xg).sum().backward()
    assert xg.grad.tolist() == [[1.0 / 8, 0.0]]
    with pytest.raises(ValueError, match="norm == D"):
        neurons.build("nilif_const", D=8, norm=8)


def test_official_neuron_equals_the_released_q_ifnode():
    """Q_IFNode(Quant()): v += x; C = round(clamp(v, 0, 8)); v -= C; out = C / 8; state kept until reset."""
    xs = [torch.randn(5, 7, generator=torch.Generator().manual_seed(s)) * 4 for s in range(3)]
    ref_in = [x.clone().requires_grad_(True) for x in xs]
    v, ref_out = 0.0, []
    for x in ref_in:
        v = v + x
        count = torch.clamp(torch.round(v), 0, 8)
        window = ((v >= 0) & (v <= 8)).float()
        count = count.detach() + (v - v.detach()) * window  # straight-through, reset not detached
        ref_out.append(count / 8)
        v = v - count
    sum(o.sum() for o in ref_out).backward()

    node = neurons.build("official")
    ours_in = [x.clone().requires_grad_(True) for x in xs]
    outs = [node(x) for x in ours_in]
    sum(o.sum() for o in outs).backward()
    for a, b in zip(outs, ref_out):
        assert torch.equal(a, b)
    for a, b in zip(ours_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="fixes D"):
        neurons.build("official", D=4)


def test_lif_maps_beta_to_tau():
    node = neurons.build("lif", beta=0.5, step_mode="m")
    assert isinstance(node, sj_neuron.LIFNode) and node.tau == 2.0 and node.detach_reset
    out = node(_input())
    assert set(torch.unique(out).tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="beta"):
        neurons.build("lif", beta=1.0)


def test_unknown_kind_lists_the_known_ones():
    with pytest.raises(ValueError, match="nilif_const"):
        neurons.build("izhikevich")
