"""One factory for the neurons that Spike2Former's ablations (paper Table 3) swap in."""
from __future__ import annotations

import torch.nn as nn
from spikingjelly.activation_based import neuron

from .nilif import NILIFNode

__all__ = ["NEURON_KINDS", "build", "set_backend"]

NEURON_KINDS = ("nilif", "ilif", "nilif_const", "lif", "official")


def build(kind: str = "nilif", **kwargs) -> nn.Module:
    """Build a spiking neuron by name.

    - ``'nilif'``: :class:`NILIFNode` (D=4, beta=0.25 by default).
    - ``'ilif'``: I-LIF, the same dynamics with the integer count as output (``norm=1``).
    - ``'nilif_const'``: the count divided by a constant that is not D
      (``norm=8`` by default: the paper's "norm with const 8" row).
    - ``'lif'``: SpikingJelly's binary ``LIFNode``; ``beta`` is accepted and mapped to
      ``tau = 1 / (1 - beta)``, other keywords go to ``LIFNode``.
    - ``'official'``: the released code's neuron: D=8, output /8, no leak (beta=1),
      reset not detached, state carried between calls until ``reset()``.
    """
    if kind == "nilif":
        return NILIFNode(**kwargs)
    if kind == "ilif":
        return NILIFNode(norm=1.0, **kwargs)
    if kind == "nilif_const":
        norm = float(kwargs.pop("norm", 8.0))
        node = NILIFNode(norm=norm, **kwargs)
        if norm == float(node.D):
            raise ValueError(f"'nilif_const' needs a constant other than D={node.D}; "
                             "with norm == D use kind='nilif'")
        return node
    if kind == "lif":
        if "beta" in kwargs:
            beta = float(kwargs.pop("beta"))
            if not 0.0 < beta < 1.0:
                raise ValueError(f"'lif' needs beta in (0, 1) (tau = 1 / (1 - beta)), got {beta}")
            kwargs["tau"] = 1.0 / (1.0 - beta)
        kwargs.setdefault("detach_reset", True)
        return neuron.LIFNode(**kwargs)
    if kind == "official":
        for fixed in ("D", "beta", "detach_reset", "norm"):
            if fixed in kwargs:
                raise ValueError(f"the 'official' neuron fixes {fixed}; build 'nilif' to change it")
        return NILIFNode(D=8, beta=1.0, detach_reset=False, **kwargs)
    raise ValueError(f"unknown neuron kind {kind!r}; choose one of {NEURON_KINDS}")


def set_backend(net: nn.Module, backend: str) -> int:
    """Switch every :class:`NILIFNode` in ``net`` to ``backend``; returns how many changed."""
    nodes = [m for m in net.modules() if isinstance(m, NILIFNode)]
    for node in nodes:
        node.backend = backend
    return len(nodes)
