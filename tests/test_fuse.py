"""BatchNorm folding (zoo.fuse): exact on every segmentor, nothing left unfolded, eval mode only."""
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based.neuron import BaseNode

from conftest import segmentors, tiny
from zoo.backbones.meta_spikeformer import RepConvBN
from zoo.fuse import UndeclaredBatchNormError, fold_batchnorm, remaining_batchnorms

SEGMENTORS = segmentors()

_BatchNorm = nn.modules.batchnorm._BatchNorm


def _nontrivial(model: nn.Module, images: torch.Tensor) -> nn.Module:
    """Give the zero-initialised parts weight, gather BN statistics from a training pass, randomise BN affines.

    Layer scales start at 1e-6 and the SDDA offset/weight convs at zero: left so, they
    would hide the SDTE from the comparison.
    """
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1].startswith("gamma"):
                p.fill_(1.0)
            elif ".offset.conv." in name or ".attn_weight.conv." in name:
                p.normal_(0.0, 0.3)
        for bn in model.modules():
            if isinstance(bn, _BatchNorm):
                bn.momentum = None  # running statistics = the batch's statistics
        model.train()(images)
        for bn in model.modules():
            if isinstance(bn, _BatchNorm):
                bn.weight.uniform_(0.5, 2.0)
                bn.bias.normal_(0.0, 0.5)
    return model.eval()


def _neuron_inputs(model: nn.Module, images: torch.Tensor):
    """Every neuron's input of one forward, by neuron name, and the model's output."""
    inputs = {}
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: inputs.setdefault(name, args[0].clone()))
               for name, m in model.named_modules() if isinstance(m, BaseNode)]
    with torch.no_grad():
        out = model(images)
    for h in handles:
        h.remove()
    return inputs, (out["pred_masks"] if isinstance(out, dict) else out)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("name", SEGMENTORS)
def test_folding_keeps_every_neuron_input(name):
    """Spikes quantise every layer's output, so outputs alone would hide a small folding error:
    the input of every neuron is compared. float64 keeps rounding away from spike thresholds."""
    torch.manual_seed(0)
    model = tiny(name).double()
    _nontrivial(model, torch.randn(2, 3, 64, 64, dtype=torch.float64))
    images = torch.randn(1, 3, 64, 64, dtype=torch.float64)
    before, out_before = _neuron_inputs(model, images)
    batchnorms = remaining_batchnorms(model)
    assert len(batchnorms) > 20

    assert fold_batchnorm(model) is model
    after, out_after = _neuron_inputs(model, images)

    assert remaining_batchnorms(model) == []  # every BN of our modules folds, BNAndPad included
    assert before.keys() == after.keys()
    for neuron, x in before.items():
        assert x.std() > 0, f"{neuron} sees a constant input: the comparison would prove nothing"
        assert _relative(after[neuron], x) < 1e-9, neuron
    assert _relative(out_after, out_before) < 1e-4


def test_repconv_bn_and_pad_folds_into_pointwise_and_depthwise():
    """The backbone attention's RepConv + outer BN: four BNs (one padding) fold into its three convs."""
    torch.manual_seed(0)
    block = RepConvBN(8)
    with torch.no_grad():
        for bn in block.modules():
            if isinstance(bn, _BatchNorm):
                bn.running_mean.normal_(0.0, 1.0)
                bn.running_var.uniform_(0.2, 3.0)
                bn.weight.uniform_(0.5, 2.0)
                bn.bias.normal_(0.0, 1.0)
    block.eval()
    x = torch.randn(2, 8, 6, 7)
    with torch.no_grad():
        expected = block(x)
        fold_batchnorm(block)
        folded = block(x)
    kinds = [type(m).__name__ for m in block.modules()]
    assert kinds.count("Identity") == 3 and "BNAndPad" not in kinds
    assert block.repconv.pw_in.bias is None and block.repconv.dw.padding == (1, 1)
    assert _relative(folded, expected) < 1e-5
    # the border, where the BN's pad value enters, matters as much as the interior
    assert _relative(folded[..., 0, :], expected[..., 0, :]) < 1e-5


def test_training_mode_batchnorm_is_not_folded():
    model = tiny("spikefpn_ade20k").eval()
    model.head.train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="model.eval"):
        fold_batchnorm(model)
    # nothing was folded before the error: the model is as it was
    assert len(remaining_batchnorms(model)) == 64
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())


class _ConvBN(nn.Module):
    batchnorm_folds = (("conv", "bn"),)

    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def test_a_module_declares_its_folds_and_an_undeclared_batchnorm_fails_loudly():
    torch.manual_seed(0)
    declared = _ConvBN()
    with torch.no_grad():
        declared.bn.running_mean.normal_()
        declared.bn.running_var.uniform_(0.5, 2.0)
    declared.eval()
    x = torch.randn(2, 3, 8, 8)
    expected = declared(x)
    assert torch.allclose(fold_batchnorm(declared)(x), expected, atol=1e-5)
    assert remaining_batchnorms(declared) == [] and isinstance(declared.bn, nn.Identity)

    undeclared = nn.Sequential(_ConvBN(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)).eval()
    before = {k: v.clone() for k, v in undeclared.state_dict().items()}
    with pytest.raises(UndeclaredBatchNormError, match=r"\['2'\]"):
        fold_batchnorm(undeclared)
    assert all(torch.equal(v, before[k]) for k, v in undeclared.state_dict().items())  # nothing folded
    assert remaining_batchnorms(undeclared) == ["0.bn", "2"]
