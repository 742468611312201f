"""CUDA kernels for NILIFNode through CuPy (``backend='cupy'``).

One thread per neuron walks the T steps with its state in a float32 register.
Forward writes the output, the last state, optionally every state, and a
1-byte window mask that is all backward needs. Backward walks T in reverse.

Kernels are compiled by NVRTC without fast-math and with ``--fmad=false``,
so every operation rounds exactly as the 'torch' backend's separate ops do.
Half and bfloat16 tensors are read and written as 16-bit words converted with
PTX ``cvt`` instructions, so no CUDA header is needed at compile time.

The two kernels are registered as ``torch.library`` custom ops with fake
implementations and ``register_autograd``, so ``torch.compile`` keeps them in
one graph. CuPy itself is imported only when a kernel is launched.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["NVRTC_OPTIONS", "KERNEL_DTYPES", "kernel_source", "kernel_names",
           "compile_to_ptx", "nilif_multistep"]

NVRTC_OPTIONS = ("--fmad=false", "-std=c++14")

# torch dtype -> (kernel name suffix, storage type, load from storage, store to storage)
KERNEL_DTYPES = {
    torch.float32: ("f32", "float",
                    "return v;",
                    "return v;"),
    torch.float16: ("f16", "unsigned short",
                    'float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v)); return f;',
                    'unsigned short h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h;'),
    torch.bfloat16: ("bf16", "unsigned short",
                     "return __uint_as_float(((unsigned int)v) << 16);",
                     'unsigned short h; asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(h) : "f"(v)); return h;'),
}

_SOURCE = r"""
typedef STORAGE scalar_t;
__device__ __forceinline__ float load(const scalar_t v) { LOAD }
__device__ __forceinline__ scalar_t store(const float v) { STORE }

// Eq. 16-18 for one neuron over T steps. Layout [T, n], step stride n.
extern "C" __global__ void nilif_forward_SUFFIX(
    const scalar_t* __restrict__ x, const float* __restrict__ v0,
    scalar_t* __restrict__ s, float* __restrict__ v_last,
    float* __restrict__ v_seq, unsigned char* __restrict__ mask,
    const long long n, const int T, const float D, const float beta,
    const float v_threshold, const float norm, const float lo, const float hi,
    const int has_v0, const int store_v_seq, const int save_mask)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float h = has_v0 ? v0[i] : 0.0f;
    for (int t = 0; t < T; ++t) {
        const long long k = (long long)t * n + i;
        const float u = has_v0 || t > 0 ? h + load(x[k]) : load(x[k]);
        const float y = u / v_threshold;
        // torch.clamp keeps NaN; fminf/fmaxf would not
        float count = y < 0.0f ? 0.0f : (y > D ? D : y);
        count = rintf(count);  // round half to even, as torch.round
        s[k] = store(count / norm);
        h = u - count * v_threshold;
        if (beta != 1.0f) h = h * beta;
        if (store_v_seq) v_seq[k] = h;
        if (save_mask) mask[k] = (y >= lo && y <= hi) ? 1 : 0;
    }
    v_last[i] = h;
}

// Adjoint: g_U[t] = scale*m[t]*g_S[t] + beta*k[t]*(g_U[t+1] + g_H[t]), k = 1 or 1 - m.
extern "C" __global__ void nilif_backward_SUFFIX(
    const scalar_t* __restrict__ g_s, const float* __restrict__ g_v_last,
    const float* __restrict__ g_v_seq, const unsigned char* __restrict__ mask,
    scalar_t* __restrict__ g_x, float* __restrict__ g_v0,
    const long long n, const int T, const float scale, const float beta,
    const int detach_reset, const int has_g_s, const int has_g_v_last,
    const int has_g_v_seq, const int want_g_v0)
{
    const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = has_g_v_last ? g_v_last[i] : 0.0f;
    for (int t = T - 1; t >= 0; --t) {
        const long long k = (long long)t * n + i;
        if (has_g_v_seq) g = g + g_v_seq[k];
        const bool m = mask[k] != 0;
        const float carried = (detach_reset || !m) ? beta * g : 0.0f;
        const float direct = (m && has_g_s) ? scale * load(g_s[k]) : 0.0f;
        g = direct + carried;
        g_x[k] = store(g);
    }
    if (want_g_v0) g_v0[i] = g;
}
"""


def kernel_names(dtype: torch.dtype):
    suffix = KERNEL_DTYPES[dtype][0]
    return f"nilif_forward_{suffix}", f"nilif_backward_{suffix}"


def kernel_source(dtype: torch.dtype) -> str:
    """The CUDA C++ source of the forward and backward kernels for one dtype."""
    if dtype not in KERNEL_DTYPES:
        raise TypeError(f"the cupy backend supports {list(KERNEL_DTYPES)}, got {dtype}")
    suffix, storage, load, store = KERNEL_DTYPES[dtype]
    return (_SOURCE.replace("SUFFIX", suffix).replace("STORAGE", storage)
            .replace("LOAD", load).replace("STORE", store))


def compile_to_ptx(dtype: torch.dtype, arch: str = "compute_80") -> str:
    """Compile one dtype's kernels with NVRTC to PTX (needs CuPy, not a GPU)."""
    from cupy_backends.cuda.libs import nvrtc
    prog = nvrtc.createProgram(kernel_source(dtype), f"nilif_{KERNEL_DTYPES[dtype][0]}.cu", [], [])
    try:
        nvrtc.compileProgram(prog, [f"-arch={arch}", *NVRTC_OPTIONS])
    except nvrtc.NVRTCError as err:
        raise RuntimeError(f"NVRTC failed on the {dtype} NI-LIF kernels:\n"
                           f"{nvrtc.getProgramLog(prog)}") from err
    try:
        ptx = nvrtc.getPTX(prog)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)


