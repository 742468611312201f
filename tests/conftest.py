"""Shared test paths: ../shared beside the checkout (the CamVid data and the official key lists)."""
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
OFFICIAL_KEYS = SHARED / "reference" / "official_keys"
CAMVID = SHARED / "data" / "camvid"


def official_shapes(tsv, prefix="", exclude=()):
    """``key -> shape`` of an official state_dict dump (one ``key<TAB>shape`` per line), for the
    keys under ``prefix`` (stripped) and not under any ``exclude`` prefix; skips if the dump is absent."""
    import pytest
    tsv = Path(tsv)
    if not tsv.exists():
        pytest.skip(f"{tsv} not present")
    shapes = {}
    for line in tsv.read_text().splitlines():
        key, shape = line.split("\t")
        if key.startswith(prefix) and not key.startswith(tuple(exclude)):
            shapes[key[len(prefix):]] = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
    return shapes


def synthetic_official_state(tsv, prefix="", exclude=(), seed=0):
    """Random tensors of the official shapes; each ``num_batches_tracked`` gets a distinct value,
    so that every tensor can be found again after conversion."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_shapes(tsv, prefix, exclude).items():
        state[key] = (torch.tensor(len(state) + 1) if key.endswith("num_batches_tracked")
                      else torch.randn(shape, generator=gen))
    return state
