"""A new model is one file plus its registration: this file defines one, registers it, and gets BatchNorm
folding, MAC counting, spike-driven inference, energy and save/load from the library unchanged
(docs/adding-a-model.md walks through the same steps)."""
import pytest
import torch
import torch.nn as nn

import zoo
from analysis.energy import estimate
from zoo import registry
from zoo.backbones.meta_spikeformer import SpikeConvBN
from zoo.base import SegmentationModel
from zoo.complexity import count_macs
from zoo.fuse import fold_batchnorm, remaining_batchnorms
from zoo.layers.common import model_neuron, multistep
from zoo.postprocess import resize_masks


class TwoLayerSNN(SegmentationModel):
    """Stem conv (analog image) -> NI-LIF -> 3x3 conv + BN -> NI-LIF -> 1x1 classifier, stride 2."""

    def __init__(self, num_classes: int = 3, T: int = 1, D: int = 4, width: int = 8):
        super().__init__(T=T)
        sn = model_neuron("nilif", D=D)
        self.stem = SpikeConvBN(nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), None)
        self.block = SpikeConvBN(nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), sn)
        self.classifier_spike = sn()
        self.classifier = nn.Conv2d(width, num_classes, 1)
        self.num_classes, self.task = num_classes, "semantic"

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        features = self.block(self.stem(x))
        return multistep(self.classifier, self.classifier_spike(features)).mean(0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with self.computing():
            x, _ = self.to_sequence(images)
            return self.returned(self.run_network(TwoLayerSNN._network, x))

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        logits = self(images)
        return resize_masks(logits, tuple(images.shape[-2:]), tuple(images.shape[-2:])).argmax(1)


@pytest.fixture
def two_layer(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @registry.register_model(cfgs={"t1d4": registry.segmentation_cfg(
        "camvid", [f"c{i}" for i in range(3)], [(0, 0, 0), (255, 0, 0), (0, 255, 0)], 1, 4, None, {},
        source="", crop=(32, 32), model_args={"width": 8})}, test_args={"width": 4})
    def two_layer_snn(**kwargs):
        return TwoLayerSNN(**kwargs)
    return "two_layer_snn"


def _lively(model):
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                bn.running_mean.normal_(0, 0.2)
                bn.running_var.uniform_(0.5, 1.5)
                bn.weight.uniform_(0.8, 1.5)
                bn.bias.uniform_(0.2, 0.8)
    return model.eval()


def test_a_new_model_gets_every_tool(two_layer, tmp_path):
    torch.manual_seed(0)
    assert two_layer in zoo.list_models() and registry.get_test_args(two_layer) == {"width": 4}
    model = _lively(zoo.create(two_layer))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(images)

    # MACs: stem 16x16 x 8 x 27, block 16x16 x 8 x 72, classifier 16x16 x 3 x 8 per image
    report = count_macs(model, (32, 32))
    assert report.total == 256 * (8 * 27 + 8 * 72 + 3 * 8)

    # energy: the stem is charged as MACs, the two spiking layers as ACs of their events
    energy = estimate(model, images)
    assert energy.total_macs == 256 * 8 * 27 and energy.total_mj > 0
    assert 0 < energy.total_acs < 256 * (8 * 72 + 3 * 8) * 4

    # spike-driven inference gives the same logits
    with zoo.spike_driven_mode(model) as stats, torch.no_grad():
        driven = model(images)
    assert torch.allclose(driven, expected, atol=1e-4) and stats.rows

    # save and load
    model.save_pretrained(tmp_path / "saved")
    again = zoo.create(str(tmp_path / "saved")).eval()
    with torch.no_grad():
        assert torch.equal(again(images), expected)

    # BatchNorm folding from the layers' own declarations
    fold_batchnorm(model)
    assert remaining_batchnorms(model) == []
    with torch.no_grad():
        assert torch.allclose(model(images), expected, atol=1e-4)
