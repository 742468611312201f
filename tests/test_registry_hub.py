"""Registry, weight loading and saving, on a tiny model registered for the test (no network)."""
import json

import pytest
import torch
import torch.nn as nn

import conftest
import zoo
from zoo import registry
from zoo.base import SegmentationModel


class Tiny(SegmentationModel):
    def __init__(self, num_classes=3, width=4, T=1):
        super().__init__(T=T)
        self.conv = nn.Conv2d(3, width, 3, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Conv2d(width, num_classes, 1)

    def forward(self, images):
        x, _ = self.to_sequence(images)
        return self.head(self.bn(self.conv(x[0])))


def _foreign_filter(state, model):
    """Stands in for an official-checkpoint converter: 'enc.' -> 'conv.'."""
    if not any(k.startswith("enc.") for k in state):
        raise KeyError("no 'enc.' keys")
    return {k.replace("enc.", "conv.", 1): v for k, v in state.items()}


@pytest.fixture
def tiny_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})

    @registry.register_model(cfgs={
        "a": zoo.PretrainedCfg(hub_id="spikezoo-test/tiny", num_classes=3, model_args={"num_classes": 3}),
        "b": zoo.PretrainedCfg(num_classes=5, model_args={"num_classes": 5, "width": 6}),
    }, checkpoint_filter=_foreign_filter)
    def tiny_seg(**kwargs):
        return Tiny(**kwargs)

    @registry.register_model
    def tiny_other(**kwargs):
        return Tiny(**kwargs)

    return tiny_seg


