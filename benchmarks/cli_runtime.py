"""The command-line tools quiet and next to one busy process, with and without ``recipes.runtime``.

Runs ``python -m recipes train camvid`` (real CamVid, batch 4, 352x480 crops, the recipe's one
data-loading worker) and ``python -m recipes predict`` (CamVid val images, 360x480) as a user
would, four ways: PyTorch's defaults (``SPIKEZOO_RUNTIME=off``: OpenMP threads spin ~3 ms while
they wait, glibc returns big freed buffers) and the CLI's own set-up (``recipes.runtime``: ~10 us
spins, intra-op threads from the cores, freed memory kept), each on a quiet machine and next to one CPU-bound
process (``while True: pass``). Training iterations are timed from ``log.csv`` (the first, which
starts the workers, is left out); predictions from the time each image's output line appears.

    python benchmarks/cli_runtime.py [--iters 8] [--loaded-iters 5] [--images 6] [--data CAMVID_ROOT]

Target (issue 11): with the CLI's set-up, the loaded time at most 2.5x the quiet time.
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def camvid_root() -> str:
    """The ``camvid`` recipe's ``data.root``, resolved as ``python -m recipes`` run from the repository does."""
    sys.path.insert(0, str(REPO))
    from recipes.config import dataset_path, load_recipe
    return str((REPO / dataset_path(load_recipe("camvid")["data"]["root"])).resolve())


def environment_without_runtime_settings() -> dict:
    """This environment less what would override the CLI's own set-up (OpenMP, threads, malloc)."""
    return {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "SPIKEZOO_RUNTIME")
            and not k.startswith("MALLOC_")}


def iteration_times(log_csv: Path) -> list:
    """Per-iteration seconds from log.csv's running mean (``seconds_per_iter`` after ``iteration`` steps)."""
    with open(log_csv) as handle:
        rows = [(int(r["iteration"]), float(r["seconds_per_iter"])) for r in csv.DictReader(handle)]
    elapsed = [0.0] + [n * mean for n, mean in rows]
    return [b - a for a, b in zip(elapsed, elapsed[1:])]


def run_train(env: dict, data: str, iters: int, workdir: Path, overrides=()) -> list:
    """Seconds of each iteration but the first of ``python -m recipes train camvid`` (``--set overrides``)."""
    out = workdir / f"run-{time.monotonic_ns()}"
    sets = [f"data.root={data}", f"train.iters={iters}", "train.log_interval=1", f"train.eval_interval={iters + 1}",
            f"train.checkpoint_interval={iters + 1}", *overrides]
    subprocess.run([sys.executable, "-m", "recipes", "train", "camvid", "--out", str(out), "--no-progress",
                    "--device", "cpu", *[arg for item in sets for arg in ("--set", item)]],
                   cwd=REPO, env=env, check=True, capture_output=True, text=True)
    return iteration_times(out / "log.csv")[1:]


def time_rows(rows, data: str, iters: int, rounds: int) -> dict:
    """``{name: seconds of every measured iteration}`` for rows ``(name, env, overrides)`` of the camvid
    recipe through :func:`run_train`, the whole list run ``rounds`` times, interleaved, to even out a shared
    VM's drift; then prints the conditions of the run (cores, rounds, load) above the caller's table."""
    times = {name: [] for name, _, _ in rows}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(rounds):
            for name, env, overrides in rows:
                measured = run_train({**environment_without_runtime_settings(), **env}, data, iters, Path(tmp),
                                     overrides)
                times[name] += measured
                print(f"  round {round_ + 1}: {name}: {statistics.median(measured):.3f} s/it", file=sys.stderr)
    print(f"\ncamvid recipe, batch 4, 352x480, {os.cpu_count()} cores, {rounds} round(s) of {iters} "
          f"iterations per row, load average {os.getloadavg()[0]:.2f} at the end\n")
    return times


def run_predict(env: dict, images: list, workdir: Path) -> list:
    process = subprocess.Popen([sys.executable, "-m", "recipes", "predict", "--model", "spike2former_camvid",
                                *map(str, images), "--out", str(workdir / "pred")],
                               cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    stamps = [time.perf_counter() for line in process.stdout if " -> " in line]
    if process.wait() != 0:
        raise SystemExit("predict failed")
    return [b - a for a, b in zip(stamps, stamps[1:])]


class BusyProcess:
    """One CPU-bound competitor for the duration of a ``with`` block."""

    def __enter__(self):
        self.process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=camvid_root(), help="CamVid folder (default: the camvid recipe's)")
    parser.add_argument("--iters", type=int, default=8, help="training iterations per quiet run")
    parser.add_argument("--loaded-iters", type=int, default=5,
                        help="training iterations per loaded run (PyTorch's defaults take ~30 s each there)")
    parser.add_argument("--images", type=int, default=6, help="images per predict run")
    args = parser.parse_args()
    images = sorted((Path(args.data) / "val").glob("*.png"))[: args.images]
    if len(images) < 2:
        raise SystemExit(f"need CamVid val images under {args.data}/val")

    base_env = environment_without_runtime_settings()
    setups = {"PyTorch defaults": {**base_env, "SPIKEZOO_RUNTIME": "off"}, "CLI set-up (default)": base_env}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name, env in setups.items():
            for loaded in (False, True):
                iters = args.loaded_iters if loaded else args.iters
                if loaded:
                    with BusyProcess():
                        train = run_train(env, args.data, iters, workdir)
                        predict = run_predict(env, images, workdir)
                else:
                    train = run_train(env, args.data, iters, workdir)
                    predict = run_predict(env, images, workdir)
                rows.append((name, loaded, statistics.median(train), statistics.median(predict)))
                shutil.rmtree(workdir / "pred", ignore_errors=True)
                print(f"  {name}, {'one busy process' if loaded else 'quiet'}: train {rows[-1][2]:.2f} s/it "
                      f"(of {len(train)}), predict {rows[-1][3]:.2f} s/image (of {len(predict)})", file=sys.stderr)

    print(f"\n{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at the end; medians\n")
    print("| set-up | machine | train s/iter | predict s/image | train: loaded / quiet | predict: loaded / quiet |")
    print("|---|---|---|---|---|---|")
    quiet = {name: (t, p) for name, loaded, t, p in rows if not loaded}
    for name, loaded, t, p in rows:
        ratios = (f"{t / quiet[name][0]:.2f}x | {p / quiet[name][1]:.2f}x" if loaded else " | ")
        print(f"| {name} | {'one busy process' if loaded else 'quiet'} | {t:.2f} | {p:.2f} | {ratios} |")
    (old_t, old_p), (new_t, new_p) = quiet["PyTorch defaults"], quiet["CLI set-up (default)"]
    print(f"\nquiet, PyTorch defaults / CLI set-up: train {old_t / new_t:.2f}x, predict {old_p / new_p:.2f}x")


if __name__ == "__main__":
    main()
