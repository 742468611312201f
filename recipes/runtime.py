"""How the command-line tools use the machine: how long OpenMP threads spin, intra-op threads, malloc.

PyTorch's defaults suit a machine the job has to itself. A spiking step is thousands of small
operations, and between two of them libgomp's idle threads spin for about 3 ms (300,000 rounds)
before they sleep: next to any other busy process (a second run, the data loader's worker, a
notebook) the spinners take the time slices the working threads need. And glibc returns every
freed buffer of 32 MB or more to the kernel, so each reuse page-faults afresh.

:func:`prepare` (before ``import torch``) and :func:`configure` (after it) set, unless the user
already chose:

- ``GOMP_SPINCOUNT=1000``: idle OpenMP threads spin about 10 us, then sleep (libgomp's own value
  when it knows the cores are oversubscribed). Measured with ``benchmarks/cli_runtime.py`` on
  2 cores, a CamVid iteration next to one busy process ran at 1.9x its quiet time against 2.7-3.5x
  with the default spin, and the quiet time did not get worse; ``OMP_WAIT_POLICY=PASSIVE`` (no
  spin) was as robust under load but 20-40% slower on a quiet machine. OpenMP reads this once,
  when PyTorch loads it, so ``python -m recipes`` and ``python -m analysis`` set it before
  importing torch; when torch was imported first it cannot take effect and the report says so.
  Left alone when ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set. (PyTorch builds on Intel's
  OpenMP read ``KMP_BLOCKTIME`` instead, which is left to the user.)
- intra-op threads: the cores this process may run on (``os.sched_getaffinity``), divided by the
  local DDP ranks (``LOCAL_WORLD_SIZE``), at least one. Data-loading workers are not subtracted:
  they wait while the step computes, and with short spins they no longer contend.
- glibc malloc (via ``mallopt``): freed memory is kept for reuse rather than returned to the
  kernel (``M_MMAP_MAX=0``: large buffers come from the heap; ``M_TRIM_THRESHOLD``: the heap is not
  trimmed). Skipped under another allocator (``LD_PRELOAD`` of jemalloc or tcmalloc), when a
  ``MALLOC_*`` variable is set, or off glibc.

Each choice is reported in one log line. ``SPIKEZOO_RUNTIME=off`` leaves everything as PyTorch has it
(for comparisons); ``OMP_NUM_THREADS`` and ``--threads`` set the thread count.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import sys
from dataclasses import dataclass, field
from typing import List, Optional

__all__ = ["prepare", "configure", "RuntimeChoices", "default_threads", "add_threads_option"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_KEEP_FREED_BYTES = 2 ** 31 - 1  # mallopt takes an int: the largest trim threshold it accepts


@dataclass
class RuntimeChoices:
    """What :func:`configure` set, and why the rest was left alone; ``str()`` is the log line."""

    threads: Optional[int] = None
    openmp_wait: Optional[str] = None
    malloc: Optional[str] = None
    notes: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        parts = [f"{self.threads} intra-op thread{'s' if self.threads != 1 else ''}" if self.threads else None,
                 f"OpenMP wait: {self.openmp_wait}" if self.openmp_wait else None,
                 f"malloc: {self.malloc}" if self.malloc else None, *self.notes]
        return "runtime: " + "; ".join(p for p in parts if p)


def _disabled() -> bool:
    return os.environ.get("SPIKEZOO_RUNTIME", "").lower() in ("off", "0", "false", "no")


_SPIN_ROUNDS = "1000"
_WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
_spin_set_here = False  # prepare() chose the spin count (else the user did, or nobody)


def prepare() -> None:
    """Shorten OpenMP's spin-wait (``GOMP_SPINCOUNT``) unless the user chose one; run before ``import torch``."""
    global _spin_set_here
    if _disabled() or "torch" in sys.modules or any(v in os.environ for v in _WAIT_VARIABLES):
        return
    os.environ["GOMP_SPINCOUNT"] = _SPIN_ROUNDS
    _spin_set_here = True


def default_threads() -> int:
    """This process's share of the cores it may run on (divided among the local DDP ranks)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, cores // ranks)


def _keep_freed_memory() -> Optional[str]:
    """mallopt so that glibc keeps freed buffers for reuse; None where that does not apply."""
    preload = os.environ.get("LD_PRELOAD", "")
    if any(name in preload for name in ("jemalloc", "tcmalloc", "mimalloc")):
        return f"left to {os.path.basename(preload.split(':')[0])} (LD_PRELOAD)"
    if any(key.startswith("MALLOC_") for key in os.environ):
        return "left to the MALLOC_* environment"
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None  # not glibc (musl has no mallopt)
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if mallopt(_M_MMAP_MAX, 0) != 1 or mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES) != 1:
        return "glibc defaults (mallopt refused)"
    return "glibc keeps freed memory for reuse (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2G)"


def configure(threads: Optional[int] = None) -> RuntimeChoices:
    """Apply the choices of this module's docstring (after ``import torch``); ``threads`` overrides the count."""
    import torch

    choices = RuntimeChoices()
    if _disabled() and threads is None:
        choices.notes.append("left as PyTorch sets it (SPIKEZOO_RUNTIME=off)")
        choices.threads = torch.get_num_threads()
        return choices
    if threads is None and "OMP_NUM_THREADS" in os.environ:
        choices.threads = torch.get_num_threads()
        choices.notes.append("thread count from OMP_NUM_THREADS")
    else:
        choices.threads = threads or default_threads()
        torch.set_num_threads(choices.threads)
    if _disabled():
        return choices
    if _spin_set_here:
        choices.openmp_wait = f"spin {_SPIN_ROUNDS} rounds, then sleep (GOMP_SPINCOUNT={_SPIN_ROUNDS})"
    elif any(v in os.environ for v in _WAIT_VARIABLES):
        choices.openmp_wait = "as set: " + ", ".join(f"{v}={os.environ[v]}" for v in _WAIT_VARIABLES
                                                     if v in os.environ)
    else:
        choices.notes.append("OpenMP's default spin-wait kept: torch was imported before "
                             "recipes.runtime.prepare()")
    choices.malloc = _keep_freed_memory()
    return choices


def add_threads_option(parser: argparse.ArgumentParser) -> None:
    """The CLIs' ``--threads N`` (a positive int; default: :func:`default_threads`)."""
    def positive(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
        return int(text)
    parser.add_argument("--threads", type=positive, default=None,
                        help="intra-op threads (default: this process's share of the cores; see recipes.runtime)")
