"""Spike2Former pixel decoder: parameter counts, official keys, deformable sampling,
ESC, layer scales, shapes, gradients and the official reshape quirks (R1, R3).

References are written out here independently of the module: official key lists and
shapes come from the TSV dumps of the released models, the deformable sampling is
checked against explicit bilinear interpolation loops, ESC against functional ops.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

import zoo.spike2former.pixel_decoder as pd
import conftest
from neurons import NILIFNode
from zoo.layers.common import neuron_factory
from zoo.spike2former.pixel_decoder import (
    ESC, SDDA, ChannelMLP, SpikePixelDecoder, convert_official_pixel_decoder, deformable_sample,
    tokens_last)

KEYS_DIR = conftest.OFFICIAL_KEYS
ADE_TSV = KEYS_DIR / "SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv"
CITYSCAPES_TSV = KEYS_DIR / "SDTv2_maskformer_DCNPixelDecoder_CityScapes.tsv"
PREFIX = "decode_head.pixel_decoder."
BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

TINY = dict(in_channels=(8, 8, 16, 24), feat_channels=16, groups=2, num_encoder_layers=1)
NILIF = neuron_factory("nilif")


def n_params(module):
    return sum(p.numel() for p in module.parameters())


def official_shapes(tsv):
    """Pixel-decoder keys of an official model (prefix stripped) -> shape tuple."""
    return conftest.official_shapes(tsv, PREFIX)


def tiny_features(T=1, B=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(T, B, c, size // s, size // s, generator=g) * 2 + 0.5
            for c, s in zip(TINY["in_channels"], (2, 4, 8, 16))]


def run(model, *args):
    """One forward from rest (the owning model resets its neurons the same way)."""
    functional.reset_net(model)
    return model(*args)


def randomise_(model, seed=0):
    """Non-trivial weights everywhere: BN statistics, layer scales, offset/weight convs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            if name.endswith("running_var") or name.endswith("bn.weight") or name.endswith("bn1.weight") \
                    or name.endswith("bn2.weight"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif "gamma" in name:
                t.fill_(1.0)
            else:
                t.copy_(torch.randn(t.shape, generator=g) * 0.5)
    return model


# ----------------------------------------------------------------------------- parameter counts

def test_default_parameter_count_is_the_official_ade20k_one():
    m = SpikePixelDecoder()
    layer = m.encoder[0]
    assert n_params(m) == 9_796_544
    assert len(m.encoder) == 6 and n_params(layer) == 1_583_904
    assert (n_params(layer.esc), n_params(layer.sdda), n_params(layer.mlp)) == (269_312, 785_696, 528_128)
    assert n_params(layer) - n_params(layer.esc) - n_params(layer.sdda) - n_params(layer.mlp) == 768
    assert (n_params(m.input_projs), n_params(m.output_projs)) == (92_928, 66_304)
    assert (n_params(m.lateral_convs), n_params(m.output_convs), n_params(m.mask_feature)) == \
        (59_648, 8_448, 65_792)


@pytest.mark.parametrize("tsv, ffn", [(ADE_TSV, 1024), (CITYSCAPES_TSV, 2048)])
def test_parameter_and_state_counts_match_the_official_key_dump(tsv, ffn):
    shapes = official_shapes(tsv)
    official_params = sum(math.prod(s) for k, s in shapes.items() if not k.endswith(BUFFERS))
    m = SpikePixelDecoder(ffn_channels=ffn)
    assert n_params(m) == official_params
    assert len(m.state_dict()) == len(shapes)


def test_ablation_parameter_counts():
    assert n_params(SpikePixelDecoder(use_sdte=False)) == 9_796_544 - 6 * 1_583_904
    assert n_params(SpikePixelDecoder(spike_query=True)) == 9_796_544  # moves a neuron only
    # multi-scale queries, per SDTE layer: offset and weight convs (with BN) predict 3 levels
    conv_bn = lambda cin, cout: (cin + 1) * cout + 2 * cout
    C, GP = 256, 32 * 9
    per_layer = conv_bn(C, 3 * 2 * GP) - conv_bn(C, 2 * GP) + conv_bn(C, 3 * GP) - conv_bn(C, GP)
    extra = (6 * per_layer
             + 2 * conv_bn(C, C) + 3 * C  # output projections of y8, y4; level embeddings
             - 2 * (9 * C + 2 * C))  # no depth-wise output convs at 1/8 and 1/4
    # the input projections of x3, x2 replace their lateral convs (same shapes)
    assert n_params(SpikePixelDecoder(multi_scale_queries=True)) == 9_796_544 + extra == 12_609_600


# ----------------------------------------------------------------------------- official checkpoints

@pytest.mark.parametrize("tsv, ffn", [(ADE_TSV, 1024), (CITYSCAPES_TSV, 2048)])
def test_official_state_dict_converts_and_loads_strictly(tsv, ffn):
    official = conftest.synthetic_official_state(tsv, PREFIX)
    m = SpikePixelDecoder(ffn_channels=ffn, official=True)
    m.load_state_dict(convert_official_pixel_decoder(official), strict=True)
    expected = {  # official key -> our tensor, written out by hand
        "encoder_in_proj.0.weight": m.input_projs[0].conv.weight,
        "encoder_in_proj.1.running_var": m.input_projs[0].bn.running_var,
        "encoder_out_proj.0.bias": m.output_projs[0].conv.bias,
        "mask_feature.weight": m.mask_feature.conv.weight,
        "lateral_convs.2.0.weight": m.lateral_convs[2].conv.weight,
        "lateral_convs.0.1.bias": m.lateral_convs[0].bn.bias,
        "output_convs.1.0.weight": m.output_convs[1].conv.weight,
        "output_convs.2.1.running_mean": m.output_convs[2].bn.running_mean,
        "encoder.layers.4.gamma2": m.encoder[4].gamma2,
        "encoder.layers.1.Conv.pwconv1.0.weight": m.encoder[1].esc.pw1.conv.weight,
        "encoder.layers.1.Conv.dwconv.1.weight": m.encoder[1].esc.dw.bn.weight,
        "encoder.layers.2.dcn.dw_conv.0.weight": m.encoder[2].sdda.dw.conv.weight,
        "encoder.layers.3.dcn.offset.0.bias": m.encoder[3].sdda.offset.conv.bias,
        "encoder.layers.3.dcn.mask.0.weight": m.encoder[3].sdda.attn_weight.conv.weight,
        "encoder.layers.5.dcn.mask.1.running_var": m.encoder[5].sdda.attn_weight.bn.running_var,
        "encoder.layers.0.dcn.input_proj.dwconv.0.weight": m.encoder[0].sdda.value_proj.dw.conv.weight,
        "encoder.layers.0.dcn.output_proj.pwconv2.1.bias": m.encoder[0].sdda.output_proj.pw2.bn.bias,
        "encoder.layers.5.ffn.fc1_conv.weight": m.encoder[5].mlp.fc1.weight,
        "encoder.layers.5.ffn.fc2_bn.weight": m.encoder[5].mlp.bn2.weight,
        "encoder.layers.2.ffn.fc2_bn.num_batches_tracked": m.encoder[2].mlp.bn2.num_batches_tracked,
    }
    for key, ours in expected.items():
        assert torch.equal(ours, official[key]), key


def test_converter_rejects_foreign_keys():
    with pytest.raises(KeyError):
        convert_official_pixel_decoder({"decode_head.pixel_decoder.mask_feature.weight": torch.zeros(1)})


def test_official_switch_defaults_to_the_released_neuron():
    node = next(m for m in SpikePixelDecoder(**TINY, official=True).modules() if isinstance(m, NILIFNode))
    assert (node.D, node.beta) == (8, 1.0)
    node = next(m for m in SpikePixelDecoder(**TINY).modules() if isinstance(m, NILIFNode))
    assert (node.D, node.beta) == (4, 0.25)


# ----------------------------------------------------------------------------- deformable sampling

def bilinear_zero_padded(img, px, py):
    """img [C, H, W] at pixel coordinates (px, py) (pixel centres at integers), zeros outside."""
    C, H, W = img.shape
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(C, dtype=img.dtype)
    for yy, wy in ((y0, 1 - (py - y0)), (y0 + 1, py - y0)):
        for xx, wx in ((x0, 1 - (px - x0)), (x0 + 1, px - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * img[:, yy, xx]
    return out


@pytest.mark.parametrize("shapes", [[(5, 7)], [(4, 6), (7, 5)]])
def test_deformable_sample_matches_brute_force_bilinear(shapes):
    g = torch.Generator().manual_seed(1)
    N, G, Cg, k = 2, 3, 2, 3
    L, P, Q = len(shapes), k * k, sum(h * w for h, w in shapes)
    C = G * Cg
    values = torch.randn(N, C, Q, generator=g, dtype=torch.float64)
    offsets = torch.randn(N, Q, G, L, P, 2, generator=g, dtype=torch.float64) * 2  # some fall outside
    weights = torch.rand(N, Q, G, L, P, generator=g, dtype=torch.float64)
    out = deformable_sample(values, shapes, offsets, weights, k)

    starts = [sum(h * w for h, w in shapes[:i]) for i in range(L)]
    maps = [values[:, :, s:s + h * w].reshape(N, C, h, w) for s, (h, w) in zip(starts, shapes)]
    queries = [(0, 0, 0), (1, 0, 3), (0, L - 1, 0), (1, L - 1, shapes[-1][0] * shapes[-1][1] - 1),
               (1, 0, 8)]
    for n, level_q, local in queries:
        hq, wq = shapes[level_q]
        h, w = divmod(local, wq)
        q = starts[level_q] + local
        for grp in range(G):
            expected = torch.zeros(Cg, dtype=torch.float64)
            for lv, (hm, wm) in enumerate(shapes):
                for p in range(P):
                    dx, dy = p // k - 1, p % k - 1  # x outer, y inner (the released order)
                    ox, oy = offsets[n, q, grp, lv, p]
                    px = (w + 0.5) * wm / wq - 0.5 + dx + ox.item()
                    py = (h + 0.5) * hm / hq - 0.5 + dy + oy.item()
                    img = maps[lv][n, grp * Cg:(grp + 1) * Cg]
                    expected += weights[n, q, grp, lv, p] * bilinear_zero_padded(img, px, py)
            torch.testing.assert_close(out[n, grp * Cg:(grp + 1) * Cg, q], expected)


def test_tokens_last_official_is_a_raw_reinterpretation():
    y = torch.randn(2, 3, 5, 7)  # [T, B, K, N]
    assert torch.equal(tokens_last(y, official=False), y.permute(0, 1, 3, 2))
    raw = tokens_last(y, official=True)
    T, B, K, N = y.shape
    for t, b, n, c in [(0, 0, 0, 1), (1, 2, 6, 4), (0, 1, 3, 2), (1, 0, 5, 0)]:
        flat = n * K + c
        assert raw[t, b, n, c] == y[t, b, flat // N, flat % N]


# ----------------------------------------------------------------------------- building blocks

def quantise(x, D=4):
    """NI-LIF at T = 1 from rest: clip(round(x), 0, D) / D."""
    return torch.clamp(torch.round(x), 0, D) / D


def batch_norm(x, bn):
    return F.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)


def test_esc_equals_the_written_out_ops():
    esc = randomise_(ESC(6, kernel_size=5, neuron=NILIF)).eval()
    x = torch.randn(1, 2, 6, 9, 8) * 3
    out = esc(x.flatten(3), [(9, 8)]).unflatten(-1, (9, 8))
    h = batch_norm(F.conv2d(quantise(x[0]), esc.pw1.conv.weight), esc.pw1.bn)
    h = batch_norm(F.conv2d(quantise(h), esc.dw.conv.weight, padding=2, groups=12), esc.dw.bn)
    ref = batch_norm(F.conv2d(quantise(h), esc.pw2.conv.weight), esc.pw2.bn)
    torch.testing.assert_close(out[0], ref)
    assert esc.pw1.conv.bias is None and esc.dw.conv.bias is None and esc.pw2.conv.bias is None


def test_esc_on_two_levels_runs_the_spatial_conv_level_by_level():
    esc = randomise_(ESC(4, neuron=NILIF)).eval()
    a, b = torch.randn(1, 2, 4, 5, 6) * 3, torch.randn(1, 2, 4, 3, 4) * 3
    both = run(esc, torch.cat([a.flatten(3), b.flatten(3)], -1), [(5, 6), (3, 4)])
    alone_a = run(esc, a.flatten(3), [(5, 6)])
    alone_b = run(esc, b.flatten(3), [(3, 4)])
    torch.testing.assert_close(both, torch.cat([alone_a, alone_b], -1))


def test_layer_scales_and_zero_initialised_offsets_and_weights():
    m = SpikePixelDecoder(**{**TINY, "num_encoder_layers": 2})
    for layer in m.encoder:
        for gamma in (layer.gamma1, layer.gamma2, layer.gamma3):
            assert gamma.shape == (16,) and torch.all(gamma == 1e-6)
        for conv in (layer.sdda.offset.conv, layer.sdda.attn_weight.conv):
            assert not conv.weight.any() and not conv.bias.any()
        assert layer.sdda.offset.conv.out_channels == 2 * 2 * 9
        assert layer.sdda.attn_weight.conv.out_channels == 2 * 9


def test_spike_query_moves_the_spikes_from_the_weights_to_the_sampled_values(monkeypatch):
    seen = {}

    def spy(values, shapes, offsets, weights, kernel_size=3):
        seen.update(values=values, weights=weights)
        return deformable_sample(values, shapes, offsets, weights, kernel_size)

    monkeypatch.setattr(pd, "deformable_sample", spy)
    x = torch.randn(1, 2, 16, 36) * 2
    levels = lambda t: torch.all(t * 4 == torch.round(t * 4)) and t.min() >= 0 and t.max() <= 1
    for spike_query in (False, True):
        sdda = randomise_(SDDA(16, groups=2, neuron=NILIF, spike_query=spike_query)).eval()
        sdda(x, [(6, 6)])
        assert levels(seen["values"]) == spike_query
        assert levels(seen["weights"]) == (not spike_query)


# ----------------------------------------------------------------------------- the decoder

@pytest.mark.parametrize("T", [1, 2])
@pytest.mark.parametrize("ablation", [{}, {"use_sdte": False}, {"spike_query": True},
                                      {"multi_scale_queries": True}])
def test_forward_shapes(T, ablation):
    m = SpikePixelDecoder(**TINY, **ablation)
    mask_features, (y16, y8, y4) = m(tiny_features(T=T))
    assert mask_features.shape == (T, 2, 16, 32, 32)
    assert (y16.shape, y8.shape, y4.shape) == ((T, 2, 16, 4, 4), (T, 2, 16, 8, 8), (T, 2, 16, 16, 16))
    assert torch.isfinite(mask_features).all()


def test_multi_scale_queries_encode_the_three_coarsest_levels():
    m = SpikePixelDecoder(**TINY, multi_scale_queries=True)
    assert [p.conv.in_channels for p in m.input_projs] == [24, 16, 8]
    assert [c.conv.in_channels for c in m.lateral_convs] == [8] and len(m.output_projs) == 3
    assert m.encoder[0].sdda.attn_weight.conv.out_channels == 2 * 3 * 9

    # x2 (stride 4) reaches y16 only through the encoder's cross-level sampling
    for multi_scale in (True, False):
        m = randomise_(SpikePixelDecoder(**TINY, multi_scale_queries=multi_scale))
        feats = [f.requires_grad_(True) for f in tiny_features()]
        _, (y16, _, _) = m(feats)
        y16.square().sum().backward()
        assert (feats[1].grad is not None and feats[1].grad.abs().sum() > 0) == multi_scale


def test_gradients_reach_the_inputs_and_the_first_encoder_layer():
    m = randomise_(SpikePixelDecoder(**{**TINY, "num_encoder_layers": 2}))
    feats = [f.requires_grad_(True) for f in tiny_features(T=2)]
    mask_features, ys = m(feats)
    (mask_features.square().mean() + sum(y.square().mean() for y in ys)).backward()
    for f in feats:
        assert f.grad is not None and f.grad.abs().sum() > 0
    first = m.encoder[0]
    for p in (m.input_projs[0].conv.weight, first.gamma1, first.esc.pw1.conv.weight,
              first.sdda.value_proj.pw1.conv.weight, first.sdda.offset.conv.weight,
              first.sdda.attn_weight.conv.weight, first.mlp.fc1.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_official_channel_mlp_reinterprets_its_output():
    x = torch.randn(2, 3, 8, 12) * 3
    default = randomise_(ChannelMLP(8, 16, neuron=NILIF)).eval()
    official = ChannelMLP(8, 16, neuron=NILIF, official=True).eval()
    official.load_state_dict(default.state_dict())
    y, y_official = default(x), official(x)
    T, B, C, N = y.shape
    for t, b, c, n in [(0, 0, 1, 0), (1, 2, 7, 11), (0, 1, 3, 5), (1, 0, 0, 9)]:
        flat = n * C + c  # channels-last element (n, c) read from the channel-first [C, N] memory
        assert y_official[t, b, c, n] == y[t, b, flat // N, flat % N]
    assert not torch.allclose(y, y_official)


def test_official_and_default_decoders_differ_only_through_the_reshapes():
    def pair(**kw):
        ours = randomise_(SpikePixelDecoder(**TINY, neuron=NILIF, **kw)).eval()
        theirs = SpikePixelDecoder(**TINY, neuron=NILIF, official=True, **kw).eval()
        theirs.load_state_dict(ours.state_dict())
        return ours, theirs

    ours, theirs = pair()
    feats = tiny_features(size=16)  # the encoder sees a 1x1 map: reshape == permute
    assert run(ours, feats)[1][0].shape[-2:] == (1, 1)
    for a, b in zip(run(ours, feats)[1], run(theirs, feats)[1]):
        torch.testing.assert_close(a, b)
    feats = tiny_features(size=64)  # 4x4 encoder map: they must differ
    assert not torch.allclose(run(ours, feats)[1][0], run(theirs, feats)[1][0])

    # Each quirk alone: R3 changes only SDDA, R1 only the Channel-MLP.
    x, shapes = torch.randn(1, 2, 16, 16) * 2, [(4, 4)]
    sdda = randomise_(SDDA(16, groups=2, neuron=NILIF)).eval()
    sdda_official = SDDA(16, groups=2, neuron=NILIF, official=True).eval()
    sdda_official.load_state_dict(sdda.state_dict())
    assert not torch.allclose(run(sdda, x, shapes), run(sdda_official, x, shapes))
    one = torch.randn(1, 2, 16, 1) * 2
    torch.testing.assert_close(run(sdda, one, [(1, 1)]), run(sdda_official, one, [(1, 1)]))
