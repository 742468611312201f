"""Spike-driven transformer decoder (SDTD), its attention and FFN, and the sine positional encoding."""
import math

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

import conftest
from zoo.layers import neuron_factory
from zoo.layers.position import SinePositionalEncoding
from zoo.spike2former.transformer_decoder import (SpikeDrivenAttention, SpikeTransformerDecoder, SpikingFFN,
                                                  convert_official_decoder, spike_driven_attention_product)

OFFICIAL_KEYS = conftest.OFFICIAL_KEYS / "SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv"
D, BETA = 4, 0.25  # the default 'nilif' neuron
TINY = dict(dim=16, num_heads=2, num_layers=2, ffn_channels=32, num_queries=5)


def nilif_reference(x, D=D, beta=BETA):
    """Paper eqs 16-18 over the leading time axis, written out step by step."""
    h, out = torch.zeros_like(x[0]), []
    for x_t in x:
        u = h + x_t
        count = torch.clamp(torch.round(u), 0, D)
        out.append(count / D)
        h = beta * (u - count)
    return torch.stack(out)


def linear_bn_reference(block, x):
    """Eval-mode BN(W SN(x) + b) of a SpikingLinearBN with explicit ops."""
    y = F.linear(nilif_reference(x), block.linear.weight, block.linear.bias)
    bn = block.bn
    return (y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias


def randomise_batchnorms(module, seed=0):
    """Eval mode with random BN statistics and affine terms that keep the tiny attention's
    spikes dense and varied: with default BNs the attention products round to no spike at all."""
    gen = torch.Generator().manual_seed(seed)
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm1d):
            n = bn.num_features
            bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
            bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            bn.weight.data.copy_(torch.rand(n, generator=gen) * 2 + 1)
            bn.bias.data.copy_(torch.randn(n, generator=gen) + 1.5)
    return module.eval()


def attention_firing_rates(module, run):
    """Fraction of non-zero spikes entering each attention's output projection during ``run()``."""
    rates = []
    def record(_module, _inputs, spikes):
        rates.append((spikes > 0).float().mean().item())
    hooks = [m.out_proj.spike.register_forward_hook(record)
             for m in module.modules() if isinstance(m, SpikeDrivenAttention)]
    with torch.no_grad():
        result = run()
    for hook in hooks:
        hook.remove()
    return result, rates


def randn(*shape, seed=0, scale=2.0, shift=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale + shift


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())


def test_default_parameter_counts():
    decoder = SpikeTransformerDecoder()
    layer = decoder.layers[0]
    assert [parameter_count(m) for m in (layer.self_attn, layer.cross_attn, layer.ffn)] == [265_216, 265_216,
                                                                                          1_055_488]
    assert parameter_count(layer) == 1_585_920
    assert parameter_count(decoder.layers) == 9_515_520
    assert parameter_count(decoder.query_feat) + parameter_count(decoder.query_pos) == 51_200
    assert parameter_count(decoder.level_embed) == 768
    assert parameter_count(decoder) == 9_515_520 + 51_200 + 768


def official_decoder_state_dict():
    """Random tensors with the shapes of the official head keys (``decode_head.`` stripped, no pixel decoder)."""
    return conftest.synthetic_official_state(OFFICIAL_KEYS, "decode_head.", exclude=("decode_head.pixel_decoder.",))


def test_official_keys_convert_and_load_strictly():
    official = official_decoder_state_dict()
    decoder = SpikeTransformerDecoder()
    decoder.load_state_dict(convert_official_decoder(official), strict=True)

    layer4, layer2 = decoder.layers[4], decoder.layers[2]
    prefix = "transformer_decoder.layers."
    expected = {
        prefix + "4.cross_attn.attn.k_conv.0.weight": layer4.cross_attn.k_proj.linear.weight[..., None],
        prefix + "4.cross_attn.attn.k_conv.0.bias": layer4.cross_attn.k_proj.linear.bias,
        prefix + "4.self_attn.attn.out_conv.1.running_var": layer4.self_attn.out_proj.bn.running_var,
        prefix + "4.self_attn.attn.q_conv.1.weight": layer4.self_attn.q_proj.bn.weight,
        prefix + "2.cross_attn.attn.v_conv.1.num_batches_tracked":
            layer2.cross_attn.v_proj.bn.num_batches_tracked,
        prefix + "2.ffn.fc1.weight": layer2.ffn.fc1.linear.weight[..., None],
        prefix + "2.ffn.bn1.running_mean": layer2.ffn.fc1.bn.running_mean,
        prefix + "2.ffn.fc2.weight": layer2.ffn.fc2.linear.weight[..., None],
        prefix + "2.ffn.bn2.bias": layer2.ffn.fc2.bn.bias,
        "query_embed.weight": decoder.query_pos.weight,
        "query_feat.weight": decoder.query_feat.weight,
        "level_embed.weight": decoder.level_embed.weight,
    }
    for key, ours in expected.items():
        assert torch.equal(ours, official[key]), key


