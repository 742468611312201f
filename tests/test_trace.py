"""zoo.trace: one record per executed call, against counts worked out by hand for a toy network."""
import pytest
import torch
import torch.nn as nn

from neurons import NILIFNode
from zoo.complexity import mac_rows
from zoo.spikes import marking_spikes
from zoo.trace import Trace


class Attention(nn.Module):
    product_kind = "attention_product"

    def forward(self, q, k):
        return q @ k.transpose(-1, -2)


class Toy(nn.Module):
    """A linear layer, a spiking neuron, a declared product with spikes on one side, an undeclared
    product of real values and an einsum of three operands (not watched: recorded without operands)."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(6, 6, bias=False)
        self.sn = NILIFNode(D=4, step_mode="s")
        self.attention = Attention()

    def forward(self, x):                                        # x [2, 5, 6]
        h = self.proj(x)
        s = self.sn(h)
        scores = self.attention(s, h)                            # [2, 5, 5]: 2 x 5 x 5 x 6 MACs
        mixed = torch.bmm(scores, h)                             # [2, 5, 6]: 2 x 5 x 6 x 5 MACs
        return torch.einsum("bij,bjk,bkl->bil", scores, scores, mixed)


def test_one_record_per_call_with_its_operands():
    torch.manual_seed(0)
    model = Toy().eval()
    x = torch.randn(2, 5, 6) * 2
    with torch.no_grad():
        counts = torch.round(model.sn(model.proj(x)) * model.sn.dynamics.norm)  # a count is 1 / norm
    model.sn.reset()
    with torch.no_grad(), marking_spikes(model), Trace(model, events=True) as trace:
        model(x)
    records = trace.records
    assert [(r.name, r.kind) for r in records[:3]] == [
        ("proj", "conv_linear"), ("attention", "attention_product"), ("", "other_product")]
    proj, attention, mixed = records[:3]
    assert (proj.macs, proj.calls, proj.operands[0].mark) == (2 * 5 * 6 * 6, 1, None)
    assert (attention.macs, attention.calls, attention.aten_ops) == (2 * 5 * 5 * 6, 1, ["bmm"])
    assert (mixed.macs, [x.mark for x in mixed.operands]) == (2 * 5 * 6 * 5, [None, None])
    # the spike operand of the attention product: its mark and its integer counts, summed by hand
    spike, real = attention.operands
    assert spike.mark[1:] == (4, "sn") and real.mark is None
    assert spike.events == int(counts.sum()) > 0 and spike.elements == counts.numel()
    # the three-operand einsum is not watched: its ATen products are recorded without operands
    assert all(r.operands == () and r.name == "" for r in records[3:]) and len(records) > 3


def test_count_macs_is_the_sum_of_the_records():
    model = Toy().eval()
    with torch.no_grad(), Trace(model) as trace:
        model(torch.randn(2, 5, 6))
    rows = {(r.name, r.kind): r.macs for r in mac_rows(trace.records)}
    assert sum(rows.values()) == sum(r.macs for r in trace.records)
    assert rows[("attention", "attention_product")] == 2 * 5 * 5 * 6


def test_spike_operands_on_meta_are_refused():
    model = Toy().eval()
    with pytest.raises(ValueError, match="not 'meta'"):
        with marking_spikes(model), Trace(model, events=True):
            model(torch.randn(2, 5, 6, device="meta"))


def test_unknown_product_kind_is_an_error():
    class Wrong(Attention):
        product_kind = "attention"

    model = Toy()
    model.attention = Wrong()
    with pytest.raises(ValueError, match="product_kind is 'attention'"):
        with Trace(model):
            model(torch.randn(2, 5, 6))
