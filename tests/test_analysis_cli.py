"""``python -m analysis``, run in process: every file's numbers against the Python API on the same model and images."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from conftest import TINY_SPIKE2FORMER, TINY_SPIKEFPN
import zoo
from analysis import estimate, measure_firing, query_mask_patterns
from analysis.__main__ import main
from recipes.datasets import build_dataset
from recipes.transforms import Normalize

SHORTCUT_WEIGHTS = ["sdme.shortcut_weight", "sdme.shortcut_conv.conv.weight", "sdme.shortcut_conv.bn.weight",
                    "sdme.shortcut_conv.bn.bias", "sdme.shortcut_conv.bn.running_mean",
                    "sdme.shortcut_conv.bn.running_var", "sdme.shortcut_conv.bn.num_batches_tracked"]


# tiny tensors: one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def _save_pngs(folder, sizes, seed):
    folder.mkdir()
    rng = np.random.default_rng(seed)
    for i, (height, width) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny models saved as users save theirs (save_pretrained), and folders of synthetic PNGs."""
    root = tmp_path_factory.mktemp("analysis_cli")
    torch.manual_seed(0)
    zoo.create("spike2former_camvid", **TINY_SPIKE2FORMER).save_pretrained(root / "s2f")
    zoo.create("spikefpn_camvid", **TINY_SPIKEFPN).save_pretrained(root / "fpn")
    _save_pngs(root / "images", [(64, 64)] * 3, seed=0)
    _save_pngs(root / "mixed", [(64, 64), (48, 80)], seed=1)
    (root / "empty").mkdir()
    return root


def normalised(folder, model):
    """The folder's PNGs in name order as the documented pipeline reads them: RGB, normalised with the model's mean/std."""
    normalise = Normalize(model.pretrained_cfg.mean, model.pretrained_cfg.std)
    images = []
    for path in sorted(folder.glob("*.png")):
        rgb = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        images.append(normalise({"image": tv_tensors.Image(rgb)})["image"].as_subclass(torch.Tensor)[None])
    return images


