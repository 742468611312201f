"""CPU inference of a spikezoo segmentor: latency, peak memory, stage split, MACs and achieved FLOP/s.

One image [1, 3, size, size], eval mode, random weights (same seed everywhere),
``torch.inference_mode``, ``--threads`` intra-op threads (2). Settings:

- **naive**: BatchNorm not folded, all 7 mask predictions (``all_layers=True``),
  ``(Q K^T) V`` in every decoder attention (the released code's order; its backbone
  attention is ``Q (K^T V)`` already, so that is unchanged) and the mask features
  conv before the mask product (``mask_order='features_first'``).
- the optimisations added one at a time, so that the gain of each shows, up to
- **optimised**: what inference runs: last query state only (the eval default),
  ``Q (K^T V)`` (``product_order='auto'``), the mask product as ``(e W) x + e b``
  instead of ``e (W x + b)`` (``mask_order='auto'``), BN folded (``zoo.fuse``),
  neuron states dropped.
- the optimised row drops the neurons' final membrane states (the models' default,
  ``keep_neuron_states = False``: every forward resets the neurons, so at T = 1 the
  state is never read; the earlier rows keep it, as the released code does).
- the next row adds ``precision='bf16'`` (``zoo.ExecutionOptions``): convolutions, linear
  layers and matrix products on bf16 operands under autocast, fp32 membranes and outputs.
- the last two rows run the optimised network through ``torch.compile`` (``compile=True``), in
  fp32 and in bf16; their first warm-up forward compiles (minutes), and they have no stage split
  (hooks would break the compiled graph). ``--last 4`` measures the optimised fp32 row and these.

The last column is the largest deviation of the outputs (Spike2Former: class and mask
logits of the last prediction) from the naive setting's, relative to their largest
magnitude: folding and product order only change rounding, so it should be ~1e-6 or
0 (spikes absorb most of the differences).

Each setting runs in its own child process, so that its peak RSS (``VmHWM``: the
interpreter, torch's libraries, the weights and the activations) is its own; the
RSS before the first forward is printed beside it. Latency is the median of
``--repeats`` runs after two warm-up runs (and the fastest run, less disturbed by
other processes); the stage split (backbone / pixel decoder / transformer decoder +
SDME, or backbone / neck / head) comes from forward hooks in the same runs. MACs
are those executed (``zoo.complexity.count_macs`` of the same setting);
GFLOP/s = 2 x MACs / median latency, next to a 2048^3 fp32 matmul's GFLOP/s measured
in this run. Other processes on the machine distort every timing: the last column is
the share of the machine's CPU time that they took while the row was measured (from
/proc/stat, less this benchmark's own children), and the load average is printed.

glibc returns every freed buffer of 32 MiB or more to the kernel, so each forward
page-faults its large activations afresh; the children run with
MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ raised (buffers are reused, the
steady state of a serving loop; it costs some RSS) unless ``--keep-malloc`` is given.

    python benchmarks/model_speed.py [--model spike2former_ade20k] [--size 512] [--repeats 5]
                                     [--threads 2] [--profile] [--keep-malloc]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zoo  # noqa: E402
from zoo.complexity import count_macs  # noqa: E402
from zoo.execution import using  # noqa: E402
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
    mask: str = "auto"  # Spike2Former's mask_order
    keep_states: bool = True  # neurons keep their final membrane state (the released code's behaviour)
    precision: str = "fp32"  # ExecutionOptions.precision
    compile: bool = False  # ExecutionOptions.compile (the first warm-up forward compiles)


@dataclass
class Measurement:
    latency: float  # median, s
    fastest: float
    stages: Dict[str, float]  # median per stage group, s
    idle_rss: int  # bytes, model built (and folded), before the first forward
    peak_rss: int
    others_cpu: float = 0.0  # share of the machine's CPU time that other processes took meanwhile
    deviation: float = 0.0  # of the last prediction's masks from the naive setting's, relative


# the optimised path and what is added to it, the last rows of both families
_OPTIMISED_ROWS = [
    Setting("optimised (+ states dropped)", True, False, "auto", keep_states=False),
    Setting("+ bf16 (precision='bf16')", True, False, "auto", keep_states=False, precision="bf16"),
    Setting("optimised, compiled (compile=True)", True, False, "auto", keep_states=False, compile=True),
    Setting("+ bf16, compiled", True, False, "auto", keep_states=False, precision="bf16", compile=True),
]


def settings_for(is_spike2former: bool) -> List[Setting]:
    if not is_spike2former:
        return [Setting("naive", False, False, "auto"), Setting("+ BN folded", True, False, "auto"), *_OPTIMISED_ROWS]
    return [Setting("naive", False, True, "qk_first", "features_first"),
            Setting("+ Q(K^T V)", False, True, "auto", "features_first"),
            Setting("+ last prediction only", False, False, "auto", "features_first"),
            Setting("+ (e W) x mask product", False, False, "auto"),
            Setting("+ BN folded", True, False, "auto"),
            *_OPTIMISED_ROWS]


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def matmul_gflops(repeats: int = 5, n: int = 2048) -> float:
    """The best of ``repeats``: what the machine can do, less what other processes took."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        samples.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(samples) / 1e9


