r"""NI-LIF: the normalised integer leaky integrate-and-fire neuron of Spike2Former.

Paper equations 16-18 (Lei et al., AAAI 2025), with a threshold :math:`V_{th}`
(1 in the paper) and a normaliser :math:`N` (:math:`D` in the paper):

.. math::

    U[t] &= H[t-1] + X[t] \\
    C[t] &= \operatorname{clip}(\operatorname{round}(U[t] / V_{th}), 0, D) \\
    S[t] &= C[t] / N \\
    H[t] &= \beta \, (U[t] - C[t] \, V_{th})

``round`` is round-half-to-even (``torch.round``). The gradient is a
straight-through estimator on a rectangular window: :math:`\partial C /
\partial U = 1 / V_{th}` where :math:`U / V_{th}` lies in ``grad_window``
(default :math:`[0, D]`, both ends included) and 0 elsewhere, so
:math:`\partial S / \partial U = 1 / (N V_{th})`. With ``detach_reset`` the
reset term carries no gradient and :math:`\partial H / \partial U = \beta`;
without it :math:`\partial H / \partial U = \beta (1 - \mathbb{1}_{window})`.

``v`` holds :math:`H[t]` (leak applied) and is kept in float32 whatever the
input dtype, so fp16/bf16 autocast does not round the membrane state.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
from spikingjelly.activation_based import neuron, surrogate

__all__ = ["NILIFNode", "BACKENDS", "Dynamics", "make_dynamics", "nilif_multistep"]

BACKENDS = ("torch", "cupy")


class Dynamics(NamedTuple):
    """The validated constants of one neuron, shared by every backend."""

    D: int
    beta: float
    v_threshold: float
    norm: float
    lo: float
    hi: float
    detach_reset: bool

    @property
    def grad_scale(self) -> float:
        """dS/dU inside the window."""
        return 1.0 / (self.norm * self.v_threshold)

    @property
    def default_window(self) -> bool:
        return self.lo == 0.0 and self.hi == float(self.D)


def make_dynamics(D=4, beta=0.25, v_threshold=1.0, norm=None, grad_window=None,
                  detach_reset=True) -> Dynamics:
    """Check a neuron's parameters and resolve the defaults (norm=D, window=[0, D])."""
    if isinstance(D, bool) or not isinstance(D, int) or D < 1:
        raise ValueError(f"D (the largest integer count) must be an int >= 1, got {D!r}")
    if not (0.0 < float(beta) <= 1.0):
        raise ValueError(f"beta (the leak factor) must lie in (0, 1], got {beta!r}; beta=1 means no leak")
    if not float(v_threshold) > 0.0:
        raise ValueError(f"v_threshold must be > 0, got {v_threshold!r}")
    norm = float(D) if norm is None else float(norm)
    if not norm > 0.0:
        raise ValueError(f"norm must be > 0, got {norm!r}")
    lo, hi = (0.0, float(D)) if grad_window is None else map(float, grad_window)
    if lo > hi:
        raise ValueError(f"grad_window must be (low, high) with low <= high, got {grad_window!r}")
    return Dynamics(D, float(beta), float(v_threshold), norm, lo, hi, bool(detach_reset))


