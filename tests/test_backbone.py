"""Meta-SpikeFormer: official parameter counts and state_dict keys, shapes, spike-driven attention, BNAndPad."""
import random

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import monitor

from neurons import NILIFNode
from zoo.backbones import MetaSpikeFormer, convert_official_backbone
from zoo.backbones.meta_spikeformer import BNAndPad, ConvBlock, SpikeDrivenSelfAttention, TransformerBlock
from zoo.layers import neuron_factory
from zoo.registry import get_builder, get_pretrained_cfg
import conftest

TSV = str(conftest.OFFICIAL_KEYS / "SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv")
TINY = (8, 16, 32, 40)


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def official_backbone_state_dict(seed=0):
    """Random tensors with the shapes of the official Spike2Former backbone (``backbone.`` stripped)."""
    return conftest.synthetic_official_state(TSV, "backbone.", seed=seed)


def test_default_parameter_count_and_channels():
    with torch.device("meta"):
        model = MetaSpikeFormer()
    assert n_params(model) == 14_751_208  # the official backbone without its classifier
    assert model.out_channels == (32, 64, 128, 360)
    # the ImageNet model with SDT-V2's Linear(360, 1000) head: the paper's "15M"
    assert round((n_params(model) + 360 * 1000 + 1000) / 1e6, 2) == 15.11


@pytest.mark.parametrize("name, dims, published_m", [
    ("meta_spikeformer_15m", (64, 128, 256, 360), None),
    ("meta_spikeformer_31m", (96, 192, 384, 480), 31.3),   # SDT-V2 paper, Table (with the 1000-class head)
    ("meta_spikeformer_55m", (128, 256, 512, 640), 55.4),
    ("meta_spikeformer_124m", (192, 384, 768, 960), None),
])
def test_registered_variants(name, dims, published_m):
    with torch.device("meta"):
        model = get_builder(name)()
    cfg = get_pretrained_cfg(name)
    assert model.embed_dims == dims
    assert cfg.task == "backbone" and cfg.num_classes is None
    assert n_params(model) == cfg.params
    if published_m is not None:
        assert round((cfg.params + dims[3] * 1000 + 1000) / 1e6, 1) == published_m


def test_builders_forward_kwargs():
    with torch.device("meta"):
        model = get_builder("meta_spikeformer_15m")(depths=(1, 1), num_heads=4)
    assert len(model.stage3) == 1 and model.stage3[0].attn.num_heads == 4


