"""Every registered segmentation model: builds, runs, trains, saves, loads official checkpoints."""

import pytest
import torch

import conftest
from conftest import lively, tiny
import zoo
import zoo.base
from zoo.backbones import meta_spikeformer
from zoo.complexity import count_macs
from zoo.registry import get_pretrained_cfg

OFFICIAL_KEYS = conftest.OFFICIAL_KEYS

SEGMENTORS = conftest.segmentors()
TAGGED = sorted(f"{n}.{t}" for n in SEGMENTORS for t in zoo.list_tags(n))



def test_there_are_models_to_test():
    assert len(SEGMENTORS) >= 7


@pytest.mark.parametrize("name", SEGMENTORS)
@pytest.mark.parametrize("T", [1, 2])
def test_forward_backward_predict(name, T):
    torch.manual_seed(0)
    model = tiny(name, T=T)
    cfg = model.pretrained_cfg
    images = torch.randn(2, 3, 64, 64)
    out = model(images)
    if model.family == "mask_classification":
        logits, masks = out["pred_logits"], out["pred_masks"]
        assert logits.shape == (3, 2, 5, cfg.num_classes + 1)  # initial queries + 2 layers
        assert masks.shape == (3, 2, 5, 32, 32)
        loss = logits.square().mean() + masks.square().mean()
    else:
        assert out.shape == (2, cfg.num_classes, 32, 32)
        loss = out.square().mean()
    loss.backward()
    first = next(p for n, p in model.named_parameters() if n.startswith("backbone."))
    assert first.grad is not None and first.grad.abs().sum() > 0 and first.grad.isfinite().all()

    model.eval()
    odd = torch.randn(1, 3, 50, 70)
    prediction = model.predict(odd)
    if cfg.task == "panoptic":
        ids, segments = prediction[0]
        assert ids.shape == (50, 70) and ids.dtype == torch.int32
        assert all(0 <= s["category_id"] < cfg.num_classes for s in segments)
    else:
        assert prediction.shape == (1, 50, 70) and prediction.dtype == torch.int64
        assert 0 <= int(prediction.min()) and int(prediction.max()) < cfg.num_classes


def _masks(out):
    return out["pred_masks"] if isinstance(out, dict) else out


@pytest.mark.parametrize("name", SEGMENTORS)
def test_neurons_reset_at_every_forward(name, monkeypatch):
    images = torch.randn(1, 3, 64, 64)
    model = lively(tiny(name, T=2), images)
    model.set_execution(keep_neuron_states=True)  # leftover states would leak into the next forward without the reset
    with torch.no_grad():
        first, second = _masks(model(images)), _masks(model(images))
        assert torch.equal(first, second)
        for module in (zoo.base, meta_spikeformer):                     # the check has teeth:
            monkeypatch.setattr(module, "reset_neurons", lambda net: None)
        leaked = _masks(model(images))                                   # no reset -> a different output
    assert first.abs().sum() > 0 and not torch.equal(first, leaked)


@pytest.mark.parametrize("name", SEGMENTORS)
def test_save_pretrained_round_trip(name, tmp_path):
    torch.manual_seed(1)
    images = torch.randn(1, 3, 64, 64)
    model = lively(tiny(name), images)
    folder = model.save_pretrained(tmp_path / name)
    again = zoo.create(str(folder)).eval()
    with torch.no_grad():
        a, b = _masks(model(images)), _masks(again(images))
    assert a.std() > 0 and torch.equal(a, b)


@pytest.mark.parametrize("name", TAGGED)
def test_recorded_parameter_counts(name):
    cfg = get_pretrained_cfg(name)
    if cfg.params is None:
        pytest.fail(f"{name} records no parameter count")
    model = zoo.create(name)
    assert sum(p.numel() for p in model.parameters()) == cfg.params


@pytest.mark.parametrize("name", TAGGED)
def test_recorded_macs(name):
    """cfg.macs: GMACs per time step of one inference at the crop size (zoo.complexity's convention),
    counted on the meta device so that the 34M models at 1024x1024 cost 1-3 s each."""
    cfg = get_pretrained_cfg(name)
    if cfg.macs is None:
        pytest.fail(f"{name} records no MAC count")
    with torch.device("meta"):
        model = zoo.create(name)
    assert count_macs(model, cfg.crop_size, T=1).total / 1e9 == pytest.approx(cfg.macs, rel=5e-3)


OFFICIAL_CASES = [
    ("SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv", "spike2former_ade20k", {}),
    ("SDTv2_maskformer_DCNPixelDecoder_CityScapes.tsv", "spike2former_cityscapes", {}),
    ("SDTv2_Spike2former_voc_512x512.tsv", "spike2former_voc2012", {"num_classes": 150}),  # as released
    ("SDTv2_maskformer_cocostuff164k_512x512.tsv", "spike2former_ade20k", {"num_classes": 171}),
    ("fpn_sdtv2_512x512_ade20k.tsv", "spikefpn_ade20k", {}),
]


