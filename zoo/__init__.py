"""spikezoo model zoo: a timm-style registry of spiking segmentation models.

    import zoo
    zoo.list_models("spike2former*")
    model = zoo.create("spike2former_ade20k", pretrained=True)
"""
from . import execution, hub
from . import backbones, spike2former, spikefpn  # noqa: F401  (registers the models)
from .execution import ExecutionOptions
from .factory import create
from .hub import CheckpointMismatchError, WeightsUnavailableError, save_pretrained
from .registry import PretrainedCfg, get_pretrained_cfg, list_models, list_pretrained, list_tags, register_model
from .spike_driven import SpikeDrivenStats, SynapseRow, spike_driven_forward, spike_driven_mode

__all__ = ["create", "list_models", "list_pretrained", "list_tags", "register_model", "get_pretrained_cfg",
           "PretrainedCfg", "save_pretrained", "WeightsUnavailableError", "CheckpointMismatchError", "hub",
           "spike_driven_mode", "spike_driven_forward", "SpikeDrivenStats", "SynapseRow", "ExecutionOptions",
           "execution"]
