"""NILIFNode against plain-PyTorch loops of eqs. 16-18 and against SpikingJelly."""
import itertools

import pytest
import torch
from spikingjelly.activation_based import functional, monitor, neuron as sj_neuron, surrogate

import neurons
from neurons import NILIFNode


class _WindowSTE(torch.autograd.Function):
    """clip(round(y), 0, D) with gradient 1 on lo <= y <= hi, written independently of neurons/."""

    @staticmethod
    def forward(ctx, y, D, lo, hi):
        ctx.save_for_backward(y)
        ctx.lo, ctx.hi = lo, hi
        return torch.clamp(torch.round(y), 0, D)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * ((y >= ctx.lo) & (y <= ctx.hi)).to(g.dtype), None, None, None


def reference_loop(x_seq, D, beta, detach_reset, norm=None, v_threshold=1.0, window=None, v0=None):
    """Eqs. 16-18 step by step: returns (s_seq, h_seq)."""
    norm = D if norm is None else norm
    lo, hi = (0.0, float(D)) if window is None else window
    h = torch.zeros_like(x_seq[0]) if v0 is None else v0
    s_steps, h_steps = [], []
    for x in x_seq:
        u = h + x
        count = _WindowSTE.apply(u / v_threshold, D, lo, hi)
        s_steps.append(count / norm)
        reset = count.detach() if detach_reset else count
        h = beta * (u - reset * v_threshold)
        h_steps.append(h)
    return torch.stack(s_steps), torch.stack(h_steps)


def make_input(T, shape=(3, 37), D=4, seed=0, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, *shape, generator=gen) * (D / 1.5) + D / 3
    return x.to(dtype)


@pytest.mark.parametrize("D,T,beta,detach_reset", list(itertools.product(
    [1, 2, 4, 8], [1, 2, 4], [0.25, 0.5, 1.0], [True, False])))
def test_matches_reference_loop(D, T, beta, detach_reset):
    x = make_input(T, D=D, seed=D * 100 + T)
    x_ref = x.clone().requires_grad_(True)
    s_ref, h_ref = reference_loop(x_ref, D, beta, detach_reset)
    grad_out = torch.randn(s_ref.shape, generator=torch.Generator().manual_seed(1))
    s_ref.backward(grad_out)

    node = NILIFNode(D=D, beta=beta, detach_reset=detach_reset, step_mode="m", store_v_seq=True)
    x_ours = x.clone().requires_grad_(True)
    s = node(x_ours)
    s.backward(grad_out)

    assert torch.equal(s, s_ref)
    assert torch.equal(node.v_seq, h_ref)
    assert torch.equal(node.v, h_ref[-1])
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-6, atol=1e-6)
    # the test would be vacuous if nothing fired or nothing passed gradient
    assert 0 < (s > 0).float().mean() < 1
    assert x_ref.grad.abs().sum() > 0


@pytest.mark.parametrize("v_threshold,norm,window", [(0.5, None, None), (2.0, 1.0, None),
                                                     (1.0, 8.0, (-0.5, 3.0))])
def test_threshold_norm_and_window_match_reference(v_threshold, norm, window):
    x = make_input(4, seed=3) * v_threshold
    x_ref = x.clone().requires_grad_(True)
    s_ref, h_ref = reference_loop(x_ref, 4, 0.25, True, norm=norm, v_threshold=v_threshold, window=window)
    s_ref.sum().backward()
    node = NILIFNode(v_threshold=v_threshold, norm=norm, grad_window=window, step_mode="m")
    x_ours = x.clone().requires_grad_(True)
    s = node(x_ours)
    s.sum().backward()
    assert torch.equal(s, s_ref)
    torch.testing.assert_close(node.v, h_ref[-1], rtol=0, atol=0)
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("D,beta", list(itertools.product([1, 2, 4, 8], [0.25, 0.5])))
def test_equals_spikingjelly_ilif_divided_by_D(D, beta):
    x = make_input(4, shape=(2, 5, 9), D=D, seed=D)
    sj = sj_neuron.ILIFNode(tau=1.0 / (1.0 - beta), surrogate_function=surrogate.MultiLevelSpikeCount(D),
                            detach_reset=True, step_mode="m")
    x_sj = x.clone().requires_grad_(True)
    out_sj = sj(x_sj) / D
    grad_out = torch.randn(out_sj.shape, generator=torch.Generator().manual_seed(7))
    out_sj.backward(grad_out)

    node = NILIFNode(D=D, beta=beta, step_mode="m")
    x_ours = x.clone().requires_grad_(True)
    out = node(x_ours)
    out.backward(grad_out)
    assert torch.equal(out, out_sj)
    torch.testing.assert_close(x_ours.grad, x_sj.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("detach_reset", [True, False])
def test_single_step_loop_equals_multi_step(detach_reset):
    x = make_input(5, seed=11)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))

    multi = NILIFNode(detach_reset=detach_reset, step_mode="m", store_v_seq=True)
    x_m = x.clone().requires_grad_(True)
    out_m = multi(x_m)
    (out_m * grad_out).sum().backward()

    single = NILIFNode(detach_reset=detach_reset, step_mode="s", store_v_seq=True)
    x_s = x.clone().requires_grad_(True)
    out_s = torch.stack([single(x_s[t]) for t in range(x.shape[0])])
    (out_s * grad_out).sum().backward()

    assert torch.equal(out_m, out_s)
    assert torch.equal(multi.v, single.v)
    assert torch.equal(multi.v_seq, single.v_seq)
    torch.testing.assert_close(x_m.grad, x_s.grad, rtol=1e-6, atol=1e-7)


