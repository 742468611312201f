"""The recipes under things going wrong: stops, crashes and full disks lose nothing; bad input gets
one line and exit status 2; no run is overwritten; panoptic evaluation at a resized scale; deep images."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import conftest
from recipes import config as cfg_lib
from recipes import engine
from recipes.__main__ import main
from test_engine import TINY_MODEL, _weights, camvid_fixture, on_call, tiny_recipe  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[1]


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _recipe_file(tmp_path, recipe, name="tiny.py"):
    path = tmp_path / name
    path.write_text(f"RECIPE = {recipe!r}\n")
    return path


# ------------------------------------------------------------------ stops and crashes lose nothing

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_stop_signal_saves_and_resume_matches_straight_run(camvid_fixture, tmp_path, monkeypatch, signum):
    recipe = tiny_recipe(camvid_fixture, iters=5)
    recipe["train"]["checkpoint_interval"] = 100       # no periodic checkpoint would save the work
    engine.train(recipe, tmp_path / "straight", progress=False)
    straight = _weights(tmp_path / "straight" / "last.pth")

    original = engine.compute_loss
    monkeypatch.setattr(engine, "compute_loss", on_call(3, original, lambda: os.kill(os.getpid(), signum)))
    handler_before = signal.getsignal(signum)
    with pytest.raises(engine.TrainingInterrupted) as stopped:
        engine.train(recipe, tmp_path / "stopped", progress=False)
    monkeypatch.setattr(engine, "compute_loss", original)
    assert stopped.value.signum == signum and stopped.value.iteration == 3
    saved = torch.load(tmp_path / "stopped" / "last.pth", weights_only=True)
    assert saved["iteration"] == 3 and not saved["pending_eval"]
    assert signal.getsignal(signum) is handler_before

    engine.train(recipe, tmp_path / "stopped", resume="auto", progress=False)
    assert _same_weights(straight, _weights(tmp_path / "stopped" / "last.pth"))
    rows = (tmp_path / "stopped" / "log.csv").read_text().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4", "5"]


def test_crash_during_evaluation_resumes_with_that_evaluation(camvid_fixture, tmp_path, monkeypatch):
    recipe = tiny_recipe(camvid_fixture, iters=4)
    recipe["train"].update(eval_interval=2, checkpoint_interval=100)
    engine.train(recipe, tmp_path / "straight", progress=False)

    original = engine.evaluate

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash inside evaluation")

    monkeypatch.setattr(engine, "evaluate", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        engine.train(recipe, tmp_path / "crashed", progress=False)
    saved = torch.load(tmp_path / "crashed" / "last.pth", weights_only=True)
    assert saved["iteration"] == 2 and saved["pending_eval"]

    monkeypatch.setattr(engine, "evaluate", original)
    engine.train(recipe, tmp_path / "crashed", resume="auto", progress=False)
    assert _same_weights(_weights(tmp_path / "straight" / "last.pth"), _weights(tmp_path / "crashed" / "last.pth"))
    assert ((tmp_path / "crashed" / "val.csv").read_text() == (tmp_path / "straight" / "val.csv").read_text())
    assert json.loads((tmp_path / "crashed" / "metrics.json").read_text()) == \
        json.loads((tmp_path / "straight" / "metrics.json").read_text())


def test_resume_after_a_kill_drops_the_rows_logged_past_the_checkpoint(camvid_fixture, tmp_path, monkeypatch):
    recipe = tiny_recipe(camvid_fixture, iters=6)       # checkpoints at 2, 4, 6; one evaluation, at 6
    engine.train(recipe, tmp_path / "straight", progress=False)

    def kill():  # an exception no handler saves for, as SIGKILL or a power cut leaves the folder
        raise KeyboardInterrupt
    monkeypatch.setattr(engine, "compute_loss", on_call(4, engine.compute_loss, kill))
    with pytest.raises(KeyboardInterrupt):
        engine.train(recipe, tmp_path / "killed", progress=False)
    monkeypatch.undo()
    killed = tmp_path / "killed"
    assert torch.load(killed / "last.pth", weights_only=True)["iteration"] == 2
    assert [r.split(",")[0] for r in (killed / "log.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    header = (tmp_path / "straight" / "val.csv").read_text().splitlines()[0]
    (killed / "val.csv").write_text(f"{header}\n3,1.0,2.0,3.0\n")  # as if an evaluation at 3 was written too

    engine.train(recipe, killed, resume="auto", progress=False)
    assert (killed / "log.csv").read_text().splitlines()[0] == \
        (tmp_path / "straight" / "log.csv").read_text().splitlines()[0]
    assert [r.split(",")[0] for r in (killed / "log.csv").read_text().splitlines()[1:]] == ["1", "2", "3", "4", "5", "6"]
    assert (killed / "val.csv").read_text() == (tmp_path / "straight" / "val.csv").read_text()
    assert _same_weights(_weights(tmp_path / "straight" / "last.pth"), _weights(killed / "last.pth"))


def test_a_run_folder_is_never_overwritten(camvid_fixture, tmp_path):
    recipe = tiny_recipe(camvid_fixture, iters=2)
    engine.train(recipe, tmp_path / "run", progress=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert {"last.pth", "best.pth", "log.csv", "val.csv", "metrics.json"} <= set(before)
    with pytest.raises(engine.RunFolderError, match="--resume"):
        engine.train(recipe, tmp_path / "run", progress=False)
    after = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    assert after == before


def test_stale_temporaries_of_killed_writes_are_removed(camvid_fixture, tmp_path):
    recipe = tiny_recipe(camvid_fixture, iters=2)
    engine.train(recipe, tmp_path / "run", progress=False)
    stale = tmp_path / "run" / ".last.pth.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    keep = tmp_path / "run" / "notes.tmp"
    keep.write_text("not ours")
    recipe["train"]["iters"] = 3
    engine.train(recipe, tmp_path / "run", resume="auto", progress=False)
    assert not stale.exists() and keep.exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))


# ------------------------------------------------------------------ full disk

def test_full_disk_leaves_the_previous_checkpoint_and_says_so(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    path = tmp_path / "last.pth"
    engine.save_checkpoint(path, model, optimizer, scheduler, 1, {}, {"name": "x"})
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(engine.os, "fsync", full)
    with pytest.raises(OSError, match="no space left .* the previous last.pth is intact.*--resume") as err:
        engine.save_checkpoint(path, model, optimizer, scheduler, 2, {}, {"name": "x"})
    assert err.value.errno == errno.ENOSPC
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_full_disk_on_a_real_filesystem(tmp_path):
    """A 64 KiB tmpfs: torch's own writer would fail with an opaque 'enforce fail' here."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        model = torch.nn.Linear(100, 100)          # ~40 KB of weights, ~120 KB with AdamW's moments
        optimizer = torch.optim.AdamW(model.parameters())
        model(torch.ones(1, 100)).sum().backward()
        optimizer.step()
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
        with pytest.raises(OSError, match="no space left on the device") as err:
            engine.save_checkpoint(mount / "last.pth", model, optimizer, scheduler, 1, {}, {"name": "x"})
        assert err.value.errno == errno.ENOSPC
        assert list(mount.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


# ------------------------------------------------------------------ what resume may change

def test_resume_refuses_changed_training_state_and_allows_a_longer_run(camvid_fixture, tmp_path):
    recipe = tiny_recipe(camvid_fixture, iters=2)
    engine.train(recipe, tmp_path / "run", progress=False)
    config_before = (tmp_path / "run" / "config.json").read_text()
    for override, key in (("optim.lr=0.5", "optim.lr"), ("data.batch_size=1", "data.batch_size"),
                          ("model.name=spike2former_ade20k", "model.name")):
        changed = cfg_lib.apply_overrides(recipe, ["train.iters=3", override])
        with pytest.raises(cfg_lib.RecipeError, match=key):
            engine.train(changed, tmp_path / "run", resume="auto", progress=False)
        assert (tmp_path / "run" / "config.json").read_text() == config_before
    with pytest.raises(cfg_lib.RecipeError, match="train.execution.precision"):
        engine.train(cfg_lib.apply_overrides(recipe, ["train.iters=3", "train.execution.precision=bf16"]),
                     tmp_path / "run", resume="auto", progress=False)
    # compiling the network computes the same training step: a resume may switch it
    assert "train.execution.compile" in cfg_lib.resume_changes(
        recipe, cfg_lib.apply_overrides(recipe, ["train.execution.compile=True"]))[0]
    # a checkpoint saved before the semantic loss existed resumes as semantic_weight 0 (no class weights);
    # the camvid recipe, which now turns it on, is refused
    saved = json.loads(config_before)
    for key in ("semantic_weight", "semantic_class_weight"):
        saved["loss"].pop(key)
    without = cfg_lib.apply_overrides(recipe, ["loss.semantic_weight=0.0", "loss.semantic_class_weight=None"])
    assert cfg_lib.resume_changes(saved, without) == ([], [])
    assert recipe["loss"]["semantic_weight"] == 1.0
    refused = " ".join(cfg_lib.resume_changes(saved, recipe)[1])
    assert "loss.semantic_weight: 0.0 in the checkpoint, 1.0 now" in refused, refused
    longer = cfg_lib.apply_overrides(recipe, ["train.iters=3", "train.log_interval=3"])
    engine.train(longer, tmp_path / "run", resume="auto", progress=False)
    assert torch.load(tmp_path / "run" / "last.pth", weights_only=True)["iteration"] == 3
    assert json.loads((tmp_path / "run" / "config.json").read_text())["train"]["iters"] == 3


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=2.5", r"data.batch_size: expected an int >= 1, got 2.5"),
    ("train.iters=abc", r"train.iters: expected an int >= 1, got 'abc'"),
    ("optim.lr=abc", r"optim.lr: expected a number > 0, got 'abc'"),
    ("data.crop_size=abc", r"data.crop_size: expected a tuple of ints of length 2"),
    ("train.checkpoint_interval=0", r"train.checkpoint_interval: expected an int >= 1, got 0"),
    ("optim.betas=(0.9, 1.5)", r"optim.betas"),
    ("train.amp=1", r"train.amp: expected True or False"),
    ("loss.type=focal", r"loss.type: expected a string among"),
    ("train.execution.precision=fp8", r"train.execution: precision must be one of"),
    ("train.execution.fast=True", r"train.execution: unknown execution option"),
])
def test_recipe_values_are_checked_before_anything_is_built(override, message):
    recipe = cfg_lib.apply_overrides(cfg_lib.load_recipe("camvid"), [override])
    with pytest.raises(cfg_lib.RecipeError, match=message):
        cfg_lib.validate_recipe(recipe)


