"""analysis.energy against hand-worked networks, the exact event counter of zoo.spike_driven and
torchvision's published GFLOPS.

References: figures worked out by hand below (spike counts known by construction), the exact
event counts of the binary-expanded model (``spike_driven_forward``), the spikes captured at the
neurons' outputs by plain forward hooks, the kernel geometry counted here position by position,
and the ``_ops`` that torchvision's weight metadata publishes (read from the enums, never typed in).
"""
import csv
import json

import pytest
import torch
import torch.nn as nn
import torchvision.models as tvm
from torchvision.models import segmentation as tvs

import zoo
from analysis.energy import CONVENTION, E_AC_PJ, E_MAC_PJ, estimate
from neurons import NILIFNode
from conftest import lively, tiny
from test_spike_driven_models import DENSE_SUFFIXES, expected_unit
from zoo.complexity import count_macs
from zoo.execution import using
from zoo.layers.common import multistep
from zoo.spike_driven import spike_driven_forward

PJ_PER_MJ = 1e9


# tiny tensors: one thread (conftest.one_thread)
pytestmark = pytest.mark.usefixtures("one_thread")


def row(report, name, charged_as, kind="conv_linear"):
    matches = [r for r in report.rows if (r.name, r.kind, r.charged_as) == (name, kind, charged_as)]
    assert len(matches) == 1, f"no single {charged_as} row {name!r} of kind {kind}"
    return matches[0]


# ------------------------------------------------------------------------------ a network worked by hand

class ThreeLayers(nn.Module):
    """Analog conv3x3 (identity) -> NI-LIF -> conv3x3 to 2 channels (4 x identity) -> NI-LIF -> Linear(32, 3).

    With integer inputs in 0..4 both neurons emit the input's integer counts at every step
    (U = X is an integer count, nothing is left on the membrane), so the counts are known.
    """

    def __init__(self, T=1):
        super().__init__()
        self.T = T
        self.conv1 = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        self.sn1 = NILIFNode(D=4, step_mode="m")
        self.conv2 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.sn2 = NILIFNode(D=4, step_mode="m")
        self.fc = nn.Linear(32, 3)
        with torch.no_grad():
            self.conv1.weight.zero_()[0, 0, 1, 1] = 1.0
            self.conv2.weight.zero_()[:, 0, 1, 1] = 4.0  # S = count / 4 back to the count

    def forward(self, images):  # [B, 1, 4, 4]
        x = images.unsqueeze(0).expand(self.T, *images.shape)
        x = self.sn1(multistep(self.conv1, x))
        x = self.sn2(multistep(self.conv2, x))
        return self.fc(x.flatten(2))


def two_images():
    """Image a: count 3 inside, count 2 in a corner (5 events); image b: count 4 inside (4 events)."""
    images = torch.zeros(2, 1, 4, 4)
    images[0, 0, 1, 1], images[0, 0, 0, 0] = 3.0, 2.0
    images[1, 0, 2, 2] = 4.0
    return images


@pytest.mark.parametrize("T", [1, 2])
def test_hand_worked_network(T):
    report = estimate(ThreeLayers(T), two_images(), exact=True)
    # conv1: analog input, 16 outputs x 9 taps = 144 MACs per step
    conv1 = row(report, "conv1", "MAC")
    assert conv1.macs == 144 * T and conv1.rate is None
    # conv2: 16 outputs x 2 channels x 9 taps = 288 dense MACs per step; per-image events a: 5, b: 4
    # analytic ACs = MACs x events / 16 input elements: a: 288 * 5/16 = 90, b: 288 * 4/16 = 72 -> mean 81
    # exact: a: (3 counts x 9 targets + 2 counts x 4 targets in the corner) x 2 channels = 70, b: 4 x 9 x 2 = 72
    conv2 = row(report, "conv2", "AC")
    assert (conv2.macs, conv2.events, conv2.input_elements) == (288 * T, 4.5 * T, 16 * T)
    assert conv2.rate == 4.5 / 16
    assert conv2.acs == 81 * T and conv2.exact_acs == 71 * T
    # fc: 3 x 32 = 96 MACs per step; events are the counts of both channels: a: 10, b: 8; 3 targets each
    fc = row(report, "fc", "AC")
    assert (fc.macs, fc.events, fc.acs, fc.exact_acs) == (96 * T, 9 * T, 27 * T, 27 * T)
    assert len(report.rows) == 3
    assert report.total_macs == 144 * T and report.total_acs == 108 * T
    assert report.dense_macs == (144 + 288 + 96) * T
    assert report.total_exact_acs == 98 * T
    # (144 x 4.6 + 108 x 0.9) pJ = 759.6 pJ per step
    assert report.total_mj == pytest.approx(759.6 * T / PJ_PER_MJ, rel=1e-12)
    assert report.total_mj * PJ_PER_MJ == pytest.approx(report.total_macs * E_MAC_PJ + report.total_acs * E_AC_PJ)
    assert (report.images, report.input_shape, report.T) == (2, (1, 4, 4), T)


