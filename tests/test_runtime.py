"""recipes.runtime: the CLIs' OpenMP wait policy, thread count and malloc settings (in fresh processes,
since OpenMP reads its settings once, when torch loads it)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes import runtime

REPO = Path(__file__).resolve().parents[1]

PROBE = """
import ctypes, json, os, sys
{before}
from recipes import runtime
runtime.prepare()
import torch
choices = runtime.configure({threads})

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
already = libc.mallinfo2().hblkhd
buffer = ctypes.create_string_buffer(64 << 20)
mmapped = libc.mallinfo2().hblkhd - already
print(json.dumps({{"spin": os.environ.get("GOMP_SPINCOUNT"), "threads": torch.get_num_threads(),
                   "line": str(choices), "mmapped_mb": mmapped / 2**20}}))
"""


def probe(env_extra=None, before="", threads=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "SPIKEZOO_RUNTIME", "LD_PRELOAD")
           and not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    result = subprocess.run([sys.executable, "-c", PROBE.format(before=before, threads=threads)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallinfo2")
def test_cli_set_up_and_what_it_leaves_alone():
    chosen = probe()
    assert chosen["spin"] == "1000" and chosen["threads"] == runtime.default_threads()
    assert chosen["mmapped_mb"] < 1                      # the 64 MB buffer came from the heap
    assert chosen["line"].startswith("runtime: ") and "GOMP_SPINCOUNT=1000" in chosen["line"]

    untouched = probe({"SPIKEZOO_RUNTIME": "off"})
    assert untouched["spin"] is None and untouched["mmapped_mb"] >= 64   # glibc mmaps it by default
    assert "SPIKEZOO_RUNTIME=off" in untouched["line"]

    users = probe({"OMP_WAIT_POLICY": "ACTIVE", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"})
    assert users["spin"] is None and users["threads"] == 1 and users["mmapped_mb"] >= 64
    assert "OMP_WAIT_POLICY=ACTIVE" in users["line"] and "OMP_NUM_THREADS" in users["line"]
    assert "MALLOC_*" in users["line"]

    late = probe(before="import torch")
    assert late["spin"] is None and "torch was imported before" in late["line"]
    assert probe(threads=1)["threads"] == 1


def test_threads_are_shared_among_local_ranks(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    assert runtime.default_threads() == 2
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "16")
    assert runtime.default_threads() == 1
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert runtime.default_threads() == 8


def test_the_cli_reports_its_set_up(tmp_path):
    Image.fromarray(np.zeros((32, 48, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    result = subprocess.run([sys.executable, "-m", "recipes", "predict", "--model", "spike2former_camvid",
                             str(tmp_path / "black.png"), "--out", str(tmp_path / "pred"), "--threads", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "runtime: 1 intra-op thread; OpenMP wait: spin 1000 rounds" in result.stderr


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_both_clis_refuse_a_thread_count_below_one(value, capsys):
    from analysis.__main__ import build_parser as analysis_parser
    from recipes.__main__ import build_parser as recipes_parser
    for parser, argv in ((recipes_parser(), ["predict", "--model", "m", "a.png", "--out", "o"]),
                         (analysis_parser(), ["firing", "--model", "m", "--data", "d", "--out", "o"])):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*argv, "--threads", value])
        assert exit_.value.code == 2 and "expected a positive integer" in capsys.readouterr().err
    assert recipes_parser().parse_args(["predict", "--model", "m", "a.png", "--out", "o", "--threads", "3"]).threads == 3