def test_per_pixel_recipes_take_class_weights_not_a_semantic_weight():
    from recipes.losses import PerPixelCrossEntropy
    recipe = cfg_lib.load_recipe("spikefpn_camvid")
    with pytest.raises(cfg_lib.RecipeError, match="loss.semantic_weight: the per-pixel loss"):
        cfg_lib.validate_recipe(cfg_lib.apply_overrides(recipe, ["loss.semantic_weight=1.0"]))
    weights = tuple(float(k + 1) for k in range(11))
    weighted = cfg_lib.validate_recipe(cfg_lib.apply_overrides(recipe, [f"loss.semantic_class_weight={weights}"]))
    criterion = engine.build_criterion(weighted, 11)
    assert isinstance(criterion, PerPixelCrossEntropy) and criterion.class_weight.tolist() == list(weights)
    from recipes.configs.camvid import CAMVID_TRAIN_MEDIAN_FREQUENCY  # the recipe's own: the camvid recipe's
    own = engine.build_criterion(cfg_lib.validate_recipe(recipe), 11).class_weight
    assert own.tolist() == pytest.approx(CAMVID_TRAIN_MEDIAN_FREQUENCY)
    unweighted = cfg_lib.validate_recipe(cfg_lib.apply_overrides(recipe, ["loss.semantic_class_weight=None"]))
    assert engine.build_criterion(unweighted, 11).class_weight is None
    with pytest.raises(ValueError, match="one weight per class"):
        engine.build_criterion(weighted, 12)