def _fake_hub_cache(root, repo_id, filename, model):
    """The folder layout huggingface_hub reads: models--org--name/{refs/main, snapshots/<rev>/file}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / filename))
    return root


def test_names_tags_and_listing(tiny_registry):
    assert zoo.list_models() == ["tiny_other", "tiny_seg"]
    assert zoo.list_models("tiny_s*") == ["tiny_seg"]
    assert zoo.list_pretrained() == ["tiny_seg.a"]
    assert zoo.get_pretrained_cfg("tiny_seg").name == "tiny_seg.a"  # first tag is the default
    assert zoo.get_pretrained_cfg("tiny_seg.b").num_classes == 5
    assert zoo.list_tags("tiny_seg") == ["a", "b"] and zoo.list_tags("tiny_seg.b") == ["a", "b"]
    assert zoo.list_tags("tiny_other") == []  # one untagged config
    with pytest.raises(KeyError, match="did you mean tiny_seg"):
        zoo.list_tags("tiny_sge")
    model = zoo.create("tiny_seg.b")
    assert model.head.out_channels == 5 and model.conv.out_channels == 6
    assert model.pretrained_cfg.name == "tiny_seg.b"
    assert zoo.create("tiny_seg.b", width=2).conv.out_channels == 2  # kwargs override the config


def test_unknown_names_suggest_the_closest(tiny_registry):
    with pytest.raises(KeyError, match="did you mean tiny_seg"):
        zoo.create("tiny_sge")
    with pytest.raises(KeyError, match="tags are"):
        zoo.create("tiny_seg.zz")


def test_save_pretrained_round_trip(tiny_registry, tmp_path):
    torch.manual_seed(0)
    model = zoo.create("tiny_seg.b", width=3).eval()
    out = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "tiny_seg" and config["model_args"]["width"] == 3
    x = torch.randn(2, 3, 20, 20)
    for again in (zoo.create(str(out)), zoo.create("tiny_seg", checkpoint_path=out)):
        again.eval()
        assert again.conv.out_channels == 3  # saved constructor arguments are reused
        assert torch.equal(again(x), model(x))


def test_pth_wrappers_and_foreign_keys(tiny_registry, tmp_path):
    source = zoo.create("tiny_seg.a")
    foreign = {k.replace("conv.", "enc.", 1): v for k, v in source.state_dict().items()}
    path = tmp_path / "official.pth"
    torch.save({"state_dict": foreign, "meta": {"iter": 10}}, path)
    loaded = zoo.create("tiny_seg.a", checkpoint_path=path)
    assert torch.equal(loaded.conv.weight, source.conv.weight)
    ddp = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, ddp)
    assert torch.equal(zoo.create("tiny_seg.a", checkpoint_path=ddp).head.bias, source.head.bias)


def test_strict_loading_lists_every_mismatch(tiny_registry, tmp_path):
    state = zoo.create("tiny_seg.a").state_dict()
    state.pop("head.bias")
    state["conv.weight"] = torch.zeros(4, 3, 5, 5)
    state["conv.extra"] = torch.zeros(1)
    path = tmp_path / "bad.safetensors"
    from safetensors.torch import save_file
    save_file(state, str(path))
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        zoo.create("tiny_seg.a", checkpoint_path=path)
    text = str(err.value)
    assert "head.bias" in text and "conv.extra" in text and "(4, 3, 5, 5)" in text


def test_missing_and_corrupt_files(tiny_registry, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        zoo.create("tiny_seg.a", checkpoint_path=tmp_path / "nope.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="corrupt"):
        zoo.create("tiny_seg.a", checkpoint_path=corrupt)
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        zoo.create("tiny_seg.a", checkpoint_path=tmp_path)


def test_fake_hub_cache_local_files_only(tiny_registry, tmp_path, monkeypatch):
    torch.manual_seed(3)
    reference = zoo.create("tiny_seg.a")
    cache = _fake_hub_cache(tmp_path / "hub", "spikezoo-test/tiny", "model.safetensors", reference)
    model = zoo.create("tiny_seg.a", pretrained=True, cache_dir=cache, local_files_only=True)
    assert torch.equal(model.conv.weight, reference.conv.weight)
    # HF_HUB_OFFLINE is honoured when local_files_only is not given
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    assert torch.equal(zoo.create("tiny_seg.a", pretrained=True, cache_dir=cache).head.weight,
                       reference.head.weight)


def test_weights_unavailable_errors_say_where_and_how(tiny_registry, tmp_path):
    empty = tmp_path / "empty-cache"
    with pytest.raises(zoo.WeightsUnavailableError) as err:
        zoo.create("tiny_seg.a", pretrained=True, cache_dir=empty, local_files_only=True)
    text = str(err.value)
    assert "model.safetensors" in text and "spikezoo-test/tiny" in text and str(empty) in text
    assert "checkpoint_path" in text
    with pytest.raises(zoo.WeightsUnavailableError, match="no weights are published"):
        zoo.create("tiny_seg.b", pretrained=True)


def test_input_checks(tiny_registry):
    model = zoo.create("tiny_seg.a")
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(3, 8, 8))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    assert model(torch.randn(1, 3, 33, 47)).shape == (1, 3, 64, 64)  # padded to a multiple of 32


@pytest.fixture
def unreachable_hub(monkeypatch):
    """A Hub endpoint on 127.0.0.1 where nothing listens (connections are refused); nothing leaves the machine."""
    import socket

    import huggingface_hub.constants as hf_constants
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    return endpoint


def test_unreachable_hub_fails_fast_and_names_the_installed_cli(tiny_registry, tmp_path, unreachable_hub):
    import time
    start = time.monotonic()
    with pytest.raises(zoo.WeightsUnavailableError) as err:
        zoo.create("tiny_seg.a", pretrained=True, cache_dir=tmp_path / "empty-cache")
    assert time.monotonic() - start < 3  # huggingface_hub alone retries for about 23 s
    text = str(err.value)
    assert "`hf download spikezoo-test/tiny model.safetensors`" in text and "huggingface-cli" not in text
    assert f"the Hub at {unreachable_hub} cannot be reached" in text


def test_unreachable_hub_still_finds_the_cached_file(tiny_registry, tmp_path, unreachable_hub):
    torch.manual_seed(4)
    reference = zoo.create("tiny_seg.a")
    cache = _fake_hub_cache(tmp_path / "hub", "spikezoo-test/tiny", "model.safetensors", reference)
    model = zoo.create("tiny_seg.a", pretrained=True, cache_dir=cache)
    assert torch.equal(model.conv.weight, reference.conv.weight)


def test_truncated_safetensors_names_the_file(tiny_registry, tmp_path):
    path = zoo.create("tiny_seg.a").save_pretrained(tmp_path / "saved") / "model.safetensors"
    data = path.read_bytes()
    for size in (4, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        with pytest.raises(ValueError, match=rf"cannot read checkpoint {path}: .*truncated or corrupt"):
            zoo.create("tiny_seg.a", checkpoint_path=path)


def test_folders_without_a_model_say_what_is_missing(tiny_registry, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"folder without config.json, so it names no model"):
        zoo.create(str(empty))
    with pytest.raises(FileNotFoundError, match=r"folder without model.safetensors"):
        zoo.create("tiny_seg.a", checkpoint_path=empty)
    saved = zoo.create("tiny_seg.a").save_pretrained(tmp_path / "saved")
    (saved / "config.json").write_text('{"architecture": "tiny_')
    with pytest.raises(ValueError, match=rf"cannot read {saved / 'config.json'}: .*save the model again"):
        zoo.create(str(saved))


def test_save_pretrained_onto_a_file_is_a_clear_error(tiny_registry, tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match=r"model.bin is a file; save_pretrained writes a folder"):
        zoo.create("tiny_seg.a").save_pretrained(target)
    assert target.read_bytes() == b"keep me"


def test_save_pretrained_on_a_full_disk_says_so_and_leaves_the_old_save(tiny_registry, tmp_path, monkeypatch):
    import errno

    saved = zoo.create("tiny_seg.a").save_pretrained(tmp_path / "saved")
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def full_disk(fd):  # the bytes went into the temporary file; flushing them to disk fails
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zoo.hub.os, "fsync", full_disk)
    with pytest.raises(OSError) as err:
        zoo.create("tiny_seg.b").save_pretrained(saved)
    assert err.value.errno == errno.ENOSPC
    assert "the disk is full" in str(err.value) and str(saved) in str(err.value)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before  # no temporary file, old save intact


def test_saved_files_get_the_mode_open_would_give_not_mkstemps_private_one(tiny_registry, tmp_path):
    import os
    import stat
    previous = os.umask(0o022)
    try:
        saved = zoo.create("tiny_seg.a").save_pretrained(tmp_path / "saved")
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in saved.iterdir()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_save_pretrained_on_a_real_full_filesystem(tiny_registry, tmp_path):
    """A 64 KiB tmpfs: safetensors' own writer reports a full disk as a SafetensorError, not an OSError."""
    import errno
    import subprocess
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        model = zoo.create("tiny_seg.a")
        big = torch.nn.Linear(200, 200)          # 160 KB of weights: more than the filesystem holds
        model.add_module("big", big)
        with pytest.raises(OSError, match="the disk is full") as err:
            model.save_pretrained(mount / "saved")
        assert err.value.errno == errno.ENOSPC
        assert list((mount / "saved").iterdir()) == []
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_shipped_weights_load_offline_with_their_metadata(monkeypatch, tmp_path):
    """Weights inside the package: pretrained=True reads them without touching the Hub, and their JSON
    fills the config that users read."""
    from safetensors.torch import save_file

    import huggingface_hub
    torch.manual_seed(3)
    trained = Tiny(num_classes=3)
    save_file(trained.state_dict(), str(tmp_path / "tiny_ship.a.safetensors"))
    (tmp_path / "tiny_ship.a.json").write_text(json.dumps({
        "shipped_file": "tiny_ship.a.safetensors", "metrics": {"val": {"mIoU": 12.5}},
        "training": {"recipe": "tiny", "command": "python -m recipes train tiny", "iterations": 10}}))
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "SHIPPED_WEIGHTS", tmp_path)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("shipped weights must not touch the Hub"))

    @registry.register_model(cfgs={"a": zoo.PretrainedCfg(num_classes=3, model_args={"num_classes": 3}),
                                   "b": zoo.PretrainedCfg(num_classes=3, model_args={"num_classes": 3})})
    def tiny_ship(**kwargs):
        return Tiny(**kwargs)

    cfg = zoo.get_pretrained_cfg("tiny_ship.a")
    assert cfg.has_weights and cfg.metrics == {"val": {"mIoU": 12.5}} and cfg.training["iterations"] == 10
    assert zoo.list_pretrained() == ["tiny_ship.a"]                   # tag b ships nothing
    model = zoo.create("tiny_ship.a", pretrained=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    (tmp_path / "tiny_ship.a.safetensors").unlink()                   # an install that lost its data files
    with pytest.raises(zoo.hub.WeightsUnavailableError, match="should ship with the package"):
        zoo.create("tiny_ship.a", pretrained=True)
    with pytest.raises(zoo.hub.WeightsUnavailableError, match="no weights are published"):
        zoo.create("tiny_ship.b", pretrained=True)


@pytest.mark.parametrize("name", conftest.segmentors())
def test_config_says_what_was_built(name):
    """T, D and neuron are read from the arguments the model was built with; overrides are recorded."""
    from neurons import NILIFNode
    tiny = registry.get_test_args(name)
    registered = zoo.get_pretrained_cfg(name)
    T, D = registered.T, registered.D
    model = zoo.create(name, **tiny, T=T + 1, neuron="ilif")
    cfg = model.pretrained_cfg
    assert (cfg.T, cfg.neuron, cfg.D) == (T + 1, "ilif", D) and model.T == T + 1
    assert {m.D for m in model.modules() if isinstance(m, NILIFNode)} == {D}
    assert {m.norm for m in model.modules() if isinstance(m, NILIFNode)} == {1.0}
    given = {**tiny, "T": T + 1, "neuron": "ilif"}
    assert cfg.overrides == {k: v for k, v in given.items() if registered.model_args.get(k) != v}
    assert cfg.model_args == {**registered.model_args, **given}
    assert cfg.name == registered.name and registered.overrides == {}   # the registry's own config is untouched
    assert cfg.to_dict()["T"] == T + 1
    with pytest.raises(ValueError, match="pass constructor arguments instead"):
        zoo.create(name, pretrained_cfg_overlay={"T": 2})
    official = zoo.create(name, **tiny, neuron="official").pretrained_cfg
    assert (official.neuron, official.D) == ("official", 8)
