"""The training engine and CLI on a tiny CamVid-layout fixture: resume, DDP, and real CamVid end to end."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from recipes import config as cfg_lib
from recipes import engine

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = dict(embed_dims=[8, 16, 32, 40], backbone_heads=2, backbone_depths=[1, 1], feat_channels=16,
                  encoder_layers=1, sdte_ffn_channels=32, sdda_groups=2, decoder_layers=2, decoder_heads=2,
                  decoder_ffn_channels=32, num_queries=5)


@pytest.fixture(scope="module")
def camvid_fixture(tmp_path_factory):
    """8 train and 3 val images of 64x96 in the SegNet layout, with void (11) pixels."""
    root = tmp_path_factory.mktemp("camvid")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 3)):
        (root / split).mkdir()
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(count):
            label = np.repeat(rng.integers(0, 11, size=(8, 12)), 8, axis=0).repeat(8, axis=1).astype(np.uint8)
            label[:4] = 11
            image = (rng.random((64, 96, 3)) * 60 + label[..., None] * 15).astype(np.uint8)
            Image.fromarray(image).save(root / split / f"{i}.png")
            Image.fromarray(label).save(root / f"{split}annot" / f"{i}.png")
            lines.append(f"{split}/{i}.png {split}annot/{i}.png")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_recipe(root, iters=4, **extra):
    recipe = cfg_lib.load_recipe("camvid")
    overrides = [f"data.root={root}", "data.crop_size=(64, 64)", "data.scales=(64, 72)", "data.max_long_side=200",
                 "data.batch_size=2", "data.num_workers=0", f"train.iters={iters}", "train.eval_interval=100",
                 "train.checkpoint_interval=2", "train.log_interval=1", "optim.warmup_iters=1"]
    recipe = cfg_lib.apply_overrides(recipe, overrides)
    recipe["model"]["kwargs"] = dict(TINY_MODEL)
    recipe.update(extra)
    return recipe


def on_call(n, function, action):
    """``function`` that first runs ``action()`` on its ``n``-th call."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return function(*args, **kwargs)
    return wrapped


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_recipe_overrides_reject_typos():
    recipe = cfg_lib.load_recipe("camvid")
    with pytest.raises(cfg_lib.RecipeError, match="no such key"):
        cfg_lib.apply_overrides(recipe, ["optim.learning_rate=1"])
    with pytest.raises(cfg_lib.RecipeError, match="unknown recipe"):
        cfg_lib.load_recipe("camvidd")


def test_schedule_warmup_then_poly():
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=1.0)
    scheduler = engine.build_scheduler(optimizer, {"warmup_iters": 4, "poly_power": 1.0}, iters=10)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    expected = [(1 - i / 10) * (1e-6 + (1 - 1e-6) * i / 4 if i < 4 else 1.0) for i in range(10)]
    assert lrs == pytest.approx(expected)


def test_resume_continues_exactly(camvid_fixture, tmp_path, monkeypatch):
    recipe = tiny_recipe(camvid_fixture)
    engine.train(recipe, tmp_path / "straight", progress=False)
    straight = _weights(tmp_path / "straight" / "last.pth")

    original = engine.compute_loss

    def crash():
        raise RuntimeError("simulated crash after the checkpoint at iteration 2")

    monkeypatch.setattr(engine, "compute_loss", on_call(3, original, crash))
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(recipe, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(engine, "compute_loss", original)
    assert torch.load(tmp_path / "resumed" / "last.pth", weights_only=True)["iteration"] == 2
    engine.train(recipe, tmp_path / "resumed", resume="auto", progress=False)
    resumed = _weights(tmp_path / "resumed" / "last.pth")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    rows = (tmp_path / "resumed" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3", "4"]
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["train"]["iters"] == 4


def test_nothing_to_train_is_an_error(camvid_fixture, tmp_path):
    recipe = tiny_recipe(camvid_fixture, iters=2)
    result = engine.train(recipe, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="nothing to train"):
        engine.train(recipe, tmp_path / "run", resume="auto", progress=False)
    # the final evaluation is logged, and the run can be plotted
    val = (tmp_path / "run" / "val.csv").read_text().splitlines()
    assert val[0].startswith("iteration,") and val[1].split(",")[0] == "2"
    assert float(val[1].split(",")[val[0].split(",").index("mIoU")]) == pytest.approx(result["final"]["mIoU"],
                                                                                       abs=1e-4)
    from recipes.__main__ import main
    assert main(["plot", str(tmp_path / "run")]) == 0
    png = (tmp_path / "run" / "training_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    svg = (tmp_path / "run" / "training_curve.svg").read_bytes()
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    assert (tmp_path / "again" / "training_curve.svg").read_bytes() == svg  # reports kept in git diff cleanly


def _cli(args, env_extra=None, cwd=REPO, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    result = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def _last_json(text):
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


@pytest.mark.slow
def test_distributed_eval_equals_single_process(camvid_fixture, tmp_path):
    recipe_file = tmp_path / "tiny_recipe.py"
    recipe = tiny_recipe(camvid_fixture, iters=2)
    recipe_file.write_text(f"RECIPE = {recipe!r}\n")
    engine.train(recipe, tmp_path / "run", progress=False)
    weights = str(tmp_path / "run" / "last.pth")
    common = ["eval", str(recipe_file), "--weights", weights, "--no-progress", "--device", "cpu"]
    single = _last_json(_cli(["-m", "recipes", *common]))
    double = _last_json(_cli(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                              "-m", "recipes", *common]))
    assert single["mIoU"] == pytest.approx(double["mIoU"], abs=1e-9)
    assert single["aAcc"] == pytest.approx(double["aAcc"], abs=1e-9)
    # and a 2-process DDP training run goes through
    _cli(["-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29518", "-m", "recipes", "train",
          str(recipe_file), "--out", str(tmp_path / "ddp"), "--no-progress", "--device", "cpu"])
    assert torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)["iteration"] == 2


@pytest.mark.slow
def test_camvid_end_to_end_through_the_cli(tmp_path, camvid_data):
    out = tmp_path / "run"
    _cli(["-m", "recipes", "train", "camvid", "--out", str(out), "--no-progress", "--device", "cpu",
          "--set", f"data.root={str(camvid_data)!r}",
          "--set", "train.iters=3", "--set", "train.eval_interval=3", "--set", "data.val_limit=2",
          "--set", "data.batch_size=2", "--set", "data.num_workers=0", "--set", "train.log_interval=1"])
    metrics = json.loads((out / "metrics.json").read_text())["final"]
    assert 0.0 <= metrics["mIoU"] <= 100.0 and 0.0 <= metrics["aAcc"] <= 100.0
    losses = [float(r.split(",")[1]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert len(losses) == 3 and all(np.isfinite(losses))

    evaluated = _last_json(_cli(["-m", "recipes", "eval", "camvid", "--weights", str(out / "last.pth"),
                                 "--set", f"data.root={str(camvid_data)!r}", "--limit", "2", "--no-progress",
                                 "--device", "cpu"]))
    assert evaluated["mIoU"] == pytest.approx(metrics["mIoU"])

    image = sorted((camvid_data / "val").glob("*.png"))[0]
    _cli(["-m", "recipes", "predict", "--model", "spike2former_camvid", "--weights", str(out / "last.pth"),
          str(image), "--out", str(tmp_path / "pred")])
    labels = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}_labels.png"))
    overlay = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}_overlay.png"))
    assert labels.shape == (360, 480) and labels.max() < 11
    assert overlay.shape == (360, 480, 3)