# official key -> our module path, written out by hand from the official code and its key list
EXPECTED_KEYS = {
    "downsample1_1.encode_conv.weight": "stem.conv.weight",
    "downsample1_1.encode_bn.running_var": "stem.bn.running_var",
    "ConvBlock1_1.0.Conv.pwconv1.weight": "stage1a.0.sepconv.pw1.weight",
    "ConvBlock1_1.0.Conv.bn1.bias": "stage1a.0.sepconv.bn1.bias",
    "ConvBlock1_1.0.Conv.dwconv.weight": "stage1a.0.sepconv.dw.weight",
    "ConvBlock1_1.0.Conv.pwconv2.weight": "stage1a.0.sepconv.pw2.weight",
    "ConvBlock1_1.0.Conv.bn2.running_mean": "stage1a.0.sepconv.bn2.running_mean",
    "ConvBlock1_1.0.conv1.weight": "stage1a.0.mlp1.conv.weight",
    "ConvBlock1_1.0.bn1.weight": "stage1a.0.mlp1.bn.weight",
    "ConvBlock1_1.0.conv2.weight": "stage1a.0.mlp2.conv.weight",
    "ConvBlock1_1.0.bn2.num_batches_tracked": "stage1a.0.mlp2.bn.num_batches_tracked",
    "downsample1_2.encode_conv.bias": "down1b.conv.bias",
    "ConvBlock1_2.0.conv2.weight": "stage1b.0.mlp2.conv.weight",
    "downsample2.encode_bn.weight": "down2.bn.weight",
    "ConvBlock2_1.0.Conv.pwconv1.weight": "stage2.0.sepconv.pw1.weight",
    "ConvBlock2_2.0.Conv.pwconv1.weight": "stage2.1.sepconv.pw1.weight",
    "downsample3.encode_conv.weight": "down3.conv.weight",
    "block3.0.attn.q_conv.0.body.0.weight": "stage3.0.attn.q.repconv.pw_in.weight",
    "block3.0.attn.q_conv.0.body.1.bn.bias": "stage3.0.attn.q.repconv.bn_pad.bias",
    "block3.0.attn.k_conv.0.body.2.0.weight": "stage3.0.attn.k.repconv.dw.weight",
    "block3.2.attn.v_conv.0.body.2.1.weight": "stage3.2.attn.v.repconv.pw_out.weight",
    "block3.5.attn.v_conv.0.body.2.2.running_mean": "stage3.5.attn.v.repconv.bn.running_mean",
    "block3.5.attn.k_conv.1.weight": "stage3.5.attn.k.bn.weight",
    "block3.1.attn.proj_conv.0.body.0.weight": "stage3.1.attn.proj.repconv.pw_in.weight",
    "block3.1.attn.proj_conv.1.bias": "stage3.1.attn.proj.bn.bias",
    "block3.4.mlp.fc1_conv.weight": "stage3.4.mlp.fc1.conv.weight",
    "block3.4.mlp.fc1_bn.running_var": "stage3.4.mlp.fc1.bn.running_var",
    "block3.4.mlp.fc2_conv.bias": "stage3.4.mlp.fc2.conv.bias",
    "block3.4.mlp.fc2_bn.weight": "stage3.4.mlp.fc2.bn.weight",
    "downsample4.encode_conv.weight": "down4.conv.weight",
    "block4.1.attn.q_conv.1.running_var": "stage4.1.attn.q.bn.running_var",
    "block4.1.mlp.fc2_conv.weight": "stage4.1.mlp.fc2.conv.weight",
}


@pytest.fixture(scope="module")
def loaded_official():
    official = official_backbone_state_dict()
    model = MetaSpikeFormer()
    model.load_state_dict(convert_official_backbone(official), strict=True)
    return official, model.state_dict()


def test_official_keys_land_where_they_belong(loaded_official):
    official, ours = loaded_official
    assert len(ours) == len(official) == 823
    for official_key, our_key in EXPECTED_KEYS.items():
        assert torch.equal(ours[our_key], official[official_key]), official_key
    # a random sample, found by value among all of our tensors: each lands once, unchanged, on a
    # tensor with the same role (leaf name) and the same block index
    for official_key in random.Random(0).sample(sorted(official), 20):
        value = official[official_key]
        homes = [k for k, v in ours.items() if v.shape == value.shape and torch.equal(v, value)]
        assert len(homes) == 1, official_key
        assert homes[0].rsplit(".", 1)[1] == official_key.rsplit(".", 1)[1]
        if official_key.startswith("block"):
            assert homes[0].split(".")[:2] == ["stage" + official_key[5], official_key.split(".")[1]]


def test_imagenet_classification_checkpoint_drops_its_heads():
    official = official_backbone_state_dict(seed=1)
    official.update({"head.weight": torch.randn(1000, 360), "head.bias": torch.randn(1000),
                     "head_kd.weight": torch.randn(1000, 360), "head_kd.bias": torch.randn(1000)})
    converted = convert_official_backbone(official)
    assert not any(k.startswith("head") for k in converted)
    MetaSpikeFormer().load_state_dict(converted, strict=True)


def test_unknown_official_key_is_an_error():
    official = official_backbone_state_dict()
    official["block5.0.attn.q_conv.1.weight"] = torch.zeros(3)
    with pytest.raises(KeyError, match="block5"):
        convert_official_backbone(official)