def run(command, model, data, out, *extra):
    assert main([command, "--model", str(model), "--data", str(data), "--out", str(out), "--no-progress",
                 *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def layer_rows(path):
    return [(r["name"], r["group"], float(r["mean_count"]), int(r["count_sum"]), int(r["elements"]))
            for r in read_csv(path)]


def expected_layer_rows(report):
    return [(r.name, r.group, r.mean_count, r.count_sum, r.elements) for r in report.layers]


def is_png(path):
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_firing_files_hold_the_monitor_numbers(saved, tmp_path):
    summary = run("firing", saved / "s2f", saved / "images", tmp_path)
    model = zoo.create(str(saved / "s2f"))
    report = measure_firing(model, normalised(saved / "images", model), progress=False)
    embedding = report.layer("sdme.embed_spike").mean_count
    assert embedding > 0 and any(g.mean_count == 0 for g in report.groups)  # the numbers say something

    assert layer_rows(tmp_path / "firing_layers.csv") == expected_layer_rows(report)
    groups = read_csv(tmp_path / "firing_groups.csv")
    assert [(g["group"], float(g["mean_count"]), int(g["layers"])) for g in groups] == \
        [(g.group, g.mean_count, g.layers) for g in report.groups]
    assert summary["groups"] == {g.group: {"firing_rate": g.mean_count, "nonzero_fraction": g.nonzero_fraction,
                                           "layers": g.layers, "neurons": g.neurons} for g in report.groups}
    assert summary["mask_embedding_rate"] == embedding
    assert summary["mean_firing_rate"] == pytest.approx(
        sum(r.count_sum for r in report.layers) / sum(r.elements for r in report.layers), rel=1e-12)
    assert (summary["images"], summary["image_sizes"], summary["layers"]) == (3, [[64, 64]], len(report.layers))
    assert summary["models"] == {str(saved / "s2f"): {"name": "spike2former_camvid.t1d4",
                                                      "weights": str(saved / "s2f")}}
    assert f"{embedding:.4f}" in (tmp_path / "summary.md").read_text()
    assert is_png(tmp_path / "firing_groups.png")


def test_spikefpn_has_no_mask_embedding_rate(saved, tmp_path):
    summary = run("firing", saved / "fpn", saved / "images", tmp_path)
    assert summary["mask_embedding_rate"] is None
    assert list(summary["groups"]) == ["backbone.stage1", "backbone.stage2", "backbone.stage3", "backbone.stage4",
                                       "neck", "head"]


def _set_args(kwargs):
    return [f"--set={k}={','.join(map(str, v)) if isinstance(v, tuple) else v}" for k, v in kwargs.items()]


def test_registered_name_with_set_and_weights_equals_the_saved_folder(saved, tmp_path):
    weights = saved / "s2f" / "model.safetensors"
    summary = run("firing", "spike2former_camvid", saved / "images", tmp_path / "named",
                  *_set_args(TINY_SPIKE2FORMER), "--weights", str(weights))
    run("firing", saved / "s2f", saved / "images", tmp_path / "folder")
    assert (tmp_path / "named" / "firing_layers.csv").read_text() == \
        (tmp_path / "folder" / "firing_layers.csv").read_text()
    assert summary["model_kwargs"] == {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in TINY_SPIKE2FORMER.items()}
    assert summary["models"]["spike2former_camvid"]["weights"] == str(weights)


def test_a_name_with_trained_weights_uses_them_unless_random(saved, tmp_path):
    summary = run("firing", "spike2former_camvid", saved / "images", tmp_path / "trained")
    model = zoo.create("spike2former_camvid", pretrained=True)
    report = measure_firing(model, normalised(saved / "images", model), progress=False)
    assert layer_rows(tmp_path / "trained" / "firing_layers.csv") == expected_layer_rows(report)
    assert "pretrained=True: shipped" in summary["models"]["spike2former_camvid"]["weights"]
    assert "pretrained=True: shipped" in (tmp_path / "trained" / "summary.md").read_text()

    run("firing", "spike2former_camvid", saved / "images", tmp_path / "random", "--weights", "random")
    torch.manual_seed(0)
    model = zoo.create("spike2former_camvid")
    report = measure_firing(model, normalised(saved / "images", model), progress=False)
    assert layer_rows(tmp_path / "random" / "firing_layers.csv") == expected_layer_rows(report)


def test_random_weights_come_from_the_seed(saved, tmp_path):
    summary = run("firing", "spike2former_camvid", saved / "images", tmp_path, *_set_args(TINY_SPIKE2FORMER),
                  "--seed", "3", "--weights", "random")
    torch.manual_seed(3)
    model = zoo.create("spike2former_camvid", **TINY_SPIKE2FORMER)
    report = measure_firing(model, normalised(saved / "images", model), progress=False)
    assert layer_rows(tmp_path / "firing_layers.csv") == expected_layer_rows(report)
    assert summary["models"]["spike2former_camvid"]["weights"] is None
    assert "random (seed 3" in (tmp_path / "summary.md").read_text()


def test_degradation_without_me_shortcut_keeps_every_other_weight(saved, tmp_path):
    summary = run("degradation", saved / "s2f", saved / "images", tmp_path)
    full = zoo.create(str(saved / "s2f"))
    ablated = zoo.create("spike2former_camvid", **TINY_SPIKE2FORMER, me_shortcut=False)
    ablated.load_state_dict({k: v for k, v in full.state_dict().items() if k not in SHORTCUT_WEIGHTS})
    images = normalised(saved / "images", full)
    reports = {"ME-Shortcut": measure_firing(full, images, progress=False),
               "no ME-Shortcut": measure_firing(ablated, images, progress=False)}
    rates = {label: r.layer("sdme.embed_spike").mean_count for label, r in reports.items()}
    assert rates["ME-Shortcut"] != rates["no ME-Shortcut"]  # the ablation shows

    rows = read_csv(tmp_path / "degradation.csv")
    assert [(r["model"], int(r["depth"]), r["layer"], r["group"], float(r["firing_rate"])) for r in rows] == \
        [(label, row.depth, row.name, row.group, row.mean_count) for label, r in reports.items() for row in r.layers]
    marked = read_csv(tmp_path / "degradation_marked.csv")
    assert {(m["model"], m["neuron"], int(m["depth"]), float(m["firing_rate"])) for m in marked} == \
        {(label, n, r.layer(n).depth, r.layer(n).mean_count) for label, r in reports.items()
         for n in ("sdme.query_spike", "sdme.embed_spike")}
    assert sorted(summary["ablation_dropped_weights"]) == sorted(SHORTCUT_WEIGHTS)
    assert {label: s["marked"]["sdme.embed_spike"] for label, s in summary["per_model"].items()} == rates
    assert is_png(tmp_path / "degradation.png") and (tmp_path / "degradation.svg").read_text().lstrip().startswith("<")


def test_degradation_compares_listed_models(saved, tmp_path):
    models = [str(saved / "s2f"), str(saved / "fpn")]
    assert main(["degradation", "--models", *models, "--data", str(saved / "images"), "--out", str(tmp_path),
                 "--no-progress"]) == 0
    spikefpn = zoo.create(models[1])
    report = measure_firing(spikefpn, normalised(saved / "images", spikefpn), progress=False)
    rows = [r for r in read_csv(tmp_path / "degradation.csv") if r["model"] == models[1]]
    assert [(r["layer"], float(r["firing_rate"])) for r in rows] == [(r.name, r.mean_count) for r in report.layers]
    assert {m["model"] for m in read_csv(tmp_path / "degradation_marked.csv")} == {models[0]}  # SpikeFPN: no SDME
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ablation_dropped_weights"] is None and list(summary["per_model"]) == models


def test_masks_files_hold_the_patterns(saved, tmp_path):
    summary = run("masks", saved / "s2f", saved / "images", tmp_path, "--mask-size", "16", "--columns", "3")
    model = zoo.create(str(saved / "s2f"))
    patterns = query_mask_patterns(model, normalised(saved / "images", model), size=16, progress=False)
    saved_arrays = np.load(tmp_path / "query_masks.npz")
    np.testing.assert_array_equal(saved_arrays["mean_masks"], patterns.mean_masks)
    np.testing.assert_array_equal(saved_arrays["class_histogram"], patterns.class_histogram)
    classes = read_csv(tmp_path / "query_masks_classes.csv")
    names = list(model.pretrained_cfg.class_names)
    assert list(classes[0]) == ["query", *names, "no_object"]
    assert [[int(row[c]) for c in [*names, "no_object"]] for row in classes] == patterns.class_histogram.tolist()
    top = [names[int(votes[:-1].argmax())] if votes[:-1].any() else None for votes in patterns.class_histogram]
    assert [q["top_class"] for q in summary["per_query"]] == top
    assert [q["mean_mask"] for q in summary["per_query"]] == [float(m.mean()) for m in patterns.mean_masks]
    assert (summary["queries"], summary["num_classes"], summary["images"]) == (5, 11, 3)
    assert is_png(tmp_path / "query_masks_masks.png") and is_png(tmp_path / "query_masks_classes.png")


def test_energy_files_hold_the_estimate(saved, tmp_path):
    summary = run("energy", saved / "s2f", saved / "images", tmp_path)
    model = zoo.create(str(saved / "s2f")).eval()
    report = estimate(model, torch.cat(normalised(saved / "images", model)))
    assert report.total_acs > 0 and report.total_macs > 0
    assert summary["total_mj"] == pytest.approx(report.total_mj, rel=1e-12)
    assert (summary["total_macs"], summary["total_acs"]) == pytest.approx((report.total_macs, report.total_acs),
                                                                          rel=1e-12)
    parts = read_csv(tmp_path / "energy_by_part.csv")
    expected = report.by_part()
    assert [p["part"] for p in parts] == list(expected) == ["backbone", "pixel_decoder", "transformer_decoder", "sdme"]
    for row in parts:
        totals = expected[row["part"]]
        assert float(row["macs"]) == pytest.approx(totals["macs"], rel=1e-12)
        assert float(row["acs"]) == pytest.approx(totals["acs"], rel=1e-12)
        assert float(row["mac_mj"]) == pytest.approx(totals["macs"] * 4.6e-9, rel=1e-9)
        assert float(row["ac_mj"]) == pytest.approx(totals["acs"] * 0.9e-9, rel=1e-9)
        assert float(row["mac_mj"]) + float(row["ac_mj"]) == pytest.approx(float(row["mj"]), rel=1e-9)
    assert json.loads((tmp_path / "energy.json").read_text())["total_mj"] == pytest.approx(report.total_mj, rel=1e-12)
    assert summary["paper_energy_mj"] is None and summary["input_shape"] == [3, 64, 64]
    assert is_png(tmp_path / "energy_by_part.png")


def test_size_resizes_every_image_to_one_shape(saved, tmp_path):
    summary = run("energy", saved / "fpn", saved / "mixed", tmp_path, "--size", "32x48")
    assert summary["input_shape"] == [3, 32, 48] and summary["image_sizes"] == [[32, 48]]
    summary = run("firing", saved / "fpn", saved / "mixed", tmp_path / "short", "--size", "40")
    assert summary["image_sizes"] == [[40, 40], [40, 67]]  # short side 40: 48x80 -> 40x66.7


def test_camvid_recipe_reads_its_val_split(saved, tmp_path, camvid_data):
    summary = run("firing", saved / "s2f", "camvid", tmp_path, "--data-root", str(camvid_data),
                  "--limit", "2", "--size", "64")
    model = zoo.create(str(saved / "s2f"))
    normalise = Normalize(model.pretrained_cfg.mean, model.pretrained_cfg.std)
    dataset = build_dataset("camvid", str(camvid_data), "val")
    images = [normalise({"image": TF.resize(dataset[i]["image"], [64, 85], antialias=True)})["image"][None]
              for i in range(2)]  # 360x480 with a short side of 64
    report = measure_firing(model, images, progress=False)
    assert layer_rows(tmp_path / "firing_layers.csv") == expected_layer_rows(report)
    assert (summary["images"], summary["image_sizes"]) == (2, [[64, 85]])
    assert "camvid val split" in summary["data"]


@pytest.mark.parametrize("args, message", [
    (["firing", "--model", "spike2former_camvdi"], "unknown model 'spike2former_camvdi'; did you mean"),
    (["firing", "--data", "{root}/missing"], "neither a recipe"),
    (["firing", "--data", "{root}/empty"], "holds no .jpg/.jpeg/.png images"),
    (["firing", "--model", "{root}"], "folder without config.json"),
    (["firing", "--weights", "{root}/fpn"], "does not fit Spike2Former"),
    (["firing", "--set", "widths=3"], "unexpected keyword argument 'widths'"),
    (["firing", "--model", "spike2former_camvid", "--set", "num_queries=7"], "--weights random"),
    (["firing", "--weights", "random"], "applies to a registered model name"),
    (["firing", "--data", "{root}/images", "--split", "val"], "apply to a recipe"),
    (["masks", "--model", "{root}/fpn"], "predicts no query masks"),
    (["degradation", "--model", "{root}/fpn"], "no ME-Shortcut"),
    (["energy", "--data", "{root}/mixed"], "one size"),
], ids=["unknown-model", "missing-folder", "empty-folder", "folder-without-config", "wrong-weights", "bad-set",
        "set-against-trained-weights", "random-for-a-folder",
        "split-on-folder", "masks-on-spikefpn", "degradation-on-spikefpn", "energy-mixed-sizes"])
def test_bad_input_exits_with_a_message(saved, tmp_path, capsys, args, message):
    defaults = {"--model": "{root}/s2f", "--data": "{root}/images", "--out": str(tmp_path)}
    for option, value in defaults.items():
        if option not in args:
            args = [*args, option, value]
    with pytest.raises(SystemExit) as exit_info:
        main([a.format(root=saved) for a in args] + ["--no-progress"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_command_line_error_has_no_traceback(saved, tmp_path):
    result = subprocess.run([sys.executable, "-m", "analysis", "firing", "--model", "nope", "--data",
                             str(saved / "images"), "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    runtime_line, error_line = result.stderr.strip().splitlines()   # the set-up it chose, then the error
    assert runtime_line.startswith("runtime: ")
    assert error_line == "python -m analysis firing: error: unknown model 'nope' (zoo.list_models() lists them all)"


def test_unreadable_inputs_exit_with_a_message(saved, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "a.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    cases = {
        "broken image": (["--data", str(broken)], "a.png"),
        "missing weights": (["--weights", str(tmp_path / "none.pth")], "none.pth"),
        "corrupt weights": (["--weights", str(tmp_path / "bad.pth")], "bad.pth"),
        "missing data root": (["--data", "camvid", "--data-root", str(tmp_path / "nowhere")], "nowhere"),
    }
    for name, (args, words) in cases.items():
        argv = ["firing", "--model", str(saved / "s2f"), "--data", str(saved / "images"), "--out",
                str(tmp_path / "out"), "--no-progress"]
        for option, value in zip(args[::2], args[1::2]):
            if option in argv:
                argv[argv.index(option) + 1] = value
            else:
                argv += [option, value]
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and words in err and "error:" in err, (name, err)