def _forward_eager(x_seq: torch.Tensor, v: Optional[torch.Tensor], dyn: Dynamics,
                   save_mask: bool, store_v_seq: bool, keep_final_state: bool = True):
    """Eq. 16-18 over T steps, reusing float32 work buffers.

    Returns (s_seq, v_last, v_seq or None, window mask [T, ...] int8 or None); v_last is
    None when ``keep_final_state`` is off. Only the 1-byte mask is kept for backward. The
    mask is compared into a float buffer and copied to int8: on CPU both are vectorised,
    while comparisons into bool/int8 and bool->float casts are several times slower.
    When the last step's state is not read and no mask is needed, that step is computed
    in place in the output: at T = 1 in inference no work buffer is allocated at all.
    """
    T = x_seq.shape[0]
    f32 = torch.float32
    device = x_seq.device
    step_shape = x_seq.shape[1:]
    s_seq = torch.empty(x_seq.shape, dtype=x_seq.dtype, device=device)
    mask = torch.empty(x_seq.shape, dtype=torch.int8, device=device) if save_mask else None
    v_seq = torch.empty(x_seq.shape, dtype=f32, device=device) if store_v_seq else None
    flag = torch.empty(step_shape, dtype=f32, device=device) if save_mask else None
    unit_threshold = dyn.v_threshold == 1.0
    scaled = None if unit_threshold else torch.empty(step_shape, dtype=f32, device=device)
    final_state_unread = not (keep_final_state or store_v_seq)
    count = work = None
    h = v
    for t in range(T):
        x_t = x_seq[t]
        if (t == T - 1 and h is None and unit_threshold and final_state_unread and mask is None
                and x_t.dtype != f32):
            # no state in and none kept (T = 1 inference under bf16): the membrane is x_t itself, exact in
            # its own dtype, and clamp/round/divide there give what the fp32 path rounds to that dtype
            out = torch.clamp(x_t, 0.0, float(dyn.D), out=s_seq[t])
            out.round_().div_(dyn.norm)
            return s_seq, None, None, None
        if h is None:
            u = x_t if x_t.dtype == f32 else x_t.to(f32)
        else:
            if work is None:
                work = torch.empty(step_shape, dtype=f32, device=device)
            u = torch.add(h, x_t, out=work)
        y = u if unit_threshold else torch.div(u, dyn.v_threshold, out=scaled)
        if t == T - 1 and final_state_unread and mask is None and x_seq.dtype == f32:
            out = torch.clamp(y, 0.0, float(dyn.D), out=s_seq[t])
            out.round_().div_(dyn.norm)
            return s_seq, None, None, None
        if count is None:
            count = torch.empty(step_shape, dtype=f32, device=device)
        torch.clamp(y, 0.0, float(dyn.D), out=count)
        if mask is not None:
            if dyn.default_window:
                # clamp(y) == y exactly when 0 <= y <= D (and never for NaN)
                torch.eq(count, y, out=flag)
            else:
                torch.ge(y, dyn.lo, out=flag).mul_(y <= dyn.hi)
            mask[t].copy_(flag)
        count.round_()
        torch.div(count, dyn.norm, out=s_seq[t])
        if t == T - 1 and final_state_unread:
            return s_seq, None, None, mask  # nobody reads H[T-1]: skip the reset and leak
        if not unit_threshold:
            count.mul_(dyn.v_threshold)
        if v_seq is None and work is None:
            work = torch.empty(step_shape, dtype=f32, device=device)
        h = torch.sub(u, count, out=work if v_seq is None else v_seq[t])
        if dyn.beta != 1.0:
            h.mul_(dyn.beta)
    v_last = h.clone() if v_seq is not None else h
    return s_seq, v_last, v_seq, mask


def _forward_functional(x_seq, v, dyn: Dynamics, save_mask: bool, store_v_seq: bool):
    """The same equations without out= buffers, for torch.compile to fuse."""
    h = v
    s_steps, masks, v_steps = [], [], []
    for t in range(x_seq.shape[0]):
        u = x_seq[t].float() if h is None else h + x_seq[t]
        y = u if dyn.v_threshold == 1.0 else u / dyn.v_threshold
        count = torch.clamp(y, 0.0, float(dyn.D))
        if save_mask:
            masks.append(((y >= dyn.lo) & (y <= dyn.hi)).to(torch.int8))
        count = torch.round(count)
        s_steps.append((count / dyn.norm).to(x_seq.dtype))
        h = u - (count if dyn.v_threshold == 1.0 else count * dyn.v_threshold)
        if dyn.beta != 1.0:
            h = h * dyn.beta
        v_steps.append(h)
    return (torch.stack(s_steps), h, torch.stack(v_steps) if store_v_seq else None,
            torch.stack(masks) if save_mask else None)


def _backward(mask: torch.Tensor, g_s, g_v, g_vseq, x_dtype, dyn: Dynamics, want_gv: bool):
    """Adjoint of eq. 16-18: g_U[t] = scale*m[t]*g_S[t] + beta*k[t]*(g_U[t+1] + g_H[t]).

    k = 1 with a detached reset, 1 - m otherwise; computed as
    beta * (carried + (scale/beta) * m * g_S). Returns (g_x, g_v0 or None).
    """
    T = mask.shape[0]
    f32 = torch.float32
    device = mask.device
    step_shape = mask.shape[1:]
    scale, beta = dyn.grad_scale, dyn.beta
    g_x = torch.empty(mask.shape, dtype=x_dtype, device=device)
    m = torch.empty(step_shape, dtype=f32, device=device)
    direct = x_dtype == f32
    ping = None if direct else [torch.empty(step_shape, dtype=f32, device=device) for _ in range(2)]
    g = g_v  # gradient reaching H[t] from later steps
    for t in reversed(range(T)):
        if g_vseq is not None:
            g = g_vseq[t] if g is None else g + g_vseq[t]
        m.copy_(mask[t])
        out = g_x[t] if direct else ping[t % 2]
        if g is None:
            if g_s is None:
                out.zero_()
            else:
                torch.mul(g_s[t], m, out=out).mul_(scale)
        else:
            carried = g if dyn.detach_reset else torch.addcmul(g, g, m, value=-1.0)
            if g_s is None:
                torch.mul(carried, beta, out=out)
            else:
                torch.addcmul(carried, g_s[t], m, value=scale / beta, out=out).mul_(beta)
        if not direct:
            g_x[t].copy_(out)
        g = out
    g_v0 = None
    if want_gv:
        g_v0 = g.clone() if g is not None else torch.zeros(step_shape, dtype=f32, device=device)
    return g_x, g_v0