def build(model_name: str, setting: Setting) -> nn.Module:
    torch.manual_seed(0)
    model = zoo.create(model_name).eval()
    if setting.folded:
        fold_batchnorm(model)
    model.set_execution(keep_neuron_states=setting.keep_states, precision=setting.precision, compile=setting.compile)
    return model


def measure(model: nn.Module, setting: Setting, image: torch.Tensor, repeats: int, save_to: str) -> Measurement:
    """Run in a fresh process (its VmHWM is then this setting's peak); the last prediction goes to ``save_to``."""
    family = "spike2former" if hasattr(model, "sdme") else "spikefpn"
    groups = {" + ".join(parts): parts for parts in STAGES[family]}
    spent = dict.fromkeys(groups, 0.0)
    starts: Dict[str, float] = {}
    for label, parts in groups.items() if not setting.compile else ():  # hooks would break the compiled graph
        for part in parts:
            module = getattr(model, part)
            module.register_forward_pre_hook(lambda m, args, part=part: starts.__setitem__(part, time.perf_counter()))
            module.register_forward_hook(lambda m, args, out, part=part, label=label: spent.__setitem__(
                label, spent[label] + time.perf_counter() - starts[part]))
    kwargs = {"all_layers": True} if setting.all_layers else {}
    idle = _status_bytes("VmRSS")
    samples, splits = [], []
    with using(model, product_order=setting.order, mask_order=setting.mask), torch.inference_mode():
        for i in range(2 + repeats):
            spent.update(dict.fromkeys(groups, 0.0))
            start = time.perf_counter()
            out = model(image, **kwargs)
            if i >= 2:
                samples.append(time.perf_counter() - start)
                splits.append(dict(spent))
    stages = {label: statistics.median(s[label] for s in splits) for label in groups}
    outputs = [out["pred_logits"][-1], out["pred_masks"][-1]] if isinstance(out, dict) else [out]
    torch.save(torch.cat([o.flatten() for o in outputs]), save_to)
    return Measurement(statistics.median(samples), min(samples), stages, idle, _status_bytes("VmHWM"))


def _machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_child(args, setting: Setting, save_to: str) -> Measurement:
    """Measure one setting in a fresh process; also how much CPU other processes took meanwhile."""
    env = os.environ if args.keep_malloc else {**os.environ, **_MALLOC_ENV}
    command = [sys.executable, __file__, "--child", json.dumps(dataclasses.asdict(setting)), "--model", args.model,
               "--size", str(args.size), "--repeats", str(args.repeats), "--threads", str(args.threads),
               "--save-to", save_to]
    machine, ours, start = _machine_cpu_seconds(), _children_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    others = (_machine_cpu_seconds() - machine) - (_children_cpu_seconds() - ours)
    measurement = Measurement(**json.loads(done.stdout.strip().splitlines()[-1]))
    measurement.others_cpu = max(0.0, others) / ((time.perf_counter() - start) * os.cpu_count())
    return measurement