def test_gradient_through_state_and_v_seq_matches_reference():
    """A loss on v and v_seq sends gradient back through the recurrence."""
    x = make_input(3, seed=5)
    x_ref = x.clone().requires_grad_(True)
    s_ref, h_ref = reference_loop(x_ref, 4, 0.5, False)
    (s_ref.sum() + (h_ref ** 2).sum() + h_ref[-1].sum()).backward()
    node = NILIFNode(beta=0.5, detach_reset=False, step_mode="m", store_v_seq=True)
    x_ours = x.clone().requires_grad_(True)
    s = node(x_ours)
    (s.sum() + (node.v_seq ** 2).sum() + node.v.sum()).backward()
    torch.testing.assert_close(x_ours.grad, x_ref.grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("D", [1, 4, 8])
def test_window_edges(D):
    x = torch.tensor([[-0.5, 0.0, float(D), D + 0.5]], requires_grad=True)
    node = NILIFNode(D=D, step_mode="m")
    node(x).sum().backward()
    assert x.grad.tolist() == [[0.0, 1.0 / D, 1.0 / D, 0.0]]


def test_round_half_to_even():
    x = torch.tensor([[0.5, 1.5, 2.5, 3.5, -0.5, 4.5]])
    out = NILIFNode(D=4, beta=1.0, step_mode="m")(x)
    assert (out * 4).tolist() == [[0.0, 2.0, 2.0, 4.0, 0.0, 4.0]]


def test_reset_and_reset_net_restore_a_fresh_neuron():
    x = make_input(3)
    net = torch.nn.Sequential(NILIFNode(step_mode="s"))
    first = [net(x[t]) for t in range(3)]
    functional.reset_net(net)
    again = [net(x[t]) for t in range(3)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    # without the reset the state carries over and the output changes
    carried = net(x[0])
    assert not torch.equal(carried, first[0])
    net[0].reset()
    assert torch.equal(net(x[0]), first[0])


def test_batch_size_change_between_calls_starts_from_zero():
    node = NILIFNode(step_mode="s")
    node(torch.randn(2, 6))
    x3 = torch.randn(3, 6)
    assert torch.equal(node(x3), NILIFNode(step_mode="s")(x3))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_state_stays_float32_under_low_precision(dtype):
    x = make_input(2)
    node = NILIFNode(step_mode="m")
    out = node(x.to(dtype))
    assert out.dtype == dtype and node.v.dtype == torch.float32
    s_ref, h_ref = reference_loop(x.to(dtype).float(), 4, 0.25, True)
    assert torch.equal(out.float(), s_ref) and torch.equal(node.v, h_ref[-1])

    conv = torch.nn.Conv2d(3, 4, 3)
    net = torch.nn.Sequential(conv, NILIFNode())
    with torch.autocast("cpu", dtype=dtype):
        y = net(torch.randn(2, 3, 8, 8, requires_grad=True))
        y.float().sum().backward()
    assert net[1].v.dtype == torch.float32 and conv.weight.grad is not None
    net.to(dtype)  # MemoryModule moves the state too; the next call restores float32
    net(torch.randn(1, 3, 8, 8, dtype=dtype))
    assert net[1].v.dtype == torch.float32


def test_invalid_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="D"):
        NILIFNode(D=0)
    with pytest.raises(ValueError, match="D"):
        NILIFNode(D=2.5)
    for beta in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="beta"):
            NILIFNode(beta=beta)
    with pytest.raises(ValueError, match="backend"):
        NILIFNode(backend="triton")
    with pytest.raises(ValueError, match="grad_window"):
        NILIFNode(grad_window=(2.0, 1.0))
    node = NILIFNode()
    with pytest.raises(ValueError, match="backend"):
        neurons.set_backend(torch.nn.Sequential(node), "numpy")
    node.backend = "cupy"
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        node(torch.randn(4))