def test_per_image_figures_do_not_depend_on_batching_and_restore_the_model():
    net = ThreeLayers(T=2).train()
    images = two_images()
    apart = [estimate(net, images[i:i + 1]) for i in range(2)]
    for batch_size in (1, 2):
        together = estimate(net, images, batch_size=batch_size)
        assert together.total_acs == (apart[0].total_acs + apart[1].total_acs) / 2
        assert together.total_mj == pytest.approx((apart[0].total_mj + apart[1].total_mj) / 2, rel=1e-12)
    assert net.training and net.T == 2
    assert estimate(net, images, T=1).total_acs == together.total_acs / 2
    assert net.T == 2


def test_spikes_need_values_not_the_meta_device():
    with torch.device("meta"):
        net = ThreeLayers()
    with pytest.raises(ValueError, match="meta"):
        estimate(net, two_images().to("meta"))


class StridedConv(nn.Module):
    """NI-LIF -> conv3x3, stride 2, padding 1: on 4x4 spikes, 2x2 outputs x 9 taps = 36 dense MACs."""

    def __init__(self):
        super().__init__()
        self.sn = NILIFNode(D=4)
        self.conv = nn.Conv2d(1, 1, 3, stride=2, padding=1, bias=False)

    def forward(self, images):
        return self.conv(self.sn(images))


# one event at (row, col): the analytic count charges the mean fan-out 36 / 16 = 2.25 to it; its true targets
# per axis are 2 at index 1 (outputs 0 and 1 read it) and 1 at indices 0, 2, 3
@pytest.mark.parametrize("position, targets", [((1, 1), 4), ((1, 2), 2), ((0, 0), 1), ((3, 3), 1)])
def test_strided_conv_exact_count_on_either_side_of_the_analytic_one(position, targets):
    image = torch.zeros(1, 1, 4, 4)
    image[(0, 0, *position)] = 1.0
    conv = row(estimate(StridedConv(), image, exact=True), "conv", "AC")
    assert (conv.macs, conv.acs, conv.exact_acs) == (36, 2.25, targets)


class Product(nn.Module):
    """``product(s, t)`` of two spike tensors: s [2, 3] with 7 events, t [3, 5] with 10 events."""

    def __init__(self, product):
        super().__init__()
        self.product = product
        self.sn_s, self.sn_t = NILIFNode(D=4), NILIFNode(D=4)

    def forward(self, x):
        counts_t = torch.zeros(3, 5)
        counts_t[0, 0], counts_t[1, 2], counts_t[2, 4] = 4.0, 3.0, 3.0
        return self.product(self.sn_s(x[0]), self.sn_t(counts_t))


