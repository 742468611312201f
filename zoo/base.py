"""What every registered segmentor shares: input checks, padding, time replication, reset, saving."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Callable, ContextManager, Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from neurons import NILIFNode
from neurons.saved_spikes import compact_saved_spikes

from . import hub
from .execution import ExecutionOptions, as_options
from .layers.common import reset_neurons

__all__ = ["SegmentationModel"]

# One torch.compile wrapper per network function (the function, not the instance: Dynamo treats the
# module as an input, so instances of one architecture share compiled code where their structure agrees).
_COMPILED: Dict[Callable, Callable] = {}
# Network functions whose compilation failed in this process: they run eagerly from then on.
_COMPILE_FAILED: Dict[Callable, str] = {}


class SegmentationModel(nn.Module):
    """Base of spikezoo segmentors.

    Input: ``images`` [B, 3, H, W], float, normalised with the config's mean/std
    (:meth:`check_images` says what is rejected, and why). Images of another floating
    dtype than the model's (float64 from numpy, float16) are cast to the model's dtype,
    as ``images.float()`` would: the network computes in its own precision anyway, and
    under autocast the layers cast again as usual.
    Any H x W works: the image is zero-padded at the bottom/right to a multiple of
    ``size_divisor`` and predictions are cropped back. The image is replicated over
    the T time steps (``[T, B, 3, H, W]``). Every forward starts by resetting all
    neurons, so no membrane state leaks from one batch into the next.

    ``official=True`` folds T into the batch as the released code does (each
    replica is processed independently: no recurrence across T).

    A subclass declares what it is, so that tools need not know the class: ``family``
    ``'per_pixel'`` (``forward`` returns class logits per pixel) or ``'mask_classification'``
    (class logits and a mask per query: ``pred_logits``, ``pred_masks``); ``has_me_shortcut``
    tells whether the model's mask embedding has an ME-Shortcut that can be cut out.
    """

    size_divisor = 32
    family = "per_pixel"
    has_me_shortcut = False

    def __init__(self, T: int = 1, official: bool = False):
        super().__init__()
        if isinstance(T, bool) or not isinstance(T, int) or T < 1:
            raise ValueError(f"T (time steps) must be an int >= 1, got {T!r}")
        self.T = T
        self.official = official
        self._execution = ExecutionOptions()

    @property
    def execution(self) -> ExecutionOptions:
        """How the model computes (:class:`zoo.execution.ExecutionOptions`); assign options or a dict to change it."""
        return self._execution

    @execution.setter
    def execution(self, value) -> None:
        options = as_options(value)
        self._execution = options
        for module in self.modules():  # the attention layers carry their own product order
            if module is not self and hasattr(module, "product_order"):
                module.product_order = options.product_order

    def set_execution(self, **changes) -> "SegmentationModel":
        """Change some execution options (``model.set_execution(keep_neuron_states=True)``); returns the model."""
        self.execution = self._execution.replace(**changes)
        return self

    def check_images(self, images: torch.Tensor) -> None:
        """Reject images that would fail deep inside the network or, worse, give a silent wrong answer.

        Shape [B, 3, H, W] with B, H, W > 0, a floating dtype, and only finite values: one NaN
        pixel makes every logit NaN, and ``predict`` would return class 0 everywhere. The
        finiteness check is one pass over the image (skipped on the meta device, which holds no
        values, and while ``torch.compile`` traces, where it would break the graph).
        """
        if not isinstance(images, torch.Tensor):
            raise TypeError(f"images must be a tensor [B, 3, H, W], got {type(images).__name__}")
        shape = list(images.shape)
        if images.dim() != 4:
            hint = "; add a batch axis with images[None] for a single image" if images.dim() == 3 else ""
            raise ValueError(f"images must have shape [B, 3, H, W], got {shape}{hint}")
        if images.shape[1] != 3:
            hint = ("; channels-last images [B, H, W, 3] need images.permute(0, 3, 1, 2)" if images.shape[3] == 3
                    else "; convert grayscale or RGBA images to RGB first (e.g. PIL's image.convert('RGB'))")
            raise ValueError(f"the model expects 3 (RGB) channels, got {images.shape[1]} "
                             f"(images of shape {shape}){hint}")
        if images.shape[0] == 0:
            raise ValueError(f"empty batch: images has shape {shape}; pass at least one image")
        if images.shape[2] == 0 or images.shape[3] == 0:
            raise ValueError(f"images of shape {shape} have no pixels (spatial size {shape[2]}x{shape[3]})")
        if not images.is_floating_point():
            raise TypeError(f"images must be float and normalised with the model's mean/std, got {images.dtype}")
        if images.is_meta or torch.compiler.is_compiling():
            return
        if not torch.isfinite(images).all():
            bad = int((~torch.isfinite(images)).sum())
            raise ValueError(
                f"images hold {bad} non-finite value{'s' if bad > 1 else ''} (NaN or inf) among {images.numel()}: "
                "they would make every logit NaN. Check the image decoding and the normalisation "
                "(a failed read, a division by a zero std)")

    def preprocess(self, images) -> torch.Tensor:
        """Images (PIL, numpy, uint8 or 0..1 float tensors, file paths; one or a list) as the normalised
        ``[B, 3, H, W]`` batch this model takes: ``self.pretrained_cfg.transforms()`` (:mod:`zoo.preprocess`)."""
        cfg = getattr(self, "pretrained_cfg", None)
        if cfg is None:
            raise AttributeError(f"this {type(self).__name__} was built without zoo.create and has no pretrained_cfg; "
                                 "use zoo.preprocess.Preprocess(mean, std) with its normalisation")
        return cfg.transforms().batch(images).to(self._input_dtype())

    def computing(self) -> ContextManager:
        """The context the network runs in: bf16 autocast for ``precision='bf16'`` and, in training,
        ``compact_saved_spikes`` (see :class:`zoo.execution.ExecutionOptions`)."""
        stack = contextlib.ExitStack()
        if self._execution.precision == "bf16":
            device_type = next(self.parameters()).device.type
            stack.enter_context(torch.autocast(device_type, dtype=torch.bfloat16))
        if (self._execution.compact_saved_spikes and not self._execution.compile and self.training
                and torch.is_grad_enabled()):
            stack.enter_context(compact_saved_spikes(self, self._execution.recompute_macs_per_output))
        return stack

    def run_network(self, network: Callable, *args: Any):
        """``network(self, *args)``, through ``torch.compile`` when ``execution.compile`` is set.

        ``network`` is an (unbound) method of the model that computes from the padded time sequence to
        the outputs, so that the input checks and the neuron reset stay outside the compiled graph.
        """
        if not self._execution.compile or network in _COMPILE_FAILED or torch.compiler.is_compiling():
            return network(self, *args)
        first = network not in _COMPILED
        if first:
            _COMPILED[network] = torch.compile(network, dynamic=False)
        try:
            return _COMPILED[network](self, *args)
        except Exception as err:  # no C++ compiler, or an Inductor failure: the eager network is the same
            if not first:
                raise
            _COMPILE_FAILED[network] = f"{type(err).__name__}: {err}"
            warnings.warn(f"execution.compile: compiling {network.__qualname__} failed ({_COMPILE_FAILED[network]}); "
                          "running it eagerly (same results, slower)", RuntimeWarning, stacklevel=2)
            return network(self, *args)

    def returned(self, output: torch.Tensor) -> torch.Tensor:
        """An output as the model returns it: fp32 after its own bf16 computation (``precision='bf16'``);
        otherwise as computed (an autocast around the model decides)."""
        return output.float() if self._execution.precision == "bf16" else output

    def to_sequence(self, images: torch.Tensor) -> Tuple[torch.Tensor, Tuple[int, int]]:
        """Reset neurons, pad to the size divisor, replicate over T: -> ([T', B', 3, Hp, Wp], (H, W)).

        In official mode T' = 1 and B' = T * B (time folded into the batch).
        """
        self.check_images(images)
        images = images.to(self._input_dtype())
        reset_neurons(self)
        for node in self.modules():
            if isinstance(node, NILIFNode):
                node.keep_state = self._execution.keep_neuron_states
        height, width = images.shape[-2:]
        pad_h = -height % self.size_divisor
        pad_w = -width % self.size_divisor
        if pad_h or pad_w:
            images = F.pad(images, (0, pad_w, 0, pad_h))
        x = images.unsqueeze(0).expand(self.T, *images.shape)
        if self.official:
            x = x.reshape(1, self.T * images.shape[0], *images.shape[1:])
        return x, (height, width)

    def _input_dtype(self) -> torch.dtype:
        """The dtype the images are cast to: that of the model's floating-point parameters."""
        return next(p.dtype for p in self.parameters() if p.is_floating_point())

    def time_mean(self, y: torch.Tensor, axis: int) -> torch.Tensor:
        """Average over time an output that the head left per replica (official mode folded T into B)."""
        if not self.official or self.T == 1:
            return y
        batch = y.shape[axis] // self.T
        return y.unflatten(axis, (self.T, batch)).mean(axis)

    def save_pretrained(self, directory) -> Path:
        """Write ``config.json`` + ``model.safetensors``; ``zoo.create(directory)`` rebuilds the model."""
        return hub.save_pretrained(self, directory)
