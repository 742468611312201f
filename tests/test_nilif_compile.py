"""torch.compile(fullgraph=True) of a conv + NILIFNode model matches eager (CPU)."""
import torch
from spikingjelly.activation_based import functional

from neurons import NILIFNode


class ConvNILIF(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.sn = NILIFNode(step_mode="m", detach_reset=False)

    def forward(self, x):  # [T, B, C, H, W]
        functional.reset_net(self)
        T, B = x.shape[:2]
        y = self.conv(x.flatten(0, 1)).reshape(T, B, 8, *x.shape[-2:])
        return self.sn(y)


def test_compile_fullgraph_matches_eager():
    torch.manual_seed(0)
    net = ConvNILIF()
    x = torch.randn(3, 2, 3, 16, 16) * 2
    x_eager, x_comp = x.clone().requires_grad_(True), x.clone().requires_grad_(True)

    out_eager = net(x_eager)
    out_eager.square().sum().backward()
    grad_eager = net.conv.weight.grad.clone()
    net.zero_grad()

    compiled = torch.compile(net, fullgraph=True)
    out_comp = compiled(x_comp)
    out_comp.square().sum().backward()

    assert torch.equal(out_comp, out_eager)
    torch.testing.assert_close(net.conv.weight.grad, grad_eager, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x_comp.grad, x_eager.grad, rtol=1e-5, atol=1e-6)
    assert x_eager.grad.abs().sum() > 0