REAL = torch.arange(12.0).view(3, 4)
PRODUCTS = {  # name: (product, dense MACs, charged as, ACs)
    "spikes @ real": (lambda s, t: s @ REAL, 2 * 3 * 4, "AC", 7 * 4),
    "real @ spikes": (lambda s, t: torch.ones(4, 2) @ s, 4 * 2 * 3, "AC", 7 * 4),
    "spikes @ spikes, the cheaper side sends": (lambda s, t: s @ t, 2 * 3 * 5, "AC", min(7 * 5, 10 * 2)),
    "einsum with real": (lambda s, t: torch.einsum("qc,chw->qhw", s, torch.ones(3, 5, 5)), 2 * 3 * 25, "AC",
                         7 * 25),
    "scaled spikes keep their counts": (lambda s, t: (4 * s) @ REAL, 24, "AC", 7 * 4),
    "a sum of spikes is analog": (lambda s, t: (s + s) @ REAL, 24, "MAC", 0),
    "real @ real": (lambda s, t: REAL.t() @ REAL, 4 * 3 * 4, "MAC", 0),
}


@pytest.mark.parametrize("case", PRODUCTS)
def test_products(case):
    product, macs, charged_as, acs = PRODUCTS[case]
    counts_s = torch.tensor([[[1.0, 0.0, 2.0], [4.0, 0.0, 0.0]]])
    report = estimate(Product(product), counts_s)
    (only,) = report.rows
    assert (only.kind, only.charged_as, only.macs, only.acs) == ("other_product", charged_as, macs, acs)
    energy = acs * E_AC_PJ if charged_as == "AC" else macs * E_MAC_PJ
    assert report.total_mj * PJ_PER_MJ == pytest.approx(energy, rel=1e-12)


def test_report_outputs(tmp_path):
    report = estimate(ThreeLayers(), two_images(), exact=True)
    assert "4.6 pJ" in CONVENTION and "0.9 pJ" in CONVENTION and report.convention == CONVENTION
    markdown = report.to_markdown(per_layer=True)
    assert CONVENTION in markdown and all(f"| {name} |" in markdown for name in ("conv1", "conv2", "fc"))

    report.to_csv(tmp_path / "energy.csv")
    text = (tmp_path / "energy.csv").read_text().splitlines()
    comments = [line[2:] for line in text if line.startswith("#")]
    assert "\n".join(comments).strip().endswith(CONVENTION.splitlines()[-1].strip())
    lines = list(csv.DictReader(line for line in text if not line.startswith("#")))
    assert [line["name"] for line in lines] == ["conv1", "conv2", "fc"]
    assert sum(float(line["energy_pj"]) for line in lines) / PJ_PER_MJ == pytest.approx(report.total_mj)
    assert float(lines[1]["exact_acs"]) == 71

    data = json.loads(report.to_json(tmp_path / "energy.json"))
    assert data == json.loads((tmp_path / "energy.json").read_text())
    assert data["convention"] == CONVENTION and (data["e_mac_pj"], data["e_ac_pj"]) == (4.6, 0.9)
    assert (data["total_macs"], data["total_acs"], data["total_exact_acs"]) == (144, 108, 98)
    assert [r["charged_as"] for r in data["rows"]] == ["MAC", "AC", "AC"]
    assert data["by_part"]["conv2"] == {"macs": 0, "acs": 81, "dense_macs": 288, "mj": 81 * 0.9 / PJ_PER_MJ}


# ------------------------------------------------------------------------------ plain networks: MACs only

ANNS = {  # builder, weights whose meta publishes the GFLOPS, builder arguments, input size they were measured at
    "resnet50": (tvm.resnet50, tvm.ResNet50_Weights.IMAGENET1K_V1, {}, (224, 224)),
    "mobilenet_v3_large": (tvm.mobilenet_v3_large, tvm.MobileNet_V3_Large_Weights.IMAGENET1K_V1, {}, (224, 224)),
    "vit_b_16": (tvm.vit_b_16, tvm.ViT_B_16_Weights.IMAGENET1K_V1, {}, (224, 224)),
    # torchvision measured its segmentation weights at 520x520 (its segmentation eval size) with the
    # auxiliary FCN head these weights carry (aux_loss=True); without it the count is 5.6% lower
    "deeplabv3_resnet50": (tvs.deeplabv3_resnet50, tvs.DeepLabV3_ResNet50_Weights.COCO_WITH_VOC_LABELS_V1,
                           {"weights_backbone": None, "aux_loss": True}, (520, 520)),
}


