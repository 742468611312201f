"""Weights that ship with the package: every shipped weight still predicts what it predicted when it was
exported, and the export -> pretrained=True -> demo path works end to end on a tiny trained run."""
import json
import shlex

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import conftest
import zoo
from analysis import export as export_mod
from analysis.__main__ import main as analysis_main
from recipes import config as cfg_lib
from recipes import engine
from zoo import registry
from zoo.datasets_meta import CAMVID_CLASSES, CAMVID_PALETTE
from zoo.images import read_rgb
from zoo.samples import sample_frames
from zoo.spike2former import Spike2Former

from test_engine import camvid_fixture  # noqa: F401  (the tiny CamVid-layout dataset)

SHIPPED = [name for name in zoo.list_pretrained() if zoo.get_pretrained_cfg(name).shipped_file]
# at most this share of a frame's pixels may change class between the export and now (rounding differences
# between CPUs flip a few spikes at their thresholds; drifted weights or code change far more)
DRIFT_TOLERANCE = 0.01


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights_load_strictly_and_reproduce_their_sample_predictions(name, monkeypatch):
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("shipped weights must not touch the network"))
    cfg = zoo.get_pretrained_cfg(name)
    model = zoo.create(name, pretrained=True).eval()           # strict: every key, every shape
    on_disk = load_file(str(cfg.shipped_path))
    assert set(on_disk) == set(model.state_dict())
    assert cfg.params == sum(p.numel() for p in model.parameters())
    assert cfg.sample_predictions and cfg.metrics["val"]["mIoU"] > 0
    drift = export_mod.sample_prediction_drift(model)
    assert set(drift) == set(cfg.sample_predictions)
    assert max(drift.values()) <= DRIFT_TOLERANCE, drift
    training = cfg.training
    assert training["command"].startswith(f"python -m recipes train {training['recipe']}")
    assert {"iterations", "wall_minutes", "machine", "date"} <= set(training)


def test_the_shipped_weights_fit_in_the_package_budget():
    total = sum(zoo.get_pretrained_cfg(n).shipped_path.stat().st_size for n in SHIPPED)
    assert total <= 5 * 2 ** 20


# ------------------------------------------------------------------ export, on a tiny trained run

TINY = dict(conftest.TINY_SPIKE2FORMER)