def profile(model: nn.Module, image: torch.Tensor, rows: int = 20) -> str:
    with torch.inference_mode():
        model(image)  # warm-up
        with torch.profiler.profile() as prof:
            model(image)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)


def markdown(settings: List[Setting], results: List[Measurement], macs: List[int], matmul: float) -> str:
    labels = list(results[0].stages)
    header = (["setting", "median s", "fastest s"] + [f"{label} s" for label in labels]
              + ["RSS before GB", "peak RSS GB", "GMACs", "GFLOP/s", "of matmul", "naive / this", "others' CPU",
                 "deviation"])
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    naive = results[0].latency
    for setting, r, m in zip(settings, results, macs):
        gflops = 2 * m / r.latency / 1e9
        cells = ([setting.name, f"{r.latency:.3f}", f"{r.fastest:.3f}"] + [f"{r.stages[x]:.3f}" for x in labels]
                 + [f"{r.idle_rss / 2**30:.2f}", f"{r.peak_rss / 2**30:.2f}", f"{m / 1e9:.2f}", f"{gflops:.1f}",
                    f"{100 * gflops / matmul:.0f}%", f"{naive / r.latency:.2f}x", f"{100 * r.others_cpu:.0f}%",
                    f"{r.deviation:.1e}"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="spike2former_ade20k")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true", help="also print the top ops of the optimised path")
    parser.add_argument("--keep-malloc", action="store_true", help="keep glibc's default malloc settings")
    parser.add_argument("--last", type=int, default=None,
                        help="only the last N settings (e.g. 2: optimised fp32 against bf16); the first is the baseline")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # one setting, as JSON: measured in this process
    parser.add_argument("--save-to", help=argparse.SUPPRESS)  # where the child saves its last prediction
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    image = torch.randn(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
    if args.child:
        setting = Setting(**json.loads(args.child))
        measurement = measure(build(args.model, setting), setting, image, args.repeats, args.save_to)
        print(json.dumps(dataclasses.asdict(measurement)))
        return

    load_before = os.getloadavg()[0]
    with torch.device("meta"):
        model = zoo.create(args.model)
    settings = settings_for(hasattr(model, "sdme"))
    if args.last:
        settings = settings[-args.last:]
    macs = [count_macs(model, (args.size, args.size), product_order_override=s.order, mask_order_override=s.mask,
                       **({"all_layers": True} if s.all_layers else {})).total for s in settings]
    matmul = matmul_gflops()
    with tempfile.TemporaryDirectory() as folder:
        paths = [os.path.join(folder, f"{i}.pt") for i in range(len(settings))]
        results = [run_child(args, s, path) for s, path in zip(settings, paths)]
        reference = torch.load(paths[0])
        for r, path in zip(results, paths):
            r.deviation = float((torch.load(path) - reference).abs().max() / reference.abs().max())
    print(f"{args.model}, {args.size}x{args.size}, batch 1, {args.threads} threads, torch {torch.__version__}, "
          f"malloc thresholds {'default' if args.keep_malloc else 'raised'}; 2048^3 fp32 matmul (best of 5) "
          f"{matmul:.1f} GFLOP/s; load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after\n")
    print(markdown(settings, results, macs, matmul))
    if args.profile:
        optimised = settings[-1]
        print(f"\nTop ops of '{optimised.name}' (self CPU time, one forward after a warm-up):\n")
        print(profile(build(args.model, optimised), image))


if __name__ == "__main__":
    main()