def _import_cupy():
    try:
        import cupy
    except ImportError as err:
        raise ImportError(
            "NILIFNode(backend='cupy') needs CuPy built for torch's CUDA 13: "
            "pip install 'spikezoo[cuda]' (or pip install cupy-cuda13x), "
            "or use backend='torch'") from err
    return cupy


_modules = {}


def _kernels(dtype: torch.dtype, device: torch.device):
    key = (dtype, device.index)
    if key not in _modules:
        cupy = _import_cupy()
        with cupy.cuda.Device(device.index):
            module = cupy.RawModule(code=kernel_source(dtype), options=NVRTC_OPTIONS, backend="nvrtc")
            _modules[key] = tuple(module.get_function(name) for name in kernel_names(dtype))
    return _modules[key]


_BLOCK = 256


def _as_cupy(cupy, tensor: torch.Tensor):
    """Zero-copy view through DLPack; 16-bit floats travel as int16 words."""
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.view(torch.int16)
    return cupy.from_dlpack(tensor.detach())


def _current_stream(cupy, device: torch.device):
    """PyTorch's current stream on ``device`` as a CuPy stream (no new stream, no sync)."""
    torch_stream = torch.cuda.current_stream(device)
    if hasattr(cupy.cuda.Stream, "from_external") and hasattr(torch_stream, "__cuda_stream__"):
        return cupy.cuda.Stream.from_external(torch_stream)
    return cupy.cuda.ExternalStream(torch_stream.cuda_stream, device.index)


