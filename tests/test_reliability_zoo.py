"""Inputs a user can plausibly get wrong: images that are not what the models take, and checkpoints
that almost fit. Each must fail with an error naming what is wrong, never give a silent wrong answer."""
import pytest
import torch

import zoo
from conftest import OFFICIAL_KEYS, official_shapes, tiny
from zoo.backbones import MetaSpikeFormer, convert_official_backbone
from zoo.backbones.meta_spikeformer import official_backbone_key
from zoo.factory import load_weights

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENTORS = ["spike2former_camvid", "spikefpn_camvid"]


@pytest.fixture(scope="module", params=SEGMENTORS)
def segmentor(request):
    torch.manual_seed(0)
    return tiny(request.param).eval()


def _run(model, images, how):
    with torch.no_grad():
        return model(images) if how == "forward" else model.predict(images)


# ------------------------------------------------------------------------------------------ images

@pytest.mark.parametrize("how", ["forward", "predict"])
@pytest.mark.parametrize("bad, count", [(float("nan"), 1), (float("inf"), 2)])
def test_non_finite_pixels_are_an_error_not_class_0(segmentor, how, bad, count):
    images = torch.randn(2, 3, 64, 64)
    images[1, 0, 5, 7:7 + count] = bad
    with pytest.raises(ValueError, match=rf"{count} non-finite values? \(NaN or inf\)") as err:
        _run(segmentor, images, how)
    assert "decoding" in str(err.value) and "normalisation" in str(err.value)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_other_float_dtypes_are_cast_to_the_model_dtype(segmentor, dtype):
    images = torch.randn(1, 3, 64, 64).to(dtype)
    expected = segmentor.predict(images.float())
    assert torch.equal(segmentor.predict(images), expected)
    out = _run(segmentor, images, "forward")
    logits = out["pred_masks"] if isinstance(out, dict) else out
    assert logits.dtype == torch.float32


@pytest.mark.parametrize("how", ["forward", "predict"])
def test_empty_batch_and_empty_images_are_errors(segmentor, how):
    with pytest.raises(ValueError, match=r"empty batch: images has shape \[0, 3, 64, 64\]"):
        _run(segmentor, torch.zeros(0, 3, 64, 64), how)
    for shape in ([1, 3, 0, 64], [1, 3, 64, 0]):
        with pytest.raises(ValueError, match=rf"no pixels \(spatial size {shape[2]}x{shape[3]}\)"):
            _run(segmentor, torch.zeros(shape), how)


@pytest.mark.parametrize("channels", [1, 4])
def test_wrong_channel_count_says_so_and_suggests_rgb(segmentor, channels):
    with pytest.raises(ValueError) as err:
        _run(segmentor, torch.randn(1, channels, 64, 64), "forward")
    text = str(err.value)
    assert f"expects 3 (RGB) channels, got {channels}" in text and "grayscale or RGBA" in text
    assert "batch axis" not in text


def test_batch_axis_and_channels_last_hints_only_where_they_apply(segmentor):
    with pytest.raises(ValueError, match=r"got \[3, 64, 64\]; add a batch axis with images\[None\]"):
        _run(segmentor, torch.randn(3, 64, 64), "forward")
    with pytest.raises(ValueError, match=r"got 64 .*channels-last.*permute\(0, 3, 1, 2\)") as err:
        _run(segmentor, torch.randn(1, 64, 64, 3), "forward")
    assert "batch axis" not in str(err.value)


# ------------------------------------------------------------------ ImageNet backbone checkpoints

def _imagenet_checkpoint(backbone: MetaSpikeFormer):
    """``backbone`` written as an SDT-V2 ImageNet classification checkpoint, with its classifiers."""
    state = {official_backbone_key(k): v.clone() for k, v in backbone.state_dict().items()}
    width = backbone.out_channels[-1]
    state.update({"head.weight": torch.randn(10, width), "head.bias": torch.randn(10),
                  "head_kd.weight": torch.randn(10, width), "head_kd.bias": torch.randn(10)})
    return state


def test_official_backbone_key_inverts_the_conversion():
    with torch.device("meta"):
        ours = MetaSpikeFormer().state_dict()
    official = {official_backbone_key(k): v for k, v in ours.items()}
    assert official_backbone_key("stage3.0.attn.q.bn.weight") == "block3.0.attn.q_conv.1.weight"
    assert official_backbone_key("stem.conv.weight") == "downsample1_1.encode_conv.weight"
    assert list(convert_official_backbone(official)) == list(ours)
    with pytest.raises(KeyError, match="stage9"):
        official_backbone_key("stage9.0.attn.q.bn.weight")


def test_official_backbone_key_names_every_official_key():
    shapes = official_shapes(OFFICIAL_KEYS / "SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv", "backbone.")
    ours = convert_official_backbone({k: torch.zeros(0) for k in shapes})
    assert sorted(official_backbone_key(k) for k in ours) == sorted(shapes)


IMAGENET_TARGETS = [("spike2former_camvid", "backbone."), ("spikefpn_camvid", "backbone."),
                    ("meta_spikeformer_15m", "")]


def _imagenet_target(name):
    if name.startswith("meta_spikeformer"):
        return zoo.create(name, depths=(1, 1), num_heads=2)
    return tiny(name)


@pytest.mark.parametrize("name, prefix", IMAGENET_TARGETS)
def test_imagenet_backbone_loads_the_backbone_only(name, prefix):
    torch.manual_seed(0)
    model = _imagenet_target(name)
    backbone = model.backbone if prefix else model
    torch.manual_seed(1)
    source = type(backbone)(embed_dims=backbone.embed_dims, num_heads=2, depths=(1, 1))
    before = model.state_dict()
    load_weights(model, name, _imagenet_checkpoint(source), "imagenet.pth")
    after = model.state_dict()
    for key, value in source.state_dict().items():
        assert torch.equal(after[prefix + key], value), key
    assert all(torch.equal(after[k], v) for k, v in before.items() if not k.startswith(prefix))