def test_recipes_find_their_datasets_under_one_data_root(monkeypatch, tmp_path):
    monkeypatch.delenv(cfg_lib.DATA_ENV, raising=False)
    assert cfg_lib.dataset_path("camvid") == Path("data") / "camvid"
    monkeypatch.setenv(cfg_lib.DATA_ENV, str(tmp_path))
    assert cfg_lib.dataset_path("VOCdevkit/VOC2012") == tmp_path / "VOCdevkit" / "VOC2012"
    for given in (str(tmp_path / "elsewhere"), "./camvid", "../camvid"):  # paths of their own stay as given
        assert cfg_lib.dataset_path(given) == Path(given)
    for name in cfg_lib.list_recipes():  # every shipped recipe names a folder under the data root
        root = cfg_lib.load_recipe(name)["data"]["root"]
        assert cfg_lib.dataset_path(root) == tmp_path / root, name


def test_a_missing_dataset_names_the_folder_and_the_data_root(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(cfg_lib.DATA_ENV, str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        main(["train", "camvid", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "camvid") in err and cfg_lib.DATA_ENV in err, err


def test_validation_canonicalises_values():
    recipe = cfg_lib.apply_overrides(cfg_lib.load_recipe("camvid"), ["optim.lr=1", "data.crop_size=[64, 64]"])
    checked = cfg_lib.validate_recipe(recipe)
    assert checked["optim"]["lr"] == 1.0 and isinstance(checked["optim"]["lr"], float)
    assert checked["data"]["crop_size"] == (64, 64)
    for name in cfg_lib.list_recipes():                # every shipped recipe is valid as it stands
        cfg_lib.validate_recipe(cfg_lib.load_recipe(name))


# ------------------------------------------------------------------ evaluation

def _coco_panoptic_fixture(root: Path, size=(24, 32)):
    """COCO panoptic layout, one image per split; a person, a car and a rug segment."""
    h, w = size
    ids = np.zeros((h, w), dtype=np.int64)
    person, car, rug = 5 + 256 * 3 + 65536, 300, 7
    ids[: h // 3, : w // 2], ids[: h // 3, w // 2:], ids[h // 3:] = person, car, rug
    encoded = np.stack([ids % 256, (ids // 256) % 256, ids // 65536], -1).astype(np.uint8)
    rng = np.random.default_rng(0)
    for k, split in enumerate(("train2017", "val2017")):
        name = f"{k + 1:012d}"
        (root / split).mkdir(parents=True)
        (root / f"panoptic_{split}").mkdir()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / split / f"{name}.jpg")
        Image.fromarray(encoded, "RGB").save(root / f"panoptic_{split}" / f"{name}.png")
        segments = [dict(id=person, category_id=1, iscrowd=0, area=1), dict(id=car, category_id=3, iscrowd=0, area=1),
                    dict(id=rug, category_id=200, iscrowd=0, area=1)]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"panoptic_{split}.json").write_text(json.dumps(dict(
            images=[dict(id=k + 1, file_name=f"{name}.jpg", height=h, width=w)],
            annotations=[dict(image_id=k + 1, file_name=f"{name}.png", segments_info=segments)], categories=[])))
    return root


def test_panoptic_evaluation_at_a_resized_scale(tmp_path):
    """The eval transform resizes 24x32 to 48x64; predictions come back to the label's size."""
    from recipes.metrics import PanopticQuality
    root = _coco_panoptic_fixture(tmp_path / "coco")
    recipe = cfg_lib.apply_overrides(cfg_lib.load_recipe("coco_panoptic"),
                                     [f"data.root={root}", "data.eval_scale=(64, 48)"])
    recipe["model"]["kwargs"] = dict(TINY_MODEL)
    recipe = cfg_lib.validate_recipe(recipe)
    torch.manual_seed(0)
    model = engine.build_model(recipe)
    conftest.lively(model, torch.randn(2, 3, 48, 64))
    model.eval()
    val_set, eval_tf = engine.build_val_data(recipe, model)
    ctx = engine.DistributedContext("cpu")
    results = engine.evaluate(model, val_set, eval_tf, ctx, progress=False)

    # reference: nearest-neighbour index arithmetic in numpy, floor(i * in / out) as labels are resized
    sample = eval_tf(val_set[0])
    assert tuple(sample["image"].shape[-2:]) == (48, 64) and tuple(sample["segment_ids"].shape) == (24, 32)
    pred_ids, segments = model.predict(sample["image"][None])[0]
    pred = pred_ids.numpy()
    rows = np.floor(np.arange(24) * pred.shape[0] / 24).astype(int)
    cols = np.floor(np.arange(32) * pred.shape[1] / 32).astype(int)
    reference = PanopticQuality(model.thing_classes)
    reference.update(torch.from_numpy(pred[rows][:, cols]), segments, sample["segment_ids"], sample["segments_info"])
    assert results["PQ"] == pytest.approx(reference.compute()["PQ"], abs=1e-12)


def test_eval_needs_only_the_validation_split(camvid_fixture, tmp_path, capsys):
    root = tmp_path / "val_only"
    shutil.copytree(camvid_fixture, root)
    shutil.rmtree(root / "train")
    shutil.rmtree(root / "trainannot")
    (root / "train.txt").unlink()
    recipe = tiny_recipe(root, iters=1)
    model = engine.build_model(cfg_lib.validate_recipe(recipe))
    torch.save({"model": model.state_dict()}, tmp_path / "weights.pth")
    rc = main(["eval", str(_recipe_file(tmp_path, recipe)), "--weights", str(tmp_path / "weights.pth"),
               "--no-progress", "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0 and 0.0 <= json.loads(out[out.index("{"):])["mIoU"] <= 100.0


# ------------------------------------------------------------------ deep images

def test_sixteen_bit_png_is_scaled_not_saturated(tmp_path):
    from zoo.images import ImageReadError, read_rgb
    values = np.linspace(0, 65535, 48 * 64).reshape(48, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I;16")
    rgb = read_rgb(tmp_path / "deep.png")
    expected = np.floor(values.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)
    assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8
    assert np.array_equal(rgb[..., 0], expected) and np.array_equal(rgb[..., 2], expected)
    assert (rgb == 255).mean() < 0.01                       # PIL's convert("RGB") gives ~99.6% here

    Image.fromarray(np.full((4, 4), 1e6, dtype=np.float32)).save(tmp_path / "float.tiff")
    with pytest.raises(ImageReadError, match="no 8-bit scale fits"):
        read_rgb(tmp_path / "float.tiff")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ImageReadError, match="broken.png"):
        read_rgb(tmp_path / "broken.png")


def test_sixteen_bit_images_in_a_dataset_and_predict(camvid_fixture, tmp_path, capsys):
    from recipes.datasets import build_dataset
    root = tmp_path / "deep"
    shutil.copytree(camvid_fixture, root)
    first = root / "val" / "0.png"
    eight = np.asarray(Image.open(first).convert("L"))
    Image.fromarray(eight.astype(np.uint16) * 257).save(first)  # the same picture at 16 bits
    sample = build_dataset("camvid", str(root), "val")[0]
    image = np.asarray(sample["image"]) if not torch.is_tensor(sample["image"]) else sample["image"].numpy()
    image = image if image.shape[-1] == 3 else np.moveaxis(image, 0, -1)
    assert np.array_equal(image[..., 1], eight)

    shallow = tmp_path / "eight_bit" / "0.png"
    shallow.parent.mkdir()
    Image.fromarray(eight).save(shallow)
    torch.manual_seed(0)
    assert main(["predict", "--model", "spike2former_camvid", str(first), "--out", str(tmp_path / "deep_pred")]) == 0
    torch.manual_seed(0)
    assert main(["predict", "--model", "spike2former_camvid", str(shallow), "--out", str(tmp_path / "pred")]) == 0
    for name in ("0_overlay.png", "0_labels.png"):             # the model saw the same picture
        assert np.array_equal(np.asarray(Image.open(tmp_path / "deep_pred" / name)),
                              np.asarray(Image.open(tmp_path / "pred" / name)))


# ------------------------------------------------------------------ one line and exit status 2

def _bad_inputs(root, tmp_path):
    """argv -> the words the one-line message must contain."""
    recipe = tiny_recipe(root, iters=1)
    good = _recipe_file(tmp_path, recipe)
    weights_only = tmp_path / "weights_only.pth"
    torch.save(engine.build_model(cfg_lib.validate_recipe(recipe)).state_dict(), weights_only)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "no_run").mkdir()
    missing_root = cfg_lib.apply_overrides(recipe, [f"data.root={tmp_path / 'nowhere'}"])
    other_model = dict(recipe, model=dict(recipe["model"], name="spikefpn_camvid", kwargs=dict(conftest.TINY_SPIKEFPN)))
    bad_image = tmp_path / "bad_image"
    shutil.copytree(root, bad_image)
    (bad_image / "val" / "0.png").write_bytes(b"not a png")
    bad_label = tmp_path / "bad_label"
    shutil.copytree(root, bad_label)
    Image.fromarray(np.full((64, 96), 40, dtype=np.uint8)).save(bad_label / "valannot" / "0.png")
    run = tmp_path / "run"
    engine.train(recipe, run, progress=False)
    eval_args = ["--weights", str(run / "last.pth"), "--no-progress", "--device", "cpu"]
    return {
        "unknown recipe": (["train", "camvidd"], "unknown recipe 'camvidd'"),
        "bad key": (["train", str(good), "--set", "optim.learning_rate=1"], "no such key"),
        "bad value": (["train", str(good), "--set", "train.iters=abc"], "train.iters: expected an int"),
        "fractional batch": (["train", str(good), "--set", "data.batch_size=2.5"], "data.batch_size"),
        "zero interval": (["train", str(good), "--set", "train.checkpoint_interval=0"], "checkpoint_interval"),
        "not KEY=VALUE": (["train", str(good), "--set", "optim.lr"], "KEY=VALUE"),
        "missing data root": (["eval", str(_recipe_file(tmp_path, missing_root, "m.py")), *eval_args], "nowhere"),
        "corrupt image": (["eval", str(_recipe_file(tmp_path, dict(recipe, data=dict(recipe["data"], root=str(bad_image))),
                                                    "bi.py")), *eval_args], "0.png"),
        "bad label": (["eval", str(_recipe_file(tmp_path, dict(recipe, data=dict(recipe["data"], root=str(bad_label))),
                                                "bl.py")), *eval_args], "40"),
        "resume without a checkpoint": (["train", str(good), "--out", str(tmp_path / "empty"), "--resume"],
                                        "train without --resume"),
        "resume without --out": (["train", str(good), "--resume"], "needs --out"),
        "resume from weights only": (["train", str(good), "--out", str(tmp_path / "x"), "--resume", str(weights_only)],
                                     "weights only"),
        "resume from a corrupt file": (["train", str(good), "--out", str(tmp_path / "y"), "--resume", str(corrupt)],
                                       "corrupt.pth"),
        "resume with another model": (["train", str(_recipe_file(tmp_path, other_model, "o.py")), "--out", str(run),
                                       "--resume"], "model.name"),
        "existing run folder": (["train", str(good), "--out", str(run)], "already holds a run"),
        "missing weights": (["eval", str(good), "--weights", str(tmp_path / "nope.pth")], "nope.pth"),
        "corrupt weights": (["eval", str(good), "--weights", str(corrupt)], "corrupt.pth"),
        "weights of another model": (["eval", str(_recipe_file(tmp_path, other_model, "o2.py")), *eval_args], ""),
        "unknown model": (["predict", "--model", "spike2former_camvidd", "x.png", "--out", str(tmp_path / "p")],
                          "spike2former_camvidd"),
        "unreadable image": (["predict", "--model", "spike2former_camvid", str(tmp_path / "corrupt.pth"),
                              "--out", str(tmp_path / "p")], "could not be read"),
        "not a run folder": (["plot", str(tmp_path / "no_run")], "no log.csv"),
    }


def test_bad_input_ends_in_one_line_and_exit_status_2(camvid_fixture, tmp_path, capsys):
    cases = _bad_inputs(camvid_fixture, tmp_path)
    capsys.readouterr()
    failures = []
    for name, (argv, words) in cases.items():
        try:
            main(argv)
            failures.append(f"{name}: no error")
            continue
        except SystemExit as exit_:
            code = exit_.code
        except Exception as err:  # noqa: BLE001 - the point is to list what escapes
            failures.append(f"{name}: {type(err).__name__}: {err}")
            continue
        err_lines = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
        if code != 2 or len(err_lines) != 1 or words not in err_lines[0]:
            failures.append(f"{name}: exit {code}, {err_lines}")
    assert not failures, "\n".join(failures)


def test_cli_errors_carry_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "recipes", "train", "camvid", "--set", "optim.lr=abc",
                             "--out", str(tmp_path / "r")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("python -m recipes train: error: camvid: optim.lr")


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_cli_stop_with_loader_workers_then_resume(camvid_fixture, tmp_path, signum):
    """Ctrl-C reaches the whole process group (the loader's workers too); the CLI saves, exits
    128 + signal number, and --resume ends where an uninterrupted run does."""
    recipe = tiny_recipe(camvid_fixture, iters=40)
    recipe["data"]["num_workers"] = 1
    recipe["train"].update(checkpoint_interval=1000, eval_interval=1000)
    recipe_file = _recipe_file(tmp_path, recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "recipes", "train", str(recipe_file), "--no-progress", "--device", "cpu"]
    subprocess.run([*args, "--out", str(tmp_path / "straight")], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=600)

    stopped = tmp_path / "stopped"
    proc = subprocess.Popen([*args, "--out", str(stopped)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        log = stopped / "log.csv"
        if log.exists() and len(log.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signum)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signum, err[-3000:]
    assert "continue with --resume" in err and "Traceback" not in err
    iteration = torch.load(stopped / "last.pth", weights_only=True)["iteration"]
    assert 3 <= iteration < 40

    subprocess.run([*args, "--out", str(stopped), "--resume"], cwd=REPO, env=env, check=True, capture_output=True,
                   timeout=600)
    assert _same_weights(_weights(tmp_path / "straight" / "last.pth"), _weights(stopped / "last.pth"))


# ------------------------------------------------------------------ README

def test_readme_spike_driven_snippet_runs_as_written():
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Spike-driven inference"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    exec(compile(code, "README.md (spike-driven snippet)", "exec"), {})


def test_readme_model_zoo_table_is_the_registry_s():
    from zoo.registry import model_zoo_table
    text = (REPO / "README.md").read_text()
    begin = text.index("<!-- model-zoo:")
    table = text[text.index("\n", begin) + 1:text.index("<!-- /model-zoo -->")].strip()
    assert table == model_zoo_table(), "README's model-zoo table is stale: paste zoo.registry.model_zoo_table()"


def test_readme_ablation_table_is_the_report_s():
    import importlib.util
    spec = importlib.util.spec_from_file_location("ablations", REPO / "benchmarks" / "ablations.py")
    ablations = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablations)
    rows = ablations.read_rows(REPO / "benchmarks" / "reports" / "ablations-camvid" / "ablations.csv")
    text = (REPO / "README.md").read_text()
    begin = text.index("\n", text.index(ablations.README_BEGIN)) + 1
    assert text[begin:text.index(ablations.README_END)].strip() == ablations.ablation_table(rows), (
        "README's ablation table is stale: run benchmarks/ablations.py --measure-only ... --readme README.md")
