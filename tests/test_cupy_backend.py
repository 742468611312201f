"""CuPy backend: NVRTC compile checks (no GPU needed) and GPU equality with the torch backend."""
import itertools
import sys

import pytest
import torch

from neurons import NILIFNode, cupy_backend

nvrtc = pytest.importorskip("cupy_backends.cuda.libs.nvrtc", reason="CuPy not installed (pip install spikezoo[cuda])")

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.mark.parametrize("arch", ["compute_80", "compute_90"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_kernels_compile_to_ptx_without_fma(dtype, arch):
    ptx = cupy_backend.compile_to_ptx(dtype, arch)
    assert f".target sm_{arch.split('_')[1]}" in ptx
    for name in cupy_backend.kernel_names(dtype):
        assert f".entry {name}(" in ptx
    # --fmad=false: no fused multiply-add may change the rounding of eq. 18
    assert "fma." not in ptx


def test_fmad_option_is_what_removes_fma():
    """Guards the check above: the same source does contract to fma without the option."""
    prog = nvrtc.createProgram(cupy_backend.kernel_source(torch.float32), "k.cu", [], [])
    nvrtc.compileProgram(prog, ["-arch=compute_80"])
    ptx = nvrtc.getPTX(prog)
    assert "fma." in (ptx.decode() if isinstance(ptx, bytes) else ptx)


def test_missing_cupy_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ImportError, match=r"spikezoo\[cuda\]"):
        cupy_backend._import_cupy()


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _away_from_boundaries(shape, D, seed):
    """Inputs whose first-step potential sits at least 0.2 from a rounding edge."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randint(-2, D + 3, shape, generator=gen).float()
    return base + (torch.rand(shape, generator=gen) * 0.6 - 0.3)


def _run(backend, x, D, detach_reset, store_v_seq, grad_out, with_grad):
    node = NILIFNode(D=D, detach_reset=detach_reset, step_mode="m", backend=backend,
                     store_v_seq=store_v_seq).cuda()
    xi = x.detach().clone().requires_grad_(with_grad)
    out = node(xi)
    if with_grad:
        loss = (out.float() * grad_out).sum() + node.v.sum()
        if store_v_seq:
            loss = loss + (node.v_seq * 0.5).sum()
        loss.backward()
    return out, node.v, node.v_seq, (xi.grad if with_grad else None)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("D,T,detach_reset,store_v_seq,dtype", list(itertools.product(
    [1, 2, 4, 8], [1, 3, 4], [True, False], [True, False], DTYPES)))
def test_cupy_equals_torch_backend(D, T, detach_reset, store_v_seq, dtype):
    shape = (T, 3, 37, 11)  # odd sizes, not a multiple of the block
    x = _away_from_boundaries(shape, D, seed=D * 10 + T).cuda().to(dtype)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(1)).cuda()
    ref = _run("torch", x, D, detach_reset, store_v_seq, grad_out, True)
    got = _run("cupy", x, D, detach_reset, store_v_seq, grad_out, True)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-6, atol=1e-6)
    if store_v_seq:
        torch.testing.assert_close(got[2], ref[2], rtol=1e-6, atol=1e-6)
    tol = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
    torch.testing.assert_close(got[3].float(), ref[3].float(), rtol=tol, atol=1e-6)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_cupy_non_contiguous_input_and_eval(dtype):
    x = _away_from_boundaries((4, 5, 6, 7), 4, seed=3).cuda().to(dtype).transpose(1, 3)
    assert not x.is_contiguous()
    grad_out = torch.randn(x.shape).cuda()
    ref = _run("torch", x, 4, True, False, grad_out, True)
    got = _run("cupy", x, 4, True, False, grad_out, True)
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[3].float(), ref[3].float(), rtol=1e-2 if dtype != torch.float32 else 1e-6,
                               atol=1e-6)
    with torch.no_grad():  # eval: no mask kept, same output
        node_t = NILIFNode(step_mode="m").cuda().eval()
        node_c = NILIFNode(step_mode="m", backend="cupy").cuda().eval()
        assert torch.equal(node_c(x), node_t(x))
        assert torch.equal(node_c.v, node_t.v)


@gpu
@pytest.mark.gpu
def test_cupy_single_step_chain_and_compile():
    x = _away_from_boundaries((4, 2, 33), 4, seed=9).cuda()
    grad_out = torch.randn(x.shape).cuda()
    outs = {}
    for backend in ("torch", "cupy"):
        node = NILIFNode(step_mode="s", backend=backend).cuda()
        xi = x.clone().requires_grad_(True)
        out = torch.stack([node(xi[t]) for t in range(4)])
        (out * grad_out).sum().backward()
        outs[backend] = (out, xi.grad)
    assert torch.equal(outs["cupy"][0], outs["torch"][0])
    torch.testing.assert_close(outs["cupy"][1], outs["torch"][1], rtol=1e-6, atol=1e-7)

    conv = torch.nn.Conv1d(2, 2, 1).cuda()
    node = NILIFNode(step_mode="m", backend="cupy").cuda()

    def model(inp):
        node.reset()
        return node(conv(inp.flatten(0, 1)).reshape(inp.shape))

    compiled = torch.compile(model, fullgraph=True)
    xi = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    eager_out = model(xi)
    eager_out.sum().backward()
    comp_out = compiled(xc)
    comp_out.sum().backward()
    assert torch.equal(comp_out, eager_out)
    torch.testing.assert_close(xc.grad, xi.grad, rtol=1e-6, atol=1e-7)
