"""SpikeFPN baseline: official parameter counts and state_dict keys, output stride, a functional reference."""
import random

import pytest
import torch
import torch.nn.functional as F

from zoo.spikefpn import SpikeFPN, convert_official_spikefpn
import conftest

TSV = str(conftest.OFFICIAL_KEYS / "fpn_sdtv2_512x512_ade20k.tsv")
TINY = (8, 16, 32, 40)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def tiny_spikefpn(num_classes=5, neck_channels=8, T=1):
    return SpikeFPN(num_classes, T=T, embed_dims=TINY, neck_channels=neck_channels)


def official_state_dict():
    return conftest.synthetic_official_state(TSV)


def test_default_parameter_counts():
    with torch.device("meta"):
        model = SpikeFPN(150)
    # the official counts: backbone 14,751,208 + neck 667,648 + head 1,053,334
    assert (n_params(model.backbone), n_params(model.neck), n_params(model.head)) == (14_751_208, 667_648, 1_053_334)
    assert n_params(model) == 16_472_190


# official key -> our key, by hand from the official QFPN / QFPNHead code and its key list
EXPECTED_KEYS = {
    "backbone.downsample1_1.encode_conv.weight": "backbone.stem.conv.weight",
    "backbone.block4.1.mlp.fc2_bn.running_var": "backbone.stage4.1.mlp.fc2.bn.running_var",
    "neck.lateral_convs.0.0.weight": "neck.laterals.0.conv.weight",
    "neck.lateral_convs.3.0.bias": "neck.laterals.3.conv.bias",
    "neck.lateral_convs.2.1.running_mean": "neck.laterals.2.bn.running_mean",
    "neck.fpn_convs.1.0.weight": "neck.outputs.1.conv.weight",
    "neck.fpn_convs.3.1.weight": "neck.outputs.3.bn.weight",
    "decode_head.scale_heads.0.0.1.weight": "head.scale_heads.0.0.conv.weight",
    "decode_head.scale_heads.1.0.2.bias": "head.scale_heads.1.0.bn.bias",
    "decode_head.scale_heads.2.2.1.weight": "head.scale_heads.2.1.conv.weight",
    "decode_head.scale_heads.3.0.1.weight": "head.scale_heads.3.0.conv.weight",
    "decode_head.scale_heads.3.2.2.running_var": "head.scale_heads.3.1.bn.running_var",
    "decode_head.scale_heads.3.4.1.weight": "head.scale_heads.3.2.conv.weight",
    "decode_head.scale_heads.3.4.2.num_batches_tracked": "head.scale_heads.3.2.bn.num_batches_tracked",
    "decode_head.conv_seg.weight": "head.classifier.weight",
    "decode_head.conv_seg.bias": "head.classifier.bias",
}


def test_official_checkpoint_loads_strictly_and_lands_in_place():
    official = official_state_dict()
    model = SpikeFPN(150)
    model.load_state_dict(convert_official_spikefpn(official), strict=True)
    ours = model.state_dict()
    assert len(ours) == len(official) == 923
    for official_key, our_key in EXPECTED_KEYS.items():
        assert torch.equal(ours[our_key], official[official_key]), official_key
    for official_key in random.Random(0).sample(sorted(official), 20):
        value = official[official_key]
        homes = [k for k, v in ours.items() if v.shape == value.shape and torch.equal(v, value)]
        assert len(homes) == 1, official_key
        assert homes[0].split(".")[0] == {"backbone": "backbone", "neck": "neck", "decode_head": "head"}[
            official_key.split(".")[0]]
        assert homes[0].rsplit(".", 1)[1] == official_key.rsplit(".", 1)[1]


def test_unknown_official_key_is_an_error():
    official = official_state_dict()
    official["auxiliary_head.conv_seg.weight"] = torch.zeros(1)
    with pytest.raises(KeyError, match="auxiliary_head"):
        convert_official_spikefpn(official)


@pytest.mark.parametrize("T, H, W", [(1, 64, 64), (2, 48, 80), (1, 50, 70)])
def test_logits_come_out_at_stride_2_averaged_over_t(T, H, W):
    torch.manual_seed(0)
    model = tiny_spikefpn(T=T)
    per_step = {}
    model.head.register_forward_hook(lambda m, i, o: per_step.__setitem__("logits", o))
    logits = model(torch.randn(2, 3, H, W))
    padded_h, padded_w = -(-H // 32) * 32, -(-W // 32) * 32  # inputs are padded to a multiple of 32
    assert logits.shape == (2, 5, padded_h // 2, padded_w // 2)
    assert per_step["logits"].shape[0] == T
    torch.testing.assert_close(logits, per_step["logits"].mean(0))
    assert model.predict(torch.randn(2, 3, H, W)).shape == (2, H, W)


def quantize(x, D=4):
    """NI-LIF at T = 1 from a fresh state: clip(round(x), 0, D) / D (paper eq. 17)."""
    return torch.clamp(torch.round(x), 0, D) / D


def conv_bn(x, block, padding):
    """The reference ``BN(Conv(SN(x)))`` of one neck/head stage, eval-mode BN."""
    y = F.conv2d(quantize(x), block.conv.weight, block.conv.bias, padding=padding)
    bn = block.bn
    return F.batch_norm(y, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_neck_and_head_match_a_functional_reference():
    torch.manual_seed(0)
    model = tiny_spikefpn(num_classes=3, neck_channels=6)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN statistics, then eval mode (no dropout)
        for bn in model.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) * 1.5 + 0.5)
                bn.bias.copy_(torch.rand(bn.bias.shape, generator=gen) * 1.5 - 0.5)
                bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=gen) + 0.5)
    model.eval()
    features = {}
    model.backbone.register_forward_hook(lambda m, i, o: features.__setitem__("x", [f[0] for f in o]))
    logits = model(torch.randn(2, 3, 64, 64) * 2)

    neck, head = model.neck, model.head
    laterals = [conv_bn(x, block, 0) for x, block in zip(features["x"], neck.laterals)]
    for i in (3, 2, 1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
    pyramid = [conv_bn(x, block, 1) for x, block in zip(laterals, neck.outputs)]
    fused = conv_bn(pyramid[0], head.scale_heads[0][0], 1)
    for level, stage_counts in ((1, 1), (2, 2), (3, 3)):  # Semantic FPN: 1, 1, 2, 3 stages
        y = pyramid[level]
        assert len(head.scale_heads[level]) == stage_counts
        for stage in head.scale_heads[level]:
            y = F.interpolate(conv_bn(y, stage, 1), scale_factor=2, mode="bilinear", align_corners=False)
        fused = fused + y
    expected = F.conv2d(quantize(fused), head.classifier.weight, head.classifier.bias)
    assert expected.shape == (2, 3, 32, 32)
    torch.testing.assert_close(logits, expected)


def test_neuron_factory_reaches_neck_and_head():
    model = SpikeFPN(4, embed_dims=TINY, neck_channels=8, D=2)
    assert {m.D for name, m in model.named_modules() if name.startswith(("neck", "head")) and hasattr(m, "D")} == {2}