class _NILIFTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x_seq, v, dyn, store_v_seq, keep_final_state):
        if torch.compiler.is_compiling():
            s_seq, v_last, v_seq, mask = _forward_functional(x_seq, v, dyn, True, store_v_seq)
        else:
            s_seq, v_last, v_seq, mask = _forward_eager(x_seq, v, dyn, True, store_v_seq, keep_final_state)
        ctx.save_for_backward(mask)
        ctx.dyn = dyn
        ctx.x_dtype = x_seq.dtype
        ctx.has_v = v is not None
        ctx.set_materialize_grads(False)
        return s_seq, v_last, v_seq

    @staticmethod
    def backward(ctx, g_s, g_v, g_vseq):
        (mask,) = ctx.saved_tensors
        want_gv = ctx.has_v and ctx.needs_input_grad[1]
        g_x, g_v0 = _backward(mask, g_s, g_v, g_vseq, ctx.x_dtype, ctx.dyn, want_gv)
        return g_x, g_v0, None, None, None


def nilif_multistep(x_seq: torch.Tensor, v: Optional[torch.Tensor], dyn: Dynamics,
                    store_v_seq: bool = False, backend: str = "torch", keep_final_state: bool = True
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """Run eq. 16-18 over ``x_seq`` [T, ...] from state ``v`` (float32 or None for 0).

    Returns ``(s_seq, v_last, v_seq)``; ``v_seq`` is None unless ``store_v_seq``.
    With ``keep_final_state=False`` the torch backend skips the last step's reset
    and leak and returns ``v_last = None`` (in training too: a state nobody reads
    would otherwise stay alive, the size of the output, until the next reset).
    """
    if backend == "cupy":
        from . import cupy_backend
        return cupy_backend.nilif_multistep(x_seq, v, dyn, store_v_seq)
    needs_grad = torch.is_grad_enabled() and (
        x_seq.requires_grad or (v is not None and v.requires_grad))
    if needs_grad:
        return _NILIFTorch.apply(x_seq, v, dyn, store_v_seq, keep_final_state)
    if torch.compiler.is_compiling():
        s_seq, v_last, v_seq, _ = _forward_functional(x_seq, v, dyn, False, store_v_seq)
    else:
        s_seq, v_last, v_seq, _ = _forward_eager(x_seq, v, dyn, False, store_v_seq, keep_final_state)
    return s_seq, v_last, v_seq


class NILIFNode(neuron.BaseNode):
    r"""Normalised integer LIF neuron (NI-LIF, Spike2Former eqs. 16-18).

    .. math::

        U[t] &= H[t-1] + X[t] \\
        S[t] &= \operatorname{clip}(\operatorname{round}(U[t] / V_{th}), 0, D) / N \\
        H[t] &= \beta \, (U[t] - S[t] \, N \, V_{th})

    with :math:`N = D` unless ``norm`` says otherwise. Outputs take the values
    ``{0, 1/N, ..., D/N}``; with the defaults ``{0, 0.25, 0.5, 0.75, 1}``.
    Gradient: straight-through, :math:`\partial S/\partial U = 1/(N V_{th})`
    for :math:`U/V_{th}` in ``grad_window`` (default ``[0, D]``), else 0.

    :param D: largest integer count per step (the paper's D; 4 in its main results).
    :param beta: leak factor in (0, 1] (``tau = 1 / (1 - beta)`` in SpikingJelly's terms);
        1 means no leak (the released code's IF neuron).
    :param v_threshold: potential worth one count (1 in the paper).
    :param detach_reset: detach the reset term from the graph (SpikeYOLO's I-LIF convention).
    :param grad_window: ``(low, high)`` window on :math:`U/V_{th}` where the
        straight-through gradient passes; None means ``(0, D)``.
    :param step_mode: 's' (one step per call, state kept between calls) or
        'm' (input [T, ...], the whole sequence in one call).
    :param backend: 'torch' (fused autograd function; CPU and GPU) or 'cupy'
        (CUDA kernels, CUDA tensors; ``pip install spikezoo[cuda]``).
    :param store_v_seq: keep :math:`H[t]` for every step in ``self.v_seq``.
    :param norm: divisor of the count (None: D). ``norm=1`` gives I-LIF's integer
        output; a constant other than D gives the paper's "norm with const" ablation.
    :param keep_state: keep :math:`H` after a call. ``False`` suits models that reset
        their neurons before every forward: in inference (no gradients, torch backend)
        the last step's reset and leak are skipped and ``v`` stays at rest (0.0), which
        saves two passes over memory and the state's memory.

    ``self.v`` holds :math:`H[t]` in float32. A state whose shape does not match
    the next input (a new batch size) is dropped and the neuron starts from 0,
    as SpikingJelly's nodes do.
    """

    def __init__(self, D: int = 4, beta: float = 0.25, v_threshold: float = 1.0,
                 detach_reset: bool = True, grad_window: Optional[Tuple[float, float]] = None,
                 step_mode: str = "s", backend: str = "torch", store_v_seq: bool = False,
                 norm: Optional[float] = None, keep_state: bool = True):
        dyn = make_dynamics(D, beta, v_threshold, norm, grad_window, detach_reset)
        super().__init__(
            v_threshold=dyn.v_threshold,
            v_reset=None,
            surrogate_function=surrogate.MultiLevelSpikeCount(D, grad_window=(dyn.lo, dyn.hi)),
            detach_reset=dyn.detach_reset,
            step_mode=step_mode,
            store_v_seq=store_v_seq,
        )
        self.D, self.beta, self.norm, self.grad_window = D, dyn.beta, norm, grad_window
        self.backend = backend
        self.keep_state = keep_state

    @property
    def dynamics(self) -> Dynamics:
        """The current parameters, checked; attributes changed after construction take effect here."""
        return make_dynamics(self.D, self.beta, self.v_threshold, self.norm, self.grad_window,
                             self.detach_reset)

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, value: str):
        if value not in BACKENDS:
            raise ValueError(f"unknown NILIFNode backend {value!r}; choose one of {BACKENDS}")
        self._backend = value

    def extra_repr(self) -> str:
        dyn = self.dynamics
        norm = "" if dyn.norm == float(dyn.D) else f", norm={dyn.norm:g}"
        return (f"D={dyn.D}, beta={dyn.beta:g}, v_threshold={dyn.v_threshold:g}{norm}, "
                f"detach_reset={dyn.detach_reset}, grad_window={(dyn.lo, dyn.hi)}, "
                f"step_mode={self.step_mode}, backend={self.backend}")

    def materialize_states(self, inputs, states, step_mode):
        x = inputs[0][0] if step_mode == "m" else inputs[0]
        v = states[0]
        if isinstance(v, torch.Tensor):
            if v.shape != x.shape:
                v = None
            elif v.dtype != torch.float32 or v.device != x.device:
                v = v.to(device=x.device, dtype=torch.float32)
        elif v == 0.0:
            v = None  # a fresh neuron: skip adding a tensor of zeros
        else:
            v = torch.full(x.shape, float(v), dtype=torch.float32, device=x.device)
        return (v, *states[1:])

    def _run(self, x_seq, v, store_v_seq):
        s_seq, v_last, v_seq = nilif_multistep(x_seq, v, self.dynamics, store_v_seq, self.backend,
                                               self.keep_state)
        return s_seq, (0.0 if v_last is None else v_last), v_seq

    def single_step_functional_forward(self, inputs, states, **kwargs):
        s_seq, v_last, _ = self._run(inputs[0].unsqueeze(0), states[0], False)
        return (s_seq[0],), (v_last,)

    def multi_step_functional_forward(self, inputs, states, **kwargs):
        s_seq, v_last, _ = self._run(inputs[0], states[0], False)
        return (s_seq,), (v_last,)

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        if not self.store_v_seq:
            return super().multi_step_forward(x_seq, *args, **kwargs)
        states = self.materialize_states((x_seq,), tuple(self._memories.values()), "m")
        s_seq, v_last, v_seq = self._run(x_seq, states[0], True)
        self.v = v_last
        self.v_seq = v_seq
        return s_seq

