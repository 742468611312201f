"""MAC counting (zoo.complexity) against hand counts, torch's FlopCounterMode and the official op counts."""
import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

import zoo
from conftest import tiny
from zoo.complexity import count_macs


class _Toy(nn.Module):
    """A grouped strided conv, a Linear on tokens and a parameter-free Gram product."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, stride=2, padding=1, groups=3)
        self.linear = nn.Linear(6, 5)

    def forward(self, x):
        tokens = self.conv(x).flatten(2).transpose(1, 2)  # [1, 16, 6] for an 8x8 image
        z = self.linear(tokens)  # [1, 16, 5]
        return z.transpose(1, 2) @ z  # [1, 5, 5]


def test_hand_counted_toy():
    report = count_macs(_Toy(), (8, 8))
    rows = {(r.name, r.kind): r.macs for r in report.layers}
    assert rows == {
        ("conv", "conv_linear"): 6 * 4 * 4 * (3 // 3) * 3 * 3,  # out elements x in/groups x kernel
        ("linear", "conv_linear"): 16 * 5 * 6,  # out elements x in_features
        ("", "other_product"): 5 * 5 * 16,  # [5, 16] @ [16, 5]: nothing in a module goes uncounted
    }
    assert report.total == 864 + 480 + 400


@pytest.fixture(scope="module")
def ade20k_on_meta():
    with torch.device("meta"):
        return zoo.create("spike2former_ade20k")


def test_ade20k_matches_the_official_op_counts(ade20k_on_meta):
    """A hook count of the official model at 512x512, T=1,
    all 7 predictions, official (Q K^T) V order and mask features before the product; rounded to 0.01 G."""
    report = count_macs(ade20k_on_meta, (512, 512), all_layers=True, product_order_override="qk_first",
                        mask_order_override="features_first")
    G = 1e9
    kinds = report.by_kind()
    assert kinds["conv_linear"] / G == pytest.approx(55.56, abs=0.005)
    assert report.select("backbone.stem") / G == pytest.approx(0.308, abs=0.0005)
    assert report.select("backbone", ["conv_linear"]) / G == pytest.approx(0.308 + 33.34, abs=0.01)
    assert report.select("transformer_decoder", ["conv_linear"]) / G == pytest.approx(6.50, abs=0.005)
    assert report.select("sdme", ["conv_linear"]) / G == pytest.approx(0.18, abs=0.005)
    assert kinds["mask_einsum"] / G == pytest.approx(11.74, abs=0.005)
    cross = sum(r.macs for r in report.layers if r.name.endswith("cross_attn") and r.kind == "attention_product")
    self_ = sum(r.macs for r in report.layers if r.name.endswith("self_attn") and r.kind == "attention_product")
    assert cross / G == pytest.approx(2.20, abs=0.005)
    assert self_ / G == pytest.approx(0.03, abs=0.005)
    assert kinds["other_product"] == 0


def test_ade20k_inference_counts(ade20k_on_meta):
    """Eval default: last prediction only, Q (K^T V) attention and the mask product as (e W) x + e b
    (no mask-feature conv); checked against closed forms."""
    report = count_macs(ade20k_on_meta, (512, 512))
    heads, d, queries, layers_per_level = 8, 32, 100, 2
    memory_tokens = [32 * 32, 64 * 64, 128 * 128]  # levels 1/16, 1/8, 1/4 of 512
    # K^T V: n_k d^2 per head, then Q (K^T V): n_q d^2 per head
    cross = layers_per_level * sum((queries + n) * d * d * heads for n in memory_tokens)
    assert sum(r.macs for r in report.layers if r.name.endswith("cross_attn")
               and r.kind == "attention_product") == cross
    # one prediction: e W (Q x C x C), then (e W) x at 1/2 scale; the 256 x 256 conv there does not run
    assert report.by_kind()["mask_einsum"] == queries * 256 * 256 + queries * 256 * 256 * 256
    assert report.select("pixel_decoder.mask_feature") == 0
    official = count_macs(ade20k_on_meta, (512, 512), mask_order_override="features_first")
    assert official.total - report.total == 256 * 256 * 256 * 256 - queries * 256 * 256
    # backbone attention Q (K^T V): 6 blocks at 256 channels, 2 at 360, 8 heads, 32x32 tokens
    backbone = sum(2 * 1024 * (c // 8) ** 2 * 8 * blocks for c, blocks in ((256, 6), (360, 2)))
    assert report.select("backbone", ["attention_product"]) == backbone
    # SDDA: 1024 queries x 256 channels x 9 points per encoder layer
    assert report.by_kind()["deformable_sampling"] == 6 * 1024 * 256 * 9
    assert report.total == pytest.approx(zoo.get_pretrained_cfg("spike2former_ade20k").macs * 1e9, rel=5e-3)


@pytest.mark.parametrize("name", ["spike2former_ade20k", "spikefpn_ade20k"])
def test_agrees_with_torch_flop_counter_and_a_real_forward(name):
    """FlopCounterMode counts 2 FLOPs per MAC of conv/mm/bmm (not grid_sample); our meta count must
    equal half its count on a real forward, and equal our own count on that real forward."""
    torch.manual_seed(0)
    model = tiny(name, T=2).eval()
    size = (64, 96)
    report = count_macs(model, size, all_layers=True) if name.startswith("spike2") else count_macs(model, size)
    kwargs = {"all_layers": True} if name.startswith("spike2") else {}
    counter = FlopCounterMode(display=False)
    with counter:  # not under no_grad: FlopCounterMode's module tracker then fails on outputs without grad_fn
        model(torch.zeros(1, 3, *size), **kwargs)
    assert report.T == 2
    assert report.total - report.by_kind()["deformable_sampling"] == counter.get_total_flops() // 2
    real = count_macs(model, size, device=None, **kwargs)
    assert [(r.name, r.kind, r.macs) for r in real.layers] == [(r.name, r.kind, r.macs) for r in report.layers]


def test_restores_mode_T_and_product_order():
    model = tiny("spike2former_ade20k", T=2).train()
    count_macs(model, (64, 64), T=1, product_order_override="qk_first")
    assert model.training and all(m.training for m in model.modules())
    assert model.T == 2
    assert {m.product_order for m in model.modules() if hasattr(m, "product_order")} == {"auto"}
    assert model.execution.product_order == "auto"