@pytest.mark.parametrize("tsv,name,kwargs", OFFICIAL_CASES)
def test_official_checkpoints_convert_and_load(tsv, name, kwargs, tmp_path):
    path = OFFICIAL_KEYS / tsv
    state = conftest.synthetic_official_state(path)
    ckpt = tmp_path / "official.pth"
    torch.save({"meta": {"iter": 160000}, "state_dict": state}, ckpt)
    model = zoo.create(name, checkpoint_path=ckpt, **kwargs)
    ours = model.state_dict()
    # every official tensor lands somewhere, exactly once, unchanged up to a reshape
    official_values = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    ours_by_sum = {}
    for k, v in ours.items():
        if not k.endswith("num_batches_tracked"):
            ours_by_sum.setdefault((round(float(v.double().sum()), 3), v.numel()), []).append(k)
    for k, v in list(official_values.items())[::37]:
        assert (round(float(v.double().sum()), 3), v.numel()) in ours_by_sum, k


def test_imagenet_backbone_checkpoint_initialises_the_backbone(tmp_path):
    path = OFFICIAL_KEYS / "SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv"
    full = conftest.synthetic_official_state(path)
    classification = {k[len("backbone."):]: v for k, v in full.items() if k.startswith("backbone.")}
    classification["head.weight"], classification["head.bias"] = torch.randn(1000, 360), torch.randn(1000)
    ckpt = tmp_path / "imagenet.pth"
    torch.save({"model": classification}, ckpt)
    torch.manual_seed(0)
    reference = zoo.create("spike2former_ade20k")
    torch.manual_seed(0)
    model = zoo.create("spike2former_ade20k", checkpoint_path=ckpt)
    assert torch.equal(model.state_dict()["sdme.shortcut_weight"], reference.state_dict()["sdme.shortcut_weight"])
    conv = model.state_dict()["backbone." + next(iter(model.backbone.state_dict()))]
    assert torch.equal(conv, classification["downsample1_1.encode_conv.weight"])


@pytest.mark.parametrize("name", ["spike2former_ade20k", "spikefpn_ade20k"])
def test_inference_drops_neuron_states_without_changing_outputs(name):
    from neurons import NILIFNode
    model = tiny(name).eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        dropped = model(images)
        assert all(n.v == 0.0 for n in model.modules() if isinstance(n, NILIFNode))
        model.set_execution(keep_neuron_states=True)
        kept = model(images)
    assert any(isinstance(n.v, torch.Tensor) for n in model.modules() if isinstance(n, NILIFNode))
    a, b = (dropped["pred_masks"], kept["pred_masks"]) if isinstance(kept, dict) else (dropped, kept)
    assert torch.equal(a, b)


@pytest.mark.parametrize("name", [n for n in SEGMENTORS if n.startswith("spike2former")])
@pytest.mark.parametrize("T", [1, 2])
def test_mask_order_skips_the_mask_feature_conv(name, T):
    """'auto' multiplies the embeddings into the mask-feature conv; the logits equal the paper's
    order ('features_first') up to rounding (non-dyadic weights here)."""
    images = torch.randn(2, 3, 64, 64)
    model = lively(tiny(name, T=T).eval(), images, grid=0)
    calls = []
    model.pixel_decoder.mask_feature.conv.register_forward_hook(lambda *args: calls.append(1))
    results = {}
    for order in ("auto", "features_first"):
        model.set_execution(mask_order=order)
        with torch.no_grad():
            results[order] = [model(images, all_layers=all_layers) for all_layers in (False, True)]
        results[order].append(len(calls))
        calls.clear()
    assert results["auto"][2] == 0 and results["features_first"][2] == 2  # one call per forward
    for auto, paper in zip(results["auto"][:2], results["features_first"][:2]):
        for key in ("pred_logits", "pred_masks"):
            scale = paper[key].abs().max()
            assert scale > 0
            assert (auto[key] - paper[key]).abs().max() <= 1e-5 * scale
    with pytest.raises(ValueError, match="mask_order"):
        model.set_execution(mask_order="features first")


@pytest.mark.parametrize("T", [1, 2])
def test_mask_order_gives_the_same_gradients_in_training(T):
    images = torch.randn(2, 3, 64, 64)
    model = lively(tiny("spike2former_ade20k", T=T), images, grid=0).train()
    grads = {}
    for order in ("auto", "features_first"):
        model.set_execution(mask_order=order)
        model.zero_grad()
        out = model(images)
        # a loss that reaches every query state and every mask pixel, like the set criterion's
        (out["pred_masks"].sigmoid().square().mean() + out["pred_logits"].square().mean()).backward()
        grads[order] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["auto"].keys() == grads["features_first"].keys()
    assert grads["features_first"]["pixel_decoder.mask_feature.conv.weight"].abs().max() > 0
    # bias gradients of convs followed by train-mode BN are zero up to rounding: compare on the global scale
    scale = max(float(g.abs().max()) for g in grads["features_first"].values())
    for name, paper in grads["features_first"].items():
        difference = float((grads["auto"][name] - paper).abs().max())
        assert difference <= 1e-5 * scale + 1e-3 * float(paper.abs().max()), (name, difference, scale)
