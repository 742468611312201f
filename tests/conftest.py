"""Shared test helpers: the official state_dict key lists (tests/data), CamVid (the real copy when a
data root holds it, else one built from the bundled sample frames), the registered segmentors at their tiny test widths, and weights that make tiny random models fire."""
import gzip
from pathlib import Path

import pytest

import zoo
from zoo.registry import get_test_args

# one gzipped ``key<TAB>shape`` line per tensor of each official model's state_dict
OFFICIAL_KEYS = Path(__file__).resolve().parent / "data" / "official_keys"


def _camvid_root() -> Path:
    from recipes.config import data_root
    return (data_root() / "camvid").resolve()


# real CamVid (SegNet layout) under the data root ($SPIKEZOO_DATA, else ./data), when it is there
CAMVID = _camvid_root()
REAL_CAMVID = (CAMVID / "train.txt").is_file()
# the SegNet split's sizes, which only the real copy has
CAMVID_SPLIT_SIZES = {"train": 367, "val": 101}


@pytest.fixture(scope="session")
def camvid_data(tmp_path_factory):
    """A CamVid root in the SegNet layout: the real data when the data root holds it; otherwise a small one
    built from the package's sample frames (``zoo/samples/camvid``, three real val frames with their labels)
    in both splits, so that the CamVid tests run in every clone. ``REAL_CAMVID`` says which."""
    if REAL_CAMVID:
        return CAMVID
    from PIL import Image
    from zoo.samples import sample_frames
    root = tmp_path_factory.mktemp("camvid")
    for split in ("train", "val"):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        lines = []
        for frame in sample_frames("camvid"):
            Image.open(frame.image).convert("RGB").save(root / split / f"{frame.name}.png")
            (root / f"{split}annot" / f"{frame.name}.png").write_bytes(frame.label.read_bytes())
            lines.append(f"{split}/{frame.name}.png {split}annot/{frame.name}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def official_shapes(tsv, prefix="", exclude=()):
    """``key -> shape`` of an official state_dict dump ``tests/data/official_keys/<name>.tsv.gz``, for
    the keys under ``prefix`` (stripped) and not under any ``exclude`` prefix."""
    tsv = Path(tsv)
    shapes = {}
    with gzip.open(tsv.with_name(tsv.name + ".gz"), "rt") as lines:
        for line in lines.read().splitlines():
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


def segmentors():
    """Every registered segmentation architecture: those that register tiny test arguments."""
    return [n for n in zoo.list_models() if get_test_args(n) and zoo.get_pretrained_cfg(n).task != "backbone"]


def tiny(name, **kwargs):
    """A registered segmentor at the tiny widths it registers (64x64 inputs run in milliseconds)."""
    return zoo.create(name, **{**get_test_args(name), **kwargs})


TINY_SPIKE2FORMER = get_test_args("spike2former_ade20k")
TINY_SPIKEFPN = get_test_args("spikefpn_ade20k")


def lively(model, images, seed=0, grid=256.0):
    """Random dyadic weights, BN statistics calibrated on ``images`` with random affine
    parameters (mean > 0 so that neurons fire), SDTE layer scales raised from 1e-6 to 0.5.
    Freshly initialised tiny models are nearly silent, which would let comparisons pass trivially."""
    import torch
    import torch.nn as nn
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
                w = torch.randn(m.weight.shape, generator=g) * (2.0 / m.weight[0].numel()) ** 0.5
                m.weight.copy_(torch.round(w * grid) / grid if grid else w)
                if m.bias is not None:
                    b = torch.randn(m.bias.shape, generator=g) * 0.1
                    m.bias.copy_(torch.round(b * grid) / grid if grid else b)
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g))
                m.momentum = None  # the running statistics become those of this one batch
                m.reset_running_stats()
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("gamma"):
                p.fill_(0.5)
        model.train()
        model(images)
    return model.eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny models: they gain nothing from threads, and on a busy
    2-core machine OpenMP threads waiting for each other make every forward many times slower."""
    import torch
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