def _launch(kernel, n: int, device: torch.device, args):
    cupy = _import_cupy()
    with cupy.cuda.Device(device.index):
        with _current_stream(cupy, device):
            kernel(((n + _BLOCK - 1) // _BLOCK,), (_BLOCK,),
                   tuple(_as_cupy(cupy, a) if isinstance(a, torch.Tensor) else a for a in args))


def _check_cuda(x: torch.Tensor):
    if not x.is_cuda:
        raise RuntimeError(
            "NILIFNode(backend='cupy') runs on CUDA tensors only, got a tensor on "
            f"{x.device}; move the model and input to a GPU or use backend='torch' "
            "(neurons.set_backend(model, 'torch'))")
    if x.dtype not in KERNEL_DTYPES:
        raise TypeError(f"the cupy backend supports {list(KERNEL_DTYPES)}, got {x.dtype}")


@torch.library.custom_op("spikezoo::nilif_forward", mutates_args=(), device_types="cuda")
def _nilif_forward(x: torch.Tensor, v0: Optional[torch.Tensor], D: int, beta: float,
                   v_threshold: float, norm: float, lo: float, hi: float, detach_reset: bool,
                   store_v_seq: bool, save_mask: bool
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward kernel; ``detach_reset`` only shapes the backward that autograd attaches."""
    import numpy as np
    x = x.contiguous()
    T, n = x.shape[0], x[0].numel()
    dev = x.device
    s = torch.empty_like(x)
    v_last = torch.empty(x.shape[1:], dtype=torch.float32, device=dev)
    v_seq = torch.empty(x.shape if store_v_seq else (0,), dtype=torch.float32, device=dev)
    mask = torch.empty(x.shape if save_mask else (0,), dtype=torch.uint8, device=dev)
    v0c = v0.contiguous() if v0 is not None else torch.empty(0, dtype=torch.float32, device=dev)
    if n > 0:
        forward, _ = _kernels(x.dtype, dev)
        _launch(forward, n, dev, (
            x, v0c, s, v_last, v_seq, mask, np.int64(n), np.int32(T), np.float32(D),
            np.float32(beta), np.float32(v_threshold), np.float32(norm), np.float32(lo),
            np.float32(hi), np.int32(v0 is not None), np.int32(store_v_seq), np.int32(save_mask)))
    return s, v_last, v_seq, mask


@_nilif_forward.register_fake
def _(x, v0, D, beta, v_threshold, norm, lo, hi, detach_reset, store_v_seq, save_mask):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(x.shape[1:], dtype=torch.float32),
            x.new_empty(x.shape if store_v_seq else (0,), dtype=torch.float32),
            x.new_empty(x.shape if save_mask else (0,), dtype=torch.uint8))


@torch.library.custom_op("spikezoo::nilif_backward", mutates_args=(), device_types="cuda")
def _nilif_backward(g_s: Optional[torch.Tensor], g_v_last: Optional[torch.Tensor],
                    g_v_seq: Optional[torch.Tensor], mask: torch.Tensor, x_dtype: torch.dtype,
                    scale: float, beta: float, detach_reset: bool, want_g_v0: bool
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    import numpy as np
    T, n = mask.shape[0], mask[0].numel()
    dev = mask.device
    empty32 = torch.empty(0, dtype=torch.float32, device=dev)
    g_x = torch.empty(mask.shape, dtype=x_dtype, device=dev)
    g_v0 = torch.empty(mask.shape[1:] if want_g_v0 else (0,), dtype=torch.float32, device=dev)
    if n > 0:
        _, backward = _kernels(x_dtype, dev)
        _launch(backward, n, dev, (
            g_s.to(x_dtype).contiguous() if g_s is not None else torch.empty(0, dtype=x_dtype, device=dev),
            g_v_last.float().contiguous() if g_v_last is not None else empty32,
            g_v_seq.float().contiguous() if g_v_seq is not None else empty32,
            mask, g_x, g_v0, np.int64(n), np.int32(T), np.float32(scale), np.float32(beta),
            np.int32(detach_reset), np.int32(g_s is not None), np.int32(g_v_last is not None),
            np.int32(g_v_seq is not None), np.int32(want_g_v0)))
    return g_x, g_v0


@_nilif_backward.register_fake
def _(g_s, g_v_last, g_v_seq, mask, x_dtype, scale, beta, detach_reset, want_g_v0):
    return (mask.new_empty(mask.shape, dtype=x_dtype),
            mask.new_empty(mask.shape[1:] if want_g_v0 else (0,), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    x, v0, D, beta, v_threshold, norm, lo, hi, detach_reset, store_v_seq, save_mask = inputs
    ctx.save_for_backward(output[3])
    ctx.x_dtype = x.dtype
    ctx.scale = 1.0 / (norm * v_threshold)
    ctx.beta = beta
    ctx.detach_reset = detach_reset
    ctx.has_v0 = v0 is not None
    ctx.store_v_seq = store_v_seq


def _backward(ctx, g_s, g_v_last, g_v_seq, g_mask):
    (mask,) = ctx.saved_tensors
    want_g_v0 = ctx.has_v0 and ctx.needs_input_grad[1]
    g_x, g_v0 = _nilif_backward(g_s, g_v_last, g_v_seq if ctx.store_v_seq else None, mask,
                                ctx.x_dtype, ctx.scale, ctx.beta, ctx.detach_reset, want_g_v0)
    return (g_x, g_v0 if want_g_v0 else None) + (None,) * 9


torch.library.register_autograd("spikezoo::nilif_forward", _backward, setup_context=_setup_context)


def nilif_multistep(x_seq: torch.Tensor, v: Optional[torch.Tensor], dyn, store_v_seq: bool):
    """Eq. 16-18 over [T, ...] on the GPU; same contract as ``neurons.nilif.nilif_multistep``."""
    _check_cuda(x_seq)
    save_mask = torch.is_grad_enabled() and (
        x_seq.requires_grad or (v is not None and v.requires_grad))
    s, v_last, v_seq, _ = _nilif_forward(x_seq, v, dyn.D, dyn.beta, dyn.v_threshold, dyn.norm,
                                         dyn.lo, dyn.hi, dyn.detach_reset, store_v_seq, save_mask)
    return s, v_last, (v_seq if store_v_seq else None)
