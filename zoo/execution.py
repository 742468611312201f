"""How a segmentor computes, as opposed to what: one options object, readable on every model.

Every option but ``precision`` gives the outputs (and gradients) of the reference path, the paper's
order with nothing traded for speed or memory, up to float rounding; each has a test that compares the two.

    model = zoo.create("spike2former_ade20k", execution={"mask_order": "features_first"})
    model.execution                                  # ExecutionOptions(keep_neuron_states=False, ...)
    model.set_execution(keep_neuron_states=True)     # change some options (returns the model)
    with zoo.execution.using(model, product_order="qk_first"):   # ... or only for a while
        ...
    model.execution = ExecutionOptions.reference()   # the paper's order, no memory savings
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Iterator, Mapping, Union

import torch.nn as nn

__all__ = ["ExecutionOptions", "MASK_ORDERS", "PRODUCT_ORDERS", "PRECISIONS", "using", "as_options"]

# Spike2Former's masks: 'features_first' is the paper's e (W x + b) (the mask-feature conv, then the
# product with the embeddings e); 'auto' computes (e W) x + e b where that costs fewer multiply-adds.
MASK_ORDERS = ("auto", "features_first")
# Spike-driven attention Q K^T V: 'qk_first' is (Q K^T) V as the paper writes it, 'kv_first' Q (K^T V),
# 'auto' the cheaper of the two for the shapes at hand.
PRODUCT_ORDERS = ("auto", "qk_first", "kv_first")
# 'bf16': convolutions, linear layers and matrix products take bf16 operands (spikes k/D are exact in
# bf16) under autocast; the neurons keep fp32 membranes, and the outputs are returned in fp32.
PRECISIONS = ("fp32", "bf16")


@dataclasses.dataclass(frozen=True)
class ExecutionOptions:
    """The execution choices of a segmentor (the defaults are the fast path).

    - ``keep_neuron_states``: keep the neurons' final membrane states after a forward (to inspect
      ``v``). Neurons are reset before every forward, so the states are never read otherwise;
      keeping them costs memory and two passes per neuron.
    - ``compact_saved_spikes``: in training, spikes kept for backward are stored as 1-byte counts
      (``neurons.saved_spikes``): identical gradients, a quarter of their memory.
    - ``recompute_macs_per_output``: with ``compact_saved_spikes``, the outputs of Conv/Linear
      layers costing at most this many multiply-adds per element (depth-wise and thin 1x1 convs)
      are recomputed in backward instead of kept; identical gradients; 0 turns it off.
    - ``mask_order``: one of :data:`MASK_ORDERS` (Spike2Former).
    - ``product_order``: one of :data:`PRODUCT_ORDERS` (Spike2Former's decoder attention).
    - ``precision``: one of :data:`PRECISIONS`. Unlike the others, 'bf16' changes results beyond
      float rounding: layer outputs are rounded to 8-bit mantissas, which moves neurons that sit
      near a threshold (README, Performance, gives the measured agreement).
    - ``compile``: run the network (everything after the input checks, padding and neuron reset)
      through ``torch.compile`` (Inductor), which fuses the neuron, BatchNorm and elementwise chains
      of forward and backward. The first forward of each input shape, mode (train/eval) and precision
      compiles (minutes on a CPU, once per process); later ones reuse the code. Inductor needs a
      C++ compiler on CPU: when compiling fails, a warning says why and the model runs eagerly
      from then on. Autograd of the compiled graph chooses what it saves, so
      ``compact_saved_spikes`` does not apply while compiled. Same outputs and gradients as eager
      up to float rounding (a rounding difference can move a neuron sitting exactly at a threshold).
      Measured on a 2-core CPU (README, Performance): a camvid training iteration as fast as eager
      (1.14x with ``precision='bf16'``), ADE20K inference slower; so it is off by default.
    """

    keep_neuron_states: bool = False
    compact_saved_spikes: bool = True
    recompute_macs_per_output: int = 64
    mask_order: str = "auto"
    product_order: str = "auto"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self):
        if self.mask_order not in MASK_ORDERS:
            raise ValueError(f"mask_order must be one of {MASK_ORDERS}, got {self.mask_order!r}")
        if self.product_order not in PRODUCT_ORDERS:
            raise ValueError(f"product_order must be one of {PRODUCT_ORDERS}, got {self.product_order!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("keep_neuron_states", "compact_saved_spikes", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        macs = self.recompute_macs_per_output
        if isinstance(macs, bool) or not isinstance(macs, int) or macs < 0:
            raise ValueError(f"recompute_macs_per_output must be an int >= 0, got {macs!r}")

    @classmethod
    def reference(cls) -> "ExecutionOptions":
        """The paper's order with nothing traded for speed or memory: what every option is tested against."""
        return cls(compact_saved_spikes=False, recompute_macs_per_output=0, mask_order="features_first",
                   product_order="qk_first")

    def replace(self, **changes: Any) -> "ExecutionOptions":
        return dataclasses.replace(self, **changes)


def as_options(value: Union[None, ExecutionOptions, Mapping[str, Any]]) -> ExecutionOptions:
    """``None`` (the defaults), an :class:`ExecutionOptions`, or a dict of its fields."""
    if value is None:
        return ExecutionOptions()
    if isinstance(value, ExecutionOptions):
        return value
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {f.name for f in dataclasses.fields(ExecutionOptions)})
        if unknown:
            raise ValueError(f"unknown execution option(s) {unknown}; the options are "
                             f"{[f.name for f in dataclasses.fields(ExecutionOptions)]}")
        return ExecutionOptions(**value)
    raise TypeError(f"execution must be an ExecutionOptions or a dict, got {type(value).__name__}")


@contextlib.contextmanager
def using(model: nn.Module, **changes: Any) -> Iterator[nn.Module]:
    """Run ``model`` with some execution options changed, restoring them afterwards.

    None values change nothing; a module without ``execution`` (not a spikezoo segmentor: a plain
    network being measured, a backbone) runs unchanged.
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    saved: Dict[str, Any] = {}
    if changes and hasattr(model, "execution"):
        saved = {"execution": model.execution}
        model.execution = model.execution.replace(**changes)
    try:
        yield model
    finally:
        if saved:
            model.execution = saved["execution"]
