"""SDME head (spike-driven mask embedding with ME-Shortcut) against a direct recomputation."""

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from zoo.layers import neuron_factory
from zoo.spike2former.sdme import SDME, convert_official_sdme, mask_product
import conftest

OFFICIAL_KEYS = conftest.OFFICIAL_KEYS / "SDTv2_maskformer_DCNpixelDecoder_ade20k.tsv"
D, BETA, ALPHA = 4, 0.25, 4.0  # the default 'nilif' neuron and the head's re-scaling
L, B, Q, C, K, H, W = 3, 2, 5, 16, 7, 6, 4
ABLATIONS = [dict(), dict(shortcut_conv=False), dict(me_shortcut=False)]


def nilif_reference(x, time_dim):
    """Paper eqs 16-18 along ``time_dim``, written out step by step."""
    x = x.movedim(time_dim, 0)
    h, out = torch.zeros_like(x[0]), []
    for x_t in x:
        u = h + x_t
        count = torch.clamp(torch.round(u), 0, D)
        out.append(count / D)
        h = BETA * (u - count)
    return torch.stack(out).movedim(0, time_dim)


def sdme_reference(head, query_states, mask_features):
    """The official head's equations on [L, T, B, Q, C], per step then averaged over T."""
    s = ALPHA * nilif_reference(torch.sigmoid(query_states), time_dim=1)
    class_logits = F.linear(s, head.class_embed.weight, head.class_embed.bias).mean(1)
    mlp = head.mask_mlp
    m = ALPHA * nilif_reference(F.linear(s, mlp.fc1.weight), time_dim=1)
    m = ALPHA * nilif_reference(F.linear(m, mlp.fc2.weight), time_dim=1)
    m = F.linear(m, mlp.fc_out.weight, mlp.fc_out.bias)
    if head.me_shortcut:
        shortcut = s
        if head.shortcut_conv is not None:
            conv, bn = head.shortcut_conv.conv, head.shortcut_conv.bn
            mixed = F.conv1d(s.reshape(-1, Q, C), conv.weight)  # queries are the conv's channels
            mixed = F.batch_norm(mixed, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                 training=False, eps=bn.eps)
            shortcut = mixed.view_as(s)
        m = m + head.shortcut_weight * shortcut
    embedding = ALPHA * nilif_reference(m, time_dim=1)
    masks = torch.einsum("ltbqc,tbchw->ltbqhw", embedding, mask_features).mean(1)
    return class_logits, masks


def tiny_head(**ablation):
    head = SDME(dim=C, num_queries=Q, num_classes=K, neuron=neuron_factory("nilif"), **ablation)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        # weights large enough for the tiny MLP to fire (at init its outputs round to 0)
        for linear in (head.mask_mlp.fc1, head.mask_mlp.fc2, head.mask_mlp.fc_out):
            linear.weight.copy_(torch.randn(C, C, generator=gen) * 0.5)
        if head.shortcut_weight is not None:
            head.shortcut_weight.fill_(0.7)
        if head.shortcut_conv is not None:
            bn = head.shortcut_conv.bn
            bn.running_mean.copy_(torch.randn(Q, generator=gen) * 0.3)
            bn.running_var.copy_(torch.rand(Q, generator=gen) + 0.5)
            bn.weight.copy_(torch.rand(Q, generator=gen) + 0.5)
            bn.bias.copy_(torch.randn(Q, generator=gen))
    return head.eval()


def inputs(time_steps, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(L, time_steps, B, Q, C, generator=gen) * 2,
            torch.randn(time_steps, B, C, H, W, generator=gen))


def parameter_count(module):
    return sum(p.numel() for p in module.parameters())


def test_default_parameter_counts_and_ablations():
    head = SDME()
    assert parameter_count(head.class_embed) == 38_807
    assert parameter_count(head.mask_mlp) == 196_864
    assert parameter_count(head.shortcut_conv) == 10_200
    assert head.shortcut_weight.numel() == 1 and torch.equal(head.shortcut_weight, torch.ones(1))
    total = 38_807 + 196_864 + 10_200 + 1
    assert parameter_count(head) == total
    assert parameter_count(SDME(shortcut_conv=False)) == total - 10_200  # Conv1d 100x100 + BN(100)
    assert parameter_count(SDME(me_shortcut=False)) == total - 10_201  # ... and w


def test_official_keys_convert_and_load_strictly():
    official = conftest.synthetic_official_state(OFFICIAL_KEYS, "decode_head.",
                                                 exclude=("decode_head.pixel_decoder.",))
    head = SDME()
    head.load_state_dict(convert_official_sdme(official), strict=True)
    expected = {
        "cls_embed.weight": head.class_embed.weight,
        "cls_embed.bias": head.class_embed.bias,
        "mask_embed.fc1.weight": head.mask_mlp.fc1.weight,
        "mask_embed.fc2.weight": head.mask_mlp.fc2.weight,
        "mask_embed.fc_out.bias": head.mask_mlp.fc_out.bias,
        "shortcut_conv.0.weight": head.shortcut_conv.conv.weight,
        "shortcut_conv.1.running_var": head.shortcut_conv.bn.running_var,
        "shortcut_conv.1.num_batches_tracked": head.shortcut_conv.bn.num_batches_tracked,
        "w": head.shortcut_weight,
    }
    for key, ours in expected.items():
        assert torch.equal(ours, official[key]), key