@pytest.mark.parametrize("name, prefix", IMAGENET_TARGETS)
def test_imagenet_backbone_missing_a_tensor_names_it(name, prefix):
    model = _imagenet_target(name)
    backbone = model.backbone if prefix else model
    state = _imagenet_checkpoint(backbone)
    del state["block3.0.attn.q_conv.1.weight"]
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        load_weights(model, name, state, "imagenet.pth")
    text = str(err.value)
    assert "imagenet.pth" in text and "missing keys (1)" in text
    assert f"block3.0.attn.q_conv.1.weight (ours: {prefix}stage3.0.attn.q.bn.weight)" in text


@pytest.mark.parametrize("name, prefix", IMAGENET_TARGETS)
def test_imagenet_backbone_with_an_unknown_key_names_it(name, prefix):
    model = _imagenet_target(name)
    backbone = model.backbone if prefix else model
    state = {**_imagenet_checkpoint(backbone), "block3.0.attn.gate.weight": torch.zeros(1)}
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        load_weights(model, name, state, "imagenet.pth")
    text = str(err.value)
    assert "unexpected keys (1):\n    block3.0.attn.gate.weight" in text and "missing keys" not in text


@pytest.mark.parametrize("name", SEGMENTORS)
def test_our_own_checkpoint_with_an_extra_key_is_not_taken_for_an_official_one(name):
    model = tiny(name)
    state = {**model.state_dict(), "neck.extra.weight": torch.zeros(1)}
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        load_weights(model, name, state, "ours.safetensors")
    text = str(err.value)
    assert "unexpected keys (1):\n    neck.extra.weight" in text and "missing keys" not in text


# ------------------------------------------------------------------- official segmentation checkpoints

def _official_state(tsv):
    """Zeros of the official shapes: what a released checkpoint holds, as far as loading can tell."""
    return {k: torch.zeros(shape) for k, shape in official_shapes(OFFICIAL_KEYS / tsv).items()}


@pytest.fixture(scope="module")
def spike2former_official():
    state = _official_state("SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv")
    return zoo.create("spike2former_ade20k"), state


@pytest.fixture(scope="module")
def spikefpn_official():
    state = _official_state("fpn_sdtv2_512x512_ade20k.tsv")
    return zoo.create("spikefpn_ade20k"), state


def test_official_checkpoints_without_extra_keys_load(spike2former_official, spikefpn_official):
    for name, (model, state) in (("spike2former_ade20k", spike2former_official),
                                 ("spikefpn_ade20k", spikefpn_official)):
        load_weights(model, name, dict(state), "official.pth")


@pytest.mark.parametrize("extra", [
    "auxiliary_head.conv_seg.weight",            # mmseg auxiliary FCN head: the official config has none
    "neck.lateral_convs.0.conv.weight",
    "step",                                      # top level
    "decode_head.conv_seg.weight",               # mmseg BaseDecodeHead's classifier, which Mask2Former drops
    "decode_head.shortcut_conv.2.weight",        # under an SDME module, but not one of its keys
    "decode_head.query_embed.bias",              # under a decoder embedding, but not one of its keys
    "decode_head.transformer_decoder.layers.0.ffn.fc3.weight",
    "decode_head.pixel_decoder.extra.weight",
    "backbone.block3.0.attn.gate.weight",
])
def test_official_spike2former_checkpoint_with_an_extra_key_is_an_error(spike2former_official, extra):
    _assert_only_extra_key_reported(*spike2former_official, "spike2former_ade20k", extra, "Spike2Former")


def _assert_only_extra_key_reported(model, state, name, extra, architecture):
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        load_weights(model, name, {**state, extra: torch.zeros(1)}, "official.pth")
    text = str(err.value)
    assert text.startswith(f"official.pth: an official {architecture} checkpoint")
    assert f"unexpected keys (1):\n    {extra}" in text and "missing keys" not in text


def test_unknown_backbone_key_is_named_instead_of_every_key_missing(spike2former_official):
    model, state = spike2former_official
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        load_weights(model, "spike2former_ade20k", {**state, "backbone.foo": torch.zeros(1)}, "official.pth")
    text = str(err.value)
    assert "unexpected keys (1):\n    backbone.foo" in text
    assert "missing keys" not in text and len(text.splitlines()) < 5


@pytest.mark.parametrize("extra", [
    "auxiliary_head.conv_seg.weight", "backbone.foo", "step",
    "decode_head.scale_heads.1.1.1.weight",  # index 1 is the upsampling layer, which has no weights
])
def test_official_spikefpn_checkpoint_with_an_extra_key_is_an_error(spikefpn_official, extra):
    _assert_only_extra_key_reported(*spikefpn_official, "spikefpn_ade20k", extra, "SpikeFPN")


def test_backbone_model_names_an_unknown_key_of_an_official_segmentation_checkpoint(spike2former_official):
    _, state = spike2former_official
    with torch.device("meta"):
        backbone = zoo.create("meta_spikeformer_15m")
    with pytest.raises(zoo.CheckpointMismatchError) as err:
        load_weights(backbone, "meta_spikeformer_15m", {**state, "backbone.foo": torch.zeros(1)}, "official.pth")
    text = str(err.value)
    assert "unexpected keys (1):\n    backbone.foo" in text and "missing keys" not in text
