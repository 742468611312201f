"""bf16 autocast training (the recipes' ``amp`` on GPU): products in bf16, neuron states in fp32, finite
and reproducible loss and gradients, a loss near the fp32 step's. bf16 rounding changes which neurons
fire in a tiny random network, so the gradients are not compared with fp32's. Runs on CPU here and on
CUDA in benchmarks/gpu_check.sh."""
import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import lively, tiny
from neurons import NILIFNode
from recipes.losses import SetCriterion

DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
               not torch.cuda.is_available(), reason="needs a CUDA device")])]


def training_step(model, images, labels, autocast: bool):
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)  # the same dropout masks in every step
    criterion = SetCriterion(model.num_classes)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=autocast):
        outputs = model(images)
        states = [n.v for n in model.modules() if isinstance(n, NILIFNode)]
        loss = criterion(outputs, labels)["loss"]
    loss.backward()
    grads = torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None])
    return outputs, states, loss.detach(), grads


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_autocast_step_keeps_neuron_states_in_fp32(device):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64)
    model = lively(tiny("spike2former_camvid", T=2), images).train().to(device)
    model.set_execution(keep_neuron_states=True)
    images = images.to(device)
    labels = F.interpolate(torch.randint(0, 11, (2, 1, 4, 4)).float(), size=(64, 64))[:, 0].long().to(device)

    # every step updates the BN running statistics, which BNAndPad's padding reads: start each alike
    start = copy.deepcopy(model.state_dict())
    _, _, loss32, _ = training_step(model, images, labels, autocast=False)
    model.load_state_dict(start)
    outputs, states, loss16, grads16 = training_step(model, images, labels, autocast=True)
    model.load_state_dict(start)
    _, _, again, grads_again = training_step(model, images, labels, autocast=True)
    assert outputs["pred_masks"].dtype == torch.bfloat16  # the products ran in bf16 ...
    kept = [v for v in states if isinstance(v, torch.Tensor)]
    assert kept and all(v.dtype == torch.float32 for v in kept)  # ... the membranes did not
    assert torch.isfinite(loss16) and torch.isfinite(grads16).all() and grads16.abs().sum() > 0
    assert float(again) == float(loss16) and torch.allclose(grads_again, grads16, rtol=1e-3, atol=1e-6)
    assert abs(float(loss16) - float(loss32)) < 0.15 * float(loss32)