@pytest.mark.parametrize("ablation", ABLATIONS, ids=["me_shortcut", "no_conv", "vanilla"])
@pytest.mark.parametrize("time_steps", [1, 2])
def test_outputs_match_direct_recomputation(time_steps, ablation):
    head = tiny_head(**ablation)
    query_states, mask_features = inputs(time_steps)
    with torch.no_grad():
        class_logits, mask_logits = head(query_states, mask_features)
        expected_class, expected_masks = sdme_reference(head, query_states, mask_features)
    assert class_logits.shape == (L, B, Q, K + 1) and mask_logits.shape == (L, B, Q, H, W)
    assert mask_logits.abs().sum() > 0
    torch.testing.assert_close(class_logits, expected_class, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mask_logits, expected_masks, rtol=1e-5, atol=1e-5)


def test_ablations_change_the_mask_logits():
    query_states, mask_features = inputs(1)
    masks = []
    for ablation in ABLATIONS:
        head = tiny_head(**ablation)
        head.load_state_dict(tiny_head().state_dict(), strict=False)  # same MLP and classifier
        with torch.no_grad():
            masks.append(head(query_states, mask_features)[1])
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


@pytest.mark.parametrize("time_steps", [1, 2])
def test_feature_projection_applied_to_the_embeddings(time_steps):
    """(e W) x + e b equals e P with P = W x + b the mask-feature conv, computed by the reference."""
    head = tiny_head()
    query_states, spikes = inputs(time_steps)
    conv = torch.nn.Conv2d(C, C, 1)
    with torch.no_grad():
        conv.bias.normal_()
        features = conv(spikes.flatten(0, 1)).unflatten(0, spikes.shape[:2])
        class_logits, mask_logits = head(query_states, spikes, feature_projection=conv)
        expected_class, expected_masks = sdme_reference(head, query_states, features)
    torch.testing.assert_close(class_logits, expected_class, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(mask_logits, expected_masks, rtol=1e-5, atol=1e-4)
    assert SDME.projection_first_is_cheaper(1, 100, 256, 256) and SDME.projection_first_is_cheaper(7, 100, 256, 256)
    assert not SDME.projection_first_is_cheaper(7, 100, 64, 256)


@pytest.mark.parametrize("time_steps", [1, 2])
def test_last_only_is_the_last_row(time_steps):
    head = tiny_head()
    query_states, mask_features = inputs(time_steps)
    with torch.no_grad():
        class_all, masks_all = head(query_states, mask_features)
        functional.reset_net(head)
        class_last, masks_last = head(query_states, mask_features, last_only=True)
    assert class_last.shape == (1, B, Q, K + 1) and masks_last.shape == (1, B, Q, H, W)
    torch.testing.assert_close(class_last, class_all[-1:])
    torch.testing.assert_close(masks_last, masks_all[-1:])


@pytest.mark.parametrize("time_steps", [1, 2])
def test_gradients_flow_to_every_parameter_and_input(time_steps):
    head = tiny_head().train()
    query_states, mask_features = (x.requires_grad_() for x in inputs(time_steps))
    class_logits, mask_logits = head(query_states, mask_features)
    (class_logits.square().mean() + mask_logits.square().mean()).backward()
    for name, p in head.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert query_states.grad.abs().sum() > 0 and mask_features.grad.abs().sum() > 0


@pytest.mark.parametrize("time_steps", [1, 2])
def test_mask_product_gradients_equal_the_dense_einsum(time_steps):
    """Rows with a zero gradient are skipped in backward; the gradients equal the dense products'."""
    torch.manual_seed(5)
    L, B, Q, C, H, W = 3, 2, 6, 4, 5, 7
    embedding = torch.randn(time_steps, L, B, Q, C, requires_grad=True)
    features = torch.randn(time_steps, B, C, H, W, requires_grad=True)
    upstream = torch.randn(L, B, Q, H, W)
    upstream[:, :, ::2] = 0          # "unmatched" queries
    upstream[1, 1] = 0               # a state and image without any matched query
    reference = torch.einsum("tlbqc,tbchw->lbqhw", embedding, features) / time_steps
    ref_grads = torch.autograd.grad((reference * upstream).sum(), (embedding, features))
    out = mask_product(embedding, features)
    grads = torch.autograd.grad((out * upstream).sum(), (embedding, features))
    torch.testing.assert_close(out, reference)
    for grad, ref in zip(grads, ref_grads):
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6)


def test_mask_product_backward_under_autocast():
    """bf16 autocast: the einsum runs in bf16, backward still gets fp32 inputs' gradients of the right dtype."""
    torch.manual_seed(6)
    embedding = torch.randn(1, 2, 1, 4, 8, requires_grad=True)
    features = torch.randn(1, 1, 8, 6, 6, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mask_product(embedding, features)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    reference = torch.einsum("tlbqc,tbchw->lbqhw", embedding, features)
    ref_grads = torch.autograd.grad(reference.square().sum(), (embedding, features))
    assert embedding.grad.dtype == torch.float32 and features.grad.dtype == torch.float32
    torch.testing.assert_close(embedding.grad, ref_grads[0], rtol=0.05, atol=0.5)
    torch.testing.assert_close(features.grad, ref_grads[1], rtol=0.05, atol=0.5)
