"""CPU inference of a spikezoo segmentor: latency, peak memory, stage split, MACs and achieved FLOP/s.

One image [1, 3, size, size], eval mode, random weights, ``torch.inference_mode``,
``--threads`` intra-op threads (2). Every figure is measured in this same run:

- **optimised**: what ``predict``-style inference should run: BatchNorm folded
  (``zoo.fuse.fold_batchnorm``), the last query state only (Spike2Former's eval
  default), attention in the cheaper ``Q (K^T V)`` order (``product_order='auto'``).
- **naive**: the same weights unfolded, all 7 mask predictions (``all_layers=True``)
  and ``(Q K^T) V`` in every decoder attention (the released code's order; the
  backbone attention is ``Q (K^T V)`` in the released code too, so it is unchanged).
- between them, the optimisations added one at a time, so the gain of each shows.

Latency is the median of ``--repeats`` runs after two warm-up runs; the stage split
(backbone / pixel decoder / transformer decoder + SDME, or backbone / neck / head)
comes from forward hooks on the model's top-level parts in the same runs. MACs are
those executed (``zoo.complexity.count_macs`` of the same configuration), and
GFLOP/s = 2 x MACs / latency, next to the GFLOP/s of a 2048^3 fp32 matmul measured
here. Peak RSS is the process's high-water mark (``VmHWM``), reset before each
configuration through ``/proc/self/clear_refs`` so that each row is its own peak;
it includes the interpreter, torch and the weights (the idle RSS is printed too).

Other processes on the machine distort every timing: the 1-minute load average is
printed before and after.

glibc returns every freed buffer of 32 MiB or more to the kernel, so each forward
page-faults its large activations afresh; the script re-runs itself with
MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised (buffers are reused, the
steady state of a serving loop) unless ``--keep-malloc`` is given.

    python benchmarks/model_speed.py [--model spike2former_ade20k] [--size 512] [--repeats 5]
                                     [--threads 2] [--profile] [--keep-malloc]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from zoo.complexity import count_macs, product_order  # noqa: E402
from zoo.fuse import fold_batchnorm  # noqa: E402

_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}
STAGES = {"spike2former": (("backbone",), ("pixel_decoder",), ("transformer_decoder", "sdme")),
          "spikefpn": (("backbone",), ("neck",), ("head",))}


@dataclass
class Setting:
    name: str
    folded: bool
    all_layers: bool
    order: str  # product_order of every decoder attention


@dataclass
class Result:
    setting: Setting
    latency: float
    stages: Dict[str, float]
    peak_rss: int
    macs: int


def peak_rss_reset() -> bool:
    """Reset the kernel's RSS high-water mark of this process (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss() -> int:
    """Bytes: VmHWM from /proc (getrusage's ru_maxrss, which cannot be reset, elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def matmul_gflops(repeats: int = 5, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        samples.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(samples) / 1e9


def stage_groups(model: nn.Module) -> Dict[str, tuple]:
    family = "spike2former" if hasattr(model, "sdme") else "spikefpn"
    return {" + ".join(parts): parts for parts in STAGES[family]}


def run_setting(model: nn.Module, setting: Setting, image: torch.Tensor, repeats: int) -> Result:
    groups = stage_groups(model)
    spent = {label: 0.0 for label in groups}
    starts: Dict[str, float] = {}
    handles = []
    for label, parts in groups.items():
        for part in parts:
            module = getattr(model, part)
            handles.append(module.register_forward_pre_hook(
                lambda m, args, part=part: starts.__setitem__(part, time.perf_counter())))
            handles.append(module.register_forward_hook(
                lambda m, args, out, part=part, label=label:
                spent.__setitem__(label, spent[label] + time.perf_counter() - starts[part])))
    kwargs = {"all_layers": True} if setting.all_layers else {}
    samples, splits = [], []
    peak_rss_reset()
    with ExitStack() as stack:
        stack.enter_context(product_order(model, setting.order))
        stack.enter_context(torch.inference_mode())
        for i in range(2 + repeats):
            for label in spent:
                spent[label] = 0.0
            start = time.perf_counter()
            model(image, **kwargs)
            if i >= 2:
                samples.append(time.perf_counter() - start)
                splits.append(dict(spent))
    for h in handles:
        h.remove()
    median = statistics.median(samples)
    stages = {label: statistics.median(s[label] for s in splits) for label in groups}
    macs = count_macs(model, tuple(image.shape[-2:]), product_order_override=setting.order, **kwargs).total
    return Result(setting, median, stages, peak_rss(), macs)


def profile(model: nn.Module, image: torch.Tensor, rows: int = 20) -> str:
    with torch.inference_mode(), torch.profiler.profile(record_shapes=False) as prof:
        model(image)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def markdown(results: List[Result], matmul: float) -> str:
    labels = list(results[0].stages)
    lines = ["| setting | folded BN | predictions | attention | latency s | " + " | ".join(labels)
             + " | peak RSS GB | GMACs | GFLOP/s | % of matmul | vs naive |",
             "|---" * (11 + len(labels) - 1) + "|"]
    naive = next(r for r in results if r.setting.name == "naive")
    for r in results:
        s = r.setting
        gflops = 2 * r.macs / r.latency / 1e9
        stage_cells = " | ".join(f"{r.stages[label]:.3f}" for label in labels)
        lines.append(f"| {s.name} | {'yes' if s.folded else 'no'} | {'all' if s.all_layers else 'last'} | "
                     f"{'(QK^T)V' if s.order == 'qk_first' else 'auto: Q(K^T V)'} | {r.latency:.3f} | "
                     f"{stage_cells} | {r.peak_rss / 2**30:.2f} | {r.macs / 1e9:.2f} | {gflops:.1f} | "
                     f"{100 * gflops / matmul:.0f}% | {naive.latency / r.latency:.2f}x |")
    return "\n".join(lines)


def main() -> List[Result]:
    if "--keep-malloc" not in sys.argv and any(os.environ.get(k) != v for k, v in _MALLOC_ENV.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **_MALLOC_ENV})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spike2former_ade20k")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the top ops of the optimised path")
    parser.add_argument("--keep-malloc", action="store_true", help="keep glibc's default malloc settings")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"{args.model} {args.size}x{args.size} batch 1, {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}, malloc thresholds {'default' if args.keep_malloc else 'raised'}, "
          f"load average {os.getloadavg()[0]:.2f}")
    model = zoo.create(args.model).eval()
    image = torch.randn(1, 3, args.size, args.size)
    matmul = matmul_gflops()
    is_spike2former = hasattr(model, "sdme")
    settings = [Setting("naive", False, is_spike2former, "qk_first")]
    if is_spike2former:
        settings += [Setting("+ Q(K^T V)", False, True, "auto"), Setting("+ last prediction", False, False, "auto")]
    settings += [Setting("optimised", True, False, "auto")]
    folded = fold_batchnorm(copy.deepcopy(model))
    idle = current_rss()
    results = [run_setting(folded if s.folded else model, s, image, args.repeats) for s in settings]
    print(f"2048^3 fp32 matmul: {matmul:.1f} GFLOP/s; idle RSS with both models {idle / 2**30:.2f} GB; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print(markdown(results, matmul))
    if args.profile:
        print("\nTop ops of the optimised path (self CPU time):\n")
        print(profile(folded, image))
    return results


if __name__ == "__main__":
    main()
