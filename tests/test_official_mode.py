"""The official compatibility switch: the released code's neuron, T folded into the batch."""
import torch

import zoo
from neurons import NILIFNode

TINY = dict(embed_dims=(8, 16, 32, 40), backbone_heads=2, backbone_depths=(1, 1), feat_channels=16,
            encoder_layers=1, sdte_ffn_channels=32, sdda_groups=2, decoder_layers=2, decoder_heads=2,
            decoder_ffn_channels=32, num_queries=5)


def test_official_switch_uses_the_released_neuron():
    model = zoo.create("spike2former_ade20k", official=True, **TINY)
    nodes = [m for m in model.modules() if isinstance(m, NILIFNode)]
    assert nodes and all((n.D, n.beta, n.detach_reset) == (8, 1.0, False) for n in nodes)


def test_official_time_steps_are_replicas_not_a_recurrence():
    """Released code: the image is replicated T times and folded into the batch, so T > 1 changes nothing."""
    torch.manual_seed(0)
    images = torch.randn(2, 3, 64, 64) * 3
    outputs = {}
    for official in (True, False):
        for T in (1, 2):
            torch.manual_seed(1)
            model = zoo.create("spike2former_ade20k", official=official, T=T, **TINY).eval()
            with torch.no_grad():
                outputs[official, T] = model(images)["pred_masks"]
    torch.testing.assert_close(outputs[True, 2], outputs[True, 1], rtol=1e-5, atol=1e-6)
    # with NI-LIF's recurrence the time steps differ, and so does their average
    assert not torch.allclose(outputs[False, 2], outputs[False, 1], rtol=1e-3, atol=1e-4)