@pytest.fixture
def tiny_registry(monkeypatch, tmp_path):
    """The registry with one more model, ``tiny_camvid`` (tiny widths, CamVid classes); shipped weights
    read from ``tmp_path/weights``."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    shipped = tmp_path / "weights"
    shipped.mkdir()
    monkeypatch.setattr(registry, "SHIPPED_WEIGHTS", shipped)

    def register():
        registry._REGISTRY.pop("tiny_camvid", None)
        cfg = registry.segmentation_cfg("camvid", CAMVID_CLASSES, CAMVID_PALETTE, 1, 4, None, {}, source="",
                                        crop=(64, 64), model_args=TINY)

        @registry.register_model(cfgs={"t1d4": cfg})
        def tiny_camvid(**kwargs):
            return Spike2Former(**kwargs)
    register()
    return shipped, register


@pytest.fixture
def trained_run(tiny_registry, camvid_fixture, tmp_path, one_thread):  # noqa: F811
    recipe = cfg_lib.apply_overrides(cfg_lib.load_recipe("camvid"), [
        f"data.root={camvid_fixture}", "data.crop_size=(64, 64)", "data.scales=(64, 72)",
        "data.max_long_side=200", "data.batch_size=2", "data.num_workers=0", "train.iters=2",
        "train.eval_interval=2", "train.checkpoint_interval=2", "train.log_interval=1", "optim.warmup_iters=1"])
    recipe["model"]["name"] = "tiny_camvid"
    engine.train(recipe, tmp_path / "run", progress=False)
    return tmp_path / "run", recipe


def test_export_writes_the_final_weights_and_their_record(trained_run, tiny_registry, one_thread):
    run, recipe = trained_run
    shipped, register = tiny_registry
    weights, meta = export_mod.export_run(run, shipped, progress=False)
    record = json.loads(meta.read_text())
    final = json.loads((run / "metrics.json").read_text())["final"]
    trained = torch.load(run / "last.pth", map_location="cpu", weights_only=True)["model"]
    exported = load_file(str(weights))
    assert set(exported) == set(trained) and all(torch.equal(exported[k], trained[k]) for k in trained)
    val = record["metrics"]["val"]
    assert val["mIoU"] == pytest.approx(final["mIoU"], abs=0.006) and val["images"] == 3
    assert list(val["IoU_per_class"]) == list(CAMVID_CLASSES)
    training = record["training"]
    assert training["iterations"] == 2 and training["epochs"] == pytest.approx(2 * 2 / 8)
    # the command names every change from the registered recipe: applied to it, it gives the run's recipe
    words = shlex.split(training["command"])
    assert words[:4] == ["python", "-m", "recipes", "train"] and words[4] == "camvid"
    sets = [words[i + 1] for i, w in enumerate(words) if w == "--set"]
    rebuilt = cfg_lib.apply_overrides(cfg_lib.load_recipe("camvid"), sets)
    assert json.loads(json.dumps(rebuilt)) == json.loads((run / "config.json").read_text())
    assert 0 < record["firing_rate"] < 4 and record["energy_mj"] > 0

    # registered again (as on import), the config carries the record and pretrained=True loads the file
    register()
    model = zoo.create("tiny_camvid", pretrained=True).eval()
    assert model.pretrained_cfg.training == training
    frames = sample_frames("camvid")
    assert set(model.pretrained_cfg.sample_predictions) == {f.name for f in frames}
    # recorded counts against a direct prediction: preprocess, predict, count (no resize: CamVid is native)
    first = frames[0]
    with torch.no_grad():
        labels = model.predict(model.preprocess(read_rgb(first.image)))[0].numpy()
    assert labels.shape == (360, 480)
    assert record["sample_predictions"][first.name]["class_pixels"] == np.bincount(
        labels.ravel(), minlength=11).tolist()
    assert max(export_mod.sample_prediction_drift(model).values()) == 0.0
    # weights that drift are caught: the class head's rows rotated by one class move every pixel's class
    head = model.sdme.class_embed
    with torch.no_grad():
        head.weight[:11] = head.weight[:11].roll(1, 0).clone()
        head.bias[:11] = head.bias[:11].roll(1, 0).clone()
    assert min(export_mod.sample_prediction_drift(model).values()) > 0.5


def test_export_refuses_unfinished_runs_and_changed_models(trained_run, tiny_registry, tmp_path):
    run, recipe = trained_run
    config = json.loads((run / "config.json").read_text())
    config["train"]["iters"] = 10
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(export_mod.ExportError, match="stopped at iteration 2 of 10"):
        export_mod.export_run(run, tmp_path / "out", progress=False)
    config["train"]["iters"], config["model"]["kwargs"] = 2, {"num_queries": 3}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(export_mod.ExportError, match="must fit the registered model"):
        export_mod.export_run(run, tmp_path / "out", progress=False)
    # widths tried with --set and registered since build the registered model: exported, plain command
    config["model"]["kwargs"] = {"num_queries": TINY["num_queries"], "embed_dims": list(TINY["embed_dims"])}
    (run / "config.json").write_text(json.dumps(config))
    _, meta = export_mod.export_run(run, tmp_path / "same", progress=False)
    assert "model.kwargs" not in json.loads(meta.read_text())["training"]["command"]
    with pytest.raises(export_mod.ExportError, match="lacks metrics.json"):
        (run / "metrics.json").unlink()
        export_mod.export_run(run, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_demo_cli_segments_the_bundled_frames_with_shipped_weights(trained_run, tiny_registry, tmp_path,
                                                                  one_thread, capsys):
    from PIL import Image
    run, _ = trained_run
    shipped, register = tiny_registry
    with pytest.raises(SystemExit) as exit_:
        analysis_main(["demo", "--model", "tiny_camvid", "--out", str(tmp_path / "untrained"), "--no-progress",
                       "--threads", "1"])
    assert exit_.value.code == 2 and "has no trained weights" in capsys.readouterr().err
    export_mod.export_run(run, shipped, progress=False)
    register()
    out = tmp_path / "demo"
    assert analysis_main(["demo", "--model", "tiny_camvid", "--out", str(out), "--no-progress", "--threads", "1"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    recorded = zoo.get_pretrained_cfg("tiny_camvid").sample_predictions
    frames = sample_frames("camvid")
    assert [row["name"] for row in summary["images"]] == [f.name for f in frames]
    for row, frame in zip(summary["images"], frames):
        assert row["class_pixels"] == recorded[frame.name]["class_pixels"]
        labels = np.asarray(Image.open(out / f"{frame.name}_labels.png"))
        truth = np.asarray(Image.open(frame.label))
        valid = truth != 11
        assert row["pixel_accuracy"] == pytest.approx(100 * (labels[valid] == truth[valid]).mean())
        assert 0 < row["firing_rate"] < 4 and row["energy_mj"] > 0
    assert (out / "demo.png").stat().st_size > 10_000
    assert len((out / "demo.csv").read_text().splitlines()) == 1 + len(frames)


def test_running_time_counts_each_start_and_not_the_pause_between_sessions(tmp_path):
    import os
    run = tmp_path / "run"
    (run / "tensorboard").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    t0 = 1_800_000_000
    # first start ran 600 s, then a 10-hour pause, then a resume that ran 900 s and wrote metrics.json
    first = run / "tensorboard" / f"events.out.tfevents.{t0}.host.1.0"
    second = run / "tensorboard" / f"events.out.tfevents.{t0 + 600 + 36_000}.host.1.0"
    for path, end in ((first, t0 + 600), (second, t0 + 36_600 + 890)):
        path.write_bytes(b"")
        os.utime(path, (end, end))
    (run / "metrics.json").write_text("{}")
    os.utime(run / "metrics.json", (t0 + 36_600 + 900,) * 2)
    assert export_mod.running_seconds(run) == pytest.approx(600 + 900)
    assert export_mod.run_started(run)[1] == 2
    for path in (first, second):        # without event files: config.json's time to metrics.json's
        path.unlink()
    os.utime(run / "config.json", (t0 + 36_000,) * 2)
    assert export_mod.running_seconds(run) == pytest.approx(1500)
