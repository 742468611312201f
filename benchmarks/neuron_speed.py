"""NILIFNode speed: forward + backward against SpikingJelly's ILIFNode and one add.

Input [T, 8, 256, 32, 32] float32, D=4, beta=0.25. Every ratio compares
timings taken in this same run (median of repeated runs after warm-up):

- 'vs SJ ILIF': SpikingJelly ``ILIFNode(tau=1/(1-beta), MultiLevelSpikeCount(D),
  detach_reset=True)(x) / D`` (eager) time / NILIFNode time; higher is better.
- 'vs add': NILIFNode time / the time of one elementwise ``x + y`` over the same
  [T, ...] tensor (the memory-bound floor); lower is better.

Also prints the bytes NILIFNode keeps for backward per element and step.

glibc returns every buffer of 32 MiB or more to the kernel on free, so each
call of either side would page-fault its outputs afresh; on a VM that costs
more than the arithmetic and swamps both sides. The script therefore re-runs
itself with MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised (buffers are
then reused, as in a training loop's steady state); --keep-malloc turns this off.

    python benchmarks/neuron_speed.py [--threads 2] [--device cpu|cuda] [--backends torch,cupy]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spikingjelly.activation_based import neuron as sj_neuron, surrogate  # noqa: E402

from neurons import NILIFNode  # noqa: E402


def timed(fn, device, repeats, warmup=2):
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def fwd_bwd(node, x, grad, divide=None):
    def run():
        node.reset()
        xr = x.detach().requires_grad_(True)
        out = node(xr)
        if divide is not None:
            out = out / divide
        out.backward(grad)
    return run


def saved_bytes_per_element_step(node, x):
    """Bytes of the tensors autograd keeps between forward and backward."""
    packed = []

    def pack(t):
        packed.append(t)
        return t

    node.reset()
    xr = x.detach().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        node(xr)
    unique = {t.data_ptr(): t.numel() * t.element_size() for t in packed}
    return sum(unique.values()) / x.numel()


_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def main():
    if "--keep-malloc" not in sys.argv and any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backends", default="torch")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--T", default="1,4")
    parser.add_argument("--keep-malloc", action="store_true", help="keep glibc's default malloc settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    D, beta = 4, 0.25
    print(f"device={device} threads={torch.get_num_threads()} input=[T,8,256,32,32] fp32 D={D} beta={beta}")
    header = f"{'T':>2} {'backend':>8} {'NILIF ms':>9} {'SJ ms':>8} {'add ms':>8} {'vs SJ ILIF':>11} {'vs add':>7} {'saved B/elem':>13}"
    print(header)
    rows = []
    for T in map(int, args.T.split(",")):
        gen = torch.Generator().manual_seed(0)
        x = (torch.randn(T, 8, 256, 32, 32, generator=gen) * 2).to(device)
        grad = torch.randn(x.shape, generator=gen).to(device)
        y = torch.randn(x.shape, generator=gen).to(device)
        t_add = timed(lambda: torch.add(x, y), device, args.repeats)
        sj = sj_neuron.ILIFNode(tau=1.0 / (1.0 - beta), surrogate_function=surrogate.MultiLevelSpikeCount(D),
                                detach_reset=True, step_mode="m")
        t_sj = timed(fwd_bwd(sj, x, grad, divide=D), device, max(3, args.repeats // 2))
        for backend in args.backends.split(","):
            node = NILIFNode(D=D, beta=beta, step_mode="m", backend=backend)
            t_ni = timed(fwd_bwd(node, x, grad), device, args.repeats)
            saved = saved_bytes_per_element_step(node, x)
            rows.append((T, backend, t_ni, t_sj, t_add))
            print(f"{T:>2} {backend:>8} {t_ni*1e3:9.2f} {t_sj*1e3:8.2f} {t_add*1e3:8.2f} "
                  f"{t_sj/t_ni:10.1f}x {t_ni/t_add:6.1f}x {saved:13.2f}")
    return rows


if __name__ == "__main__":
    main()