def test_spikingjelly_step_mode_monitor_and_model_builder():
    from spikingjelly.activation_based import layer
    from spikingjelly.activation_based.model import spiking_resnet

    net = torch.nn.Sequential(layer.Conv2d(3, 4, 3, padding=1), NILIFNode(),
                              layer.Conv2d(4, 4, 3, padding=1), NILIFNode())
    functional.set_step_mode(net, "m")
    assert all(m.step_mode == "m" for m in net)
    mon = monitor.OutputMonitor(net, NILIFNode)
    x = torch.randn(2, 1, 3, 8, 8)
    out = net(x)
    assert len(mon.records) == 2 and torch.equal(mon.records[1], out)
    assert set(torch.unique(mon.records[0] * 4).tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}
    mon.remove_hooks()

    model = spiking_resnet.spiking_resnet18(spiking_neuron=NILIFNode, num_classes=10, D=4, beta=0.25)
    nodes = [m for m in model.modules() if isinstance(m, NILIFNode)]
    assert len(nodes) > 10 and nodes[0].D == 4
    functional.set_step_mode(model, "m")
    logits = model(torch.randn(2, 1, 3, 32, 32))
    assert logits.shape == (2, 1, 10)
    logits.sum().backward()
    assert model.conv1.weight.grad.abs().sum() > 0
    assert neurons.set_backend(model, "torch") == len(nodes)


def test_attributes_changed_after_construction_take_effect_and_are_checked():
    x = make_input(2, D=8, seed=4)
    node = NILIFNode(D=4, step_mode="m")
    node.D, node.beta, node.detach_reset = 8, 0.5, False
    assert torch.equal(node(x), reference_loop(x, 8, 0.5, False)[0])
    node.beta = 1.5
    with pytest.raises(ValueError, match="beta"):
        node(x)


def test_dropping_the_final_state_changes_no_output():
    x = make_input(3, seed=8)
    kept = NILIFNode(step_mode="m")
    dropped = NILIFNode(step_mode="m", keep_state=False)
    with torch.no_grad():
        assert torch.equal(dropped(x), kept(x))
    assert dropped.v == 0.0 and isinstance(kept.v, torch.Tensor)
    # in training too: same outputs and input gradients, and no state is left behind
    upstream = torch.randn_like(x)
    grads = []
    for node in (kept, dropped):
        node.reset()
        xg = x.clone().requires_grad_(True)
        out = node(xg)
        (out * upstream).sum().backward()
        grads.append((out.detach(), xg.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert dropped.v == 0.0 and isinstance(kept.v, torch.Tensor)


@pytest.mark.parametrize("T,D", [(1, 4), (3, 3), (2, 8)])
def test_inference_without_final_state_matches_the_reference(T, D):
    x = make_input(T, D=D, seed=12)
    node = NILIFNode(D=D, beta=0.5, step_mode="m", keep_state=False)
    with torch.no_grad():
        out = node(x)
    assert torch.equal(out, reference_loop(x, D, 0.5, True)[0])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("D", [4, 3])
def test_one_step_inference_in_low_precision_equals_the_float32_path(dtype, D):
    """T = 1 without a kept state works in the input's dtype: the same spikes as the float32 equations
    rounded to that dtype (ties at .5, values past D and below 0 included)."""
    x = torch.cat([torch.linspace(-2, D + 2, 97), torch.arange(0, D + 1) + 0.5]).reshape(1, -1).to(dtype)
    node = NILIFNode(D=D, step_mode="m", keep_state=False)
    with torch.no_grad():
        out = node(x)
    s_ref, _ = reference_loop(x.float(), D, 0.25, True)
    assert out.dtype == dtype and torch.equal(out, s_ref.to(dtype))