@pytest.mark.parametrize("name", ANNS)
def test_ann_macs_match_torchvision_gflops(name):
    builder, weights, kwargs, size = ANNS[name]
    with torch.device("meta"):
        model = builder(weights=None, **kwargs)
    report = estimate(model, torch.zeros(2, 3, *size, device="meta"))
    assert report.total_macs == pytest.approx(weights.meta["_ops"] * 1e9, rel=0.01)
    assert report.total_acs == 0 and {r.charged_as for r in report.rows} == {"MAC"}
    assert report.dense_macs == report.total_macs
    assert report.total_mj == pytest.approx(report.total_macs * 4.6 / PJ_PER_MJ, rel=1e-12)


# ------------------------------------------------------------------------------ tiny zoo models vs exact events

def targets_per_index(size, kernel, stride, padding):
    """For every input index of one axis: the (output index, tap) pairs that read it."""
    out = (size + 2 * padding - kernel) // stride + 1
    counts = [0] * size
    for o in range(out):
        for tap in range(kernel):
            i = o * stride - padding + tap
            if 0 <= i < size:
                counts[i] += 1
    return torch.tensor(counts, dtype=torch.float64), out


def geometry(conv, spatial):
    """targets n(p) per input position, and the mean fan-out t = output positions x kernel / input positions."""
    assert conv.dilation == (1,) * len(spatial)
    targets, outputs, kernel = torch.ones(()), 1, 1
    for size, k, s, p in zip(spatial, conv.kernel_size, conv.stride, conv.padding):
        axis, out = targets_per_index(size, k, s, p)
        targets = targets.unsqueeze(-1) * axis
        outputs, kernel = outputs * out, kernel * k
    return targets.double(), outputs * kernel / targets.numel()


SPIKE_SOURCES = {"q_spike": "q", "k_spike": "k", "v_spike": "v", "weight_spike": "weights", "embed_spike": "embedding"}


@pytest.fixture(scope="module", params=[(name, T) for name in ("spike2former_ade20k", "spikefpn_ade20k")
                                        for T in (1, 2)], ids=lambda p: f"{p[0]}-T{p[1]}")
def tiny_run(request):
    """One image through a lively tiny model: the estimate (with the conv inputs and spikes it saw),
    then the exact event count of the binary-expanded model."""
    name, T = request.param
    torch.manual_seed(0)
    images = torch.randn(1, 3, 64, 64)
    model = lively(tiny(name, T=T), images)
    conv_inputs, spikes, handles = {}, {}, []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_pre_hook(
                lambda m, args, n=module_name: conv_inputs.setdefault(n, []).append(args[0].detach().clone())))
        leaf = module_name.rsplit(".", 1)[-1]
        if leaf in SPIKE_SOURCES:
            parent = module_name.rsplit(".", 1)[0]
            handles.append(module.register_forward_hook(
                lambda m, args, out, key=(parent, SPIKE_SOURCES[leaf]): spikes.__setitem__(key, out.detach().clone())))
    with using(model, product_order="kv_first"):
        report = estimate(model, images)
    for handle in handles:
        handle.remove()
    _, stats = spike_driven_forward(model, images)
    return model, images, report, stats, conv_inputs, spikes


def test_mac_rows_are_the_analog_inputs_of_the_design(tiny_run):
    """The stem, SepConv.pw2 and RepConv dw/pw_out take real values; every other synapse takes spikes."""
    model, _, report, stats, _, _ = tiny_run
    analog = {r.name for r in report.rows if r.charged_as == "MAC"}
    synapses = {r.name for r in report.rows if r.kind == "conv_linear"}
    assert analog == {n for n in synapses if n.endswith(DENSE_SUFFIXES)} and "backbone.stem.conv" in analog
    assert analog == {r.name for r in stats.dense_rows()}
    assert {r.name for r in report.rows if r.kind == "conv_linear" and r.charged_as == "AC"} == \
        {r.name for r in stats.spike_rows()}
    assert report.total_acs > 0