@pytest.mark.parametrize("T, H, W", [(1, 64, 64), (2, 48, 80)])
def test_forward_shapes_and_strides(T, H, W):
    torch.manual_seed(0)
    model = MetaSpikeFormer(TINY)
    outs = model(torch.randn(T, 2, 3, H, W))
    expected = [(T, 2, c, H // s, W // s) for c, s in zip((4, 8, 16, 40), (2, 4, 8, 16))]
    assert [tuple(o.shape) for o in outs] == expected


def test_gradients_reach_the_first_conv():
    # 128x128, not 64x64: at 4x4 tokens and 5 channels per head the attention output is
    # below half a count, every attention spike is 0, the following BNs see zero variance
    # and scale gradients by 1/sqrt(eps) each (about 1e35 end to end): the official design's
    # behaviour on tiny inputs, not what this test is about.
    torch.manual_seed(0)
    model = MetaSpikeFormer(TINY)
    x = torch.randn(1, 1, 3, 128, 128)
    sum(o.sum() for o in model(x)).backward()
    grad = model.stem.conv.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("D", [4, 2])
def test_every_neuron_emits_multiples_of_one_over_d(D):
    torch.manual_seed(0)
    model = MetaSpikeFormer(TINY, neuron=neuron_factory("nilif", D=D))
    spikes = monitor.OutputMonitor(model, NILIFNode)
    model(torch.randn(2, 1, 3, 64, 64) * 3)
    assert len(spikes.records) == 76  # the official backbone has 76 neurons
    values = torch.cat([r.flatten() for r in spikes.records])
    assert torch.equal(values * D, torch.round(values * D))
    assert values.min() >= 0 and values.max() <= 1 and values.max() > 0
    spikes.remove_hooks()


def quantize(x, D=4):
    """NI-LIF at T = 1 from a fresh state: clip(round(x), 0, D) / D (paper eq. 17)."""
    return torch.clamp(torch.round(x), 0, D) / D


def randomize_bn(module, seed=0):
    """Eval-mode BNs with non-trivial statistics, so that wiring mistakes change the output."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in module.modules():
            if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                for t, lo, hi in ((bn.weight, 0.5, 2.0), (bn.bias, -0.5, 1.0), (bn.running_mean, -0.5, 0.5),
                                  (bn.running_var, 0.5, 2.0)):
                    t.copy_(torch.rand(t.shape, generator=gen) * (hi - lo) + lo)
    return module.eval()


def bn(x, layer):
    return F.batch_norm(x, layer.running_mean, layer.running_var, layer.weight, layer.bias, False, 0.0, layer.eps)


def test_conv_block_matches_a_functional_reference():
    torch.manual_seed(0)
    block = randomize_bn(ConvBlock(6, neuron_factory("nilif", D=4)))
    x = torch.randn(1, 2, 6, 9, 9) * 2
    sep = block.sepconv
    h = bn(F.conv2d(quantize(x[0]), sep.pw1.weight), sep.bn1)
    h = F.conv2d(F.conv2d(quantize(h), sep.dw.weight, padding=3, groups=12), sep.pw2.weight)
    y = x[0] + bn(h, sep.bn2)
    h = bn(F.conv2d(quantize(y), block.mlp1.conv.weight, padding=1), block.mlp1.bn)
    y = y + bn(F.conv2d(quantize(h), block.mlp2.conv.weight, padding=1), block.mlp2.bn)
    torch.testing.assert_close(block(x)[0], y)


def test_transformer_block_is_attention_then_mlp_residuals():
    torch.manual_seed(0)
    block = randomize_bn(TransformerBlock(16, neuron_factory("nilif", D=4), num_heads=4))
    seen = {}
    block.attn.register_forward_hook(lambda m, i, o: seen.__setitem__("attn", o))
    block.mlp.register_forward_hook(lambda m, i, o: seen.__setitem__("mlp", (i[0], o)))
    x = torch.randn(1, 2, 16, 4, 5) * 2
    y = block(x)
    mlp_in, mlp_out = seen["mlp"]
    torch.testing.assert_close(mlp_in, x + seen["attn"])
    torch.testing.assert_close(y, mlp_in + mlp_out)
    # the MLP: SN -> Conv1d(bias) -> BN1d -> SN -> Conv1d(bias) -> BN1d on the H*W tokens
    fc1, fc2 = block.mlp.fc1, block.mlp.fc2
    tokens = mlp_in[0].flatten(2)
    h = bn(F.conv1d(quantize(tokens), fc1.conv.weight, fc1.conv.bias), fc1.bn)
    h = bn(F.conv1d(quantize(h), fc2.conv.weight, fc2.conv.bias), fc2.bn)
    torch.testing.assert_close(mlp_out[0], h.reshape(2, 16, 4, 5))


def test_spike_driven_attention_equals_the_quadratic_formula():
    torch.manual_seed(0)
    T, B, dim, heads, H, W = 2, 3, 40, 8, 6, 7
    attn = SpikeDrivenSelfAttention(dim, neuron_factory("nilif", D=4), num_heads=heads).eval()
    with torch.no_grad():  # eval mode makes the wiring check below repeatable; BN gains that give spikes
        for module in attn.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(1.0, 3.0)
                module.bias.uniform_(0.0, 1.0)
    seen = {}

    def keep(name):
        return lambda module, inputs, output: seen.__setitem__(name, (inputs[0], output))

    for name in ("spike_in", "q_spike", "k_spike", "v_spike", "attn_spike"):
        getattr(attn, name).register_forward_hook(keep(name))
    y = attn(torch.randn(T, B, dim, H, W) * 3)

    def per_frame(module, x):
        return module(x.flatten(0, 1)).reshape(x.shape)

    # wiring: Q, K, V = SN(BN(RepConv(SN(x)))) each with its own weights; y = BN(RepConv(SN(A)))
    x_spiked = seen["spike_in"][1]
    for name in ("q", "k", "v"):
        torch.testing.assert_close(seen[f"{name}_spike"][0], per_frame(getattr(attn, name), x_spiked))
    torch.testing.assert_close(y, per_frame(attn.proj, seen["attn_spike"][1]))

    # A = (Q K^T) V / sqrt(C/h) per head, here in the quadratic order (N x N scores, no softmax)
    q, k, v = (seen[f"{name}_spike"][1] for name in ("q", "k", "v"))
    d = dim // heads
    assert q.abs().sum() > 0 and k.abs().sum() > 0 and v.abs().sum() > 0
    expected = torch.empty(T, B, dim, H, W)
    for h in range(heads):
        block = slice(h * d, (h + 1) * d)
        qh, kh, vh = (t[:, :, block].flatten(3).transpose(-1, -2) for t in (q, k, v))  # [T, B, N, d]
        out = ((qh @ kh.transpose(-1, -2)) @ vh) / d ** 0.5
        expected[:, :, block] = out.transpose(-1, -2).reshape(T, B, d, H, W)
    torch.testing.assert_close(seen["attn_spike"][0], expected, rtol=1e-5, atol=1e-5)


def test_bn_and_pad_pads_with_what_bn_maps_zero_to():
    bn = BNAndPad(2, pad=1)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, -0.5]))
        bn.bias.copy_(torch.tensor([0.3, 1.0]))
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))
    bn.eps = 0.0
    bn.eval()
    x = torch.arange(18.0).reshape(1, 2, 3, 3)
    y = bn(x)
    assert y.shape == (1, 2, 5, 5)
    # by hand: channel 0 maps v to (v - 1) / 2 * 2 + 0.3, channel 1 to (v + 2) / 0.5 * -0.5 + 1
    assert torch.equal(y[0, 0, 1:4, 1:4], x[0, 0] - 1 + 0.3)
    assert torch.equal(y[0, 1, 1:4, 1:4], -(x[0, 1] + 2) + 1)
    border = torch.ones(5, 5, dtype=torch.bool)
    border[1:4, 1:4] = False
    assert (y[0, 0][border] == -1 + 0.3).all() and (y[0, 1][border] == -2 + 1).all()
    # hence at inference it equals BN of the zero-padded input (what makes RepConv re-parameterisable)
    bn.eps = 1e-5
    x = torch.randn(2, 2, 4, 5)
    plain = torch.nn.BatchNorm2d(2).eval()
    plain.load_state_dict(bn.state_dict())
    torch.testing.assert_close(bn(x), plain(F.pad(x, [1, 1, 1, 1])))