def test_unknown_official_decoder_key_is_an_error():
    with pytest.raises(KeyError, match="layers.0.ffn.fc3"):
        convert_official_decoder({"transformer_decoder.layers.0.ffn.fc3.weight": torch.zeros(2, 2, 1)})
    assert convert_official_decoder({"pixel_decoder.mask_feature.weight": torch.zeros(1)}) == {}


@pytest.mark.parametrize("time_steps", [1, 2])
def test_attention_matches_the_direct_formula(time_steps):
    dim, heads, d = 16, 2, 8
    attention = randomise_batchnorms(SpikeDrivenAttention(dim, heads, neuron_factory("nilif")))
    query, key, value = (randn(time_steps, 2, n, dim, seed=s) for s, n in ((1, 5), (2, 7), (3, 7)))
    out, rates = attention_firing_rates(attention, lambda: attention(query, key, value))
    assert 0.1 < rates[0] < 0.9  # the products decide the output
    with torch.no_grad():
        q = nilif_reference(linear_bn_reference(attention.q_proj, query))
        k = nilif_reference(linear_bn_reference(attention.k_proj, key))
        v = nilif_reference(linear_bn_reference(attention.v_proj, value))
        heads_out = []
        for h in range(heads):
            channels = slice(h * d, (h + 1) * d)
            scores = q[..., channels] @ k[..., channels].transpose(-2, -1) / math.sqrt(dim)
            heads_out.append(scores @ v[..., channels])
        expected = linear_bn_reference(attention.out_proj, torch.cat(heads_out, dim=-1))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_both_product_orders_agree():
    spikes = [torch.randint(0, 5, (2, 3, 4, n, 8), generator=torch.Generator().manual_seed(n)) / 4
              for n in (6, 40, 40)]
    qk_first = spike_driven_attention_product(*spikes, scale=0.25, order="qk_first")
    kv_first = spike_driven_attention_product(*spikes, scale=0.25, order="kv_first")
    torch.testing.assert_close(qk_first, kv_first, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        spike_driven_attention_product(*spikes, scale=0.25, order="softmax")

    attention = randomise_batchnorms(SpikeDrivenAttention(16, 2, neuron_factory("nilif")))
    inputs = (randn(2, 2, 5, 16, seed=1), randn(2, 2, 12, 16, seed=2), randn(2, 2, 12, 16, seed=3))
    outputs = []
    for order in ("qk_first", "kv_first", "auto"):
        attention.product_order = order
        functional.reset_net(attention)
        out, rates = attention_firing_rates(attention, lambda: attention(*inputs))
        assert 0.1 < rates[0] < 0.9
        outputs.append(out)
    for out in outputs[1:]:
        torch.testing.assert_close(out, outputs[0], rtol=1e-5, atol=1e-5)


def ffn_reference(ffn, x_channels_first):
    """Conv1d 1x1 FFN on [T, B, C, N] (T*B folded for the convs), as the release computes it."""
    def conv_bn(block, h):
        y = F.conv1d(nilif_reference(h).flatten(0, 1), block.linear.weight[..., None], block.linear.bias)
        y = F.batch_norm(y, block.bn.running_mean, block.bn.running_var, block.bn.weight, block.bn.bias,
                         training=False, eps=block.bn.eps)
        return y.unflatten(0, h.shape[:2])
    return conv_bn(ffn.fc2, conv_bn(ffn.fc1, x_channels_first))


def test_ffn_per_query_and_official_raw_reshapes():
    t, b, n, c = 2, 3, 5, 16
    x = randn(t, b, n, c, seed=4)
    correct = randomise_batchnorms(SpikingFFN(c, 32, neuron_factory("nilif")))
    official = randomise_batchnorms(SpikingFFN(c, 32, neuron_factory("nilif"), official=True))
    official.load_state_dict(correct.state_dict())
    with torch.no_grad():
        out_correct, out_official = correct(x), official(x)
        expected_correct = ffn_reference(correct, x.transpose(2, 3)).transpose(2, 3)
        # trap R2: [t,b,N,C] -> reshape(t,b,C,N) before fc1, [t*b,C,N] -> reshape(t,b,N,C) after bn2
        expected_official = ffn_reference(official, x.reshape(t, b, c, n)).reshape(t, b, n, c)
    torch.testing.assert_close(out_correct, expected_correct, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out_official, expected_official, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(out_correct, out_official)


def sine_reference(height, width, num_feats, temperature=10000.0, normalize=True, scale=2 * math.pi,
                   eps=1e-6):
    """DETR's sine encoding element by element: channel k < F from the row, F + k from the column."""
    pos = torch.empty(2 * num_feats, height, width, dtype=torch.float64)
    for i in range(height):
        for j in range(width):
            for axis, (coord, length) in enumerate(((i + 1, height), (j + 1, width))):
                value = coord / (length + eps) * scale if normalize else coord
                for k in range(num_feats):
                    angle = value / temperature ** (2 * (k // 2) / num_feats)
                    pos[axis * num_feats + k, i, j] = math.sin(angle) if k % 2 == 0 else math.cos(angle)
    return pos.float()


@pytest.mark.parametrize("normalize", [True, False])
def test_sine_positional_encoding_matches_elementwise_definition(normalize):
    encoding = SinePositionalEncoding(num_feats=8, normalize=normalize)
    expected = sine_reference(3, 5, 8, normalize=normalize)
    torch.testing.assert_close(encoding(3, 5), expected, rtol=1e-5, atol=1e-5)
    assert SinePositionalEncoding()(4, 6, dtype=torch.float16).shape == (256, 4, 6)


def tiny_features(time_steps, batch=2, dim=16, sizes=(2, 4, 8), seed=10):
    return [randn(time_steps, batch, dim, size, size, seed=seed + i, scale=1.5, shift=0.5)
            for i, size in enumerate(sizes)]


def test_decoder_follows_the_official_head_wiring():
    decoder = randomise_batchnorms(SpikeTransformerDecoder(**TINY, neuron=neuron_factory("nilif")))
    features = tiny_features(time_steps=2)
    states, rates = attention_firing_rates(decoder, lambda: decoder(features))
    assert min(rates) > 0.1
    functional.reset_net(decoder)
    with torch.no_grad():
        # MaskFormerHead.forward, written out with the decoder's own layers as black boxes
        memories = [f.flatten(3).permute(0, 1, 3, 2) + decoder.level_embed.weight[i]
                    for i, f in enumerate(features)]
        key_pos = [sine_reference(f.shape[-2], f.shape[-1], 8).flatten(1).permute(1, 0) for f in features]
        query = decoder.query_feat.weight[None, None].repeat(2, 2, 1, 1)
        query_pos = decoder.query_pos.weight
        expected = [query]
        for i, layer in enumerate(decoder.layers):
            memory = memories[i % 3]
            query = query + layer.cross_attn(query + query_pos, memory + key_pos[i % 3], memory)
            query = query + layer.self_attn(query + query_pos, query + query_pos, query)
            query = query + layer.ffn(query)
            expected.append(query)
    assert states.shape == (3, 2, 2, 5, 16)
    torch.testing.assert_close(states, torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_layer_i_reads_level_i_mod_3():
    decoder = randomise_batchnorms(SpikeTransformerDecoder(**dict(TINY, num_layers=4),
                                                           neuron=neuron_factory("ilif")))
    features = tiny_features(time_steps=1)
    with torch.no_grad():
        base = decoder(features)
        changed = {}
        for level in range(3):
            perturbed = [f + 3.0 * (i == level) for i, f in enumerate(features)]
            functional.reset_net(decoder)
            changed[level] = [not torch.equal(a, b) for a, b in zip(base, decoder(perturbed))]
    # state k is the output of layer k-1; a state changes from the first layer that reads the level on
    assert changed == {0: [False, True, True, True, True], 1: [False, False, True, True, True],
                       2: [False, False, False, True, True]}


def test_official_flag_reaches_every_ffn_only():
    decoder = SpikeTransformerDecoder(**TINY, official=True)
    assert all(layer.ffn.official for layer in decoder.layers)
    assert parameter_count(decoder) == parameter_count(SpikeTransformerDecoder(**TINY))


@pytest.mark.parametrize("time_steps", [1, 2])
def test_forward_shapes_and_gradients(time_steps):
    # I-LIF (integer counts) keeps the tiny attention outputs above the first threshold,
    # so every projection fires and receives a gradient
    decoder = SpikeTransformerDecoder(**dict(TINY, num_layers=3), neuron=neuron_factory("ilif"))
    features = [f.detach().requires_grad_() for f in tiny_features(time_steps, sizes=(2, 3, 5))]
    states = decoder(features)
    assert states.shape == (4, time_steps, 2, 5, 16)
    states[1:].square().mean().backward()
    for name, p in decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(f.grad.abs().sum() > 0 for f in features)