def test_dense_macs_are_count_macs(tiny_run):
    model, images, report, _, _, _ = tiny_run
    with using(model, product_order="kv_first"):  # the energy counts the mask features conv as the paper defines it
        assert report.dense_macs == count_macs(model, tuple(images.shape[-2:]), device=None,
                                               mask_order_override="features_first").total


def test_analytic_acs_against_the_exact_event_count(tiny_run):
    """Events agree exactly; ACs exactly for Linear and 1x1 convs; for the other convs
    analytic - exact = (C_out / groups) sum_p c(p) (t - n(p)), hence the bounds of the convention."""
    model, _, report, stats, conv_inputs, _ = tiny_run
    layers = dict(model.named_modules())
    checked_padded = 0
    for r in (r for r in report.rows if r.kind == "conv_linear" and r.charged_as == "AC"):
        exact = stats.row(r.name)
        assert (r.events, r.macs, r.input_elements) == (exact.events, exact.macs, exact.input_elements)
        layer = layers[r.name]
        if isinstance(layer, nn.Linear) or (all(k == 1 for k in layer.kernel_size) and
                                             all(s == 1 for s in layer.stride)):
            assert r.acs == exact.acs, r.name
            continue
        unit, _ = expected_unit(model, r.name)
        gap, low, high = 0.0, 0.0, 0.0
        for x in conv_inputs[r.name]:
            counts = torch.round(x.double() / unit).sum((0, 1))  # c(p): over images, steps and channels
            targets, mean_fan_out = geometry(layer, tuple(counts.shape))
            fan = layer.out_channels // layer.groups
            gap += fan * float((counts * (mean_fan_out - targets)).sum())
            low += fan * float(counts.sum()) * float(targets.min())
            high += fan * float(counts.sum()) * float(targets.max())
        assert r.acs - exact.acs == pytest.approx(gap, abs=1e-6 * max(r.acs, 1)), r.name
        assert low <= exact.acs <= high, r.name
        if all(s == 1 for s in layer.stride) and layer.padding == tuple(k // 2 for k in layer.kernel_size):
            assert exact.acs <= r.acs, r.name
        checked_padded += exact.acs > 0
    assert checked_padded >= 3


def test_products_are_events_times_fan_out(tiny_run):
    """Attention (K^T V by the sparser of K and V, then Q), the SDDA weighted sum and the SDME einsum."""
    model, images, report, _, _, spikes = tiny_run
    layers = dict(model.named_modules())
    D = next(m for m in model.modules() if isinstance(m, NILIFNode)).D

    def events(x):
        return float(torch.round(x.double() * D).sum())  # NI-LIF output k / D

    attention = [r for r in report.rows if r.kind == "attention_product"]
    assert attention and all(r.charged_as == "AC" for r in attention)
    for r in attention:
        query = spikes[(r.name, "q")]  # backbone maps [T, B, C, H, W], decoder tokens [T, B, N, C]
        d = (query.shape[2] if query.dim() == 5 else query.shape[-1]) // layers[r.name].num_heads
        q, k, v = (events(spikes[(r.name, key)]) for key in "qkv")
        assert r.acs == d * (q + min(k, v)), r.name
    if not isinstance(model, zoo.spike2former.Spike2Former):
        return
    parts = list(report.by_part())
    assert parts == ["backbone", "pixel_decoder", "transformer_decoder", "sdme"]
    for sdda in (n for n, m in layers.items() if isinstance(m, zoo.spike2former.pixel_decoder.SDDA)):
        r = row(report, sdda, "AC", "deformable_sampling")
        channels = layers[sdda].output_proj.pw2.conv.out_channels
        weights = spikes[(sdda, "weights")]
        tokens = weights.shape[0] * weights.shape[1] * weights.shape[2]  # T x B x N
        assert r.macs == tokens * channels * layers[sdda].kernel_size ** 2
        assert r.acs == events(weights) * channels // layers[sdda].groups
    einsum = row(report, "sdme", "AC", "mask_einsum")
    height, width = images.shape[-2] // 2, images.shape[-1] // 2
    assert einsum.acs == events(spikes[("sdme", "embedding")]) * height * width
