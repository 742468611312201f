"""``zoo.create``: build a registered model and load its weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

import torch.nn as nn

from . import hub
from .registry import get_builder, get_checkpoint_filter, get_pretrained_cfg, is_model

__all__ = ["create", "load_weights"]


def _saved_config(path: Optional[hub.PathLike]) -> Optional[Dict[str, Any]]:
    """The config.json of a folder written by ``save_pretrained``; None when ``path`` has none."""
    if path is None:
        return None
    config = Path(path) / hub.CONFIG_NAME
    if not config.is_file():
        return None
    try:
        return json.loads(config.read_text())
    except ValueError as err:  # JSONDecodeError, or bytes that are not UTF-8
        raise ValueError(f"cannot read {config}: {err}. The file may be truncated or corrupt; "
                         "save the model again") from err


def load_weights(model: nn.Module, name: str, state_dict: Dict[str, Any], source: str) -> None:
    """Strictly load ``state_dict``, converting it first when its keys are not the model's own."""
    own = model.state_dict().keys()
    if not set(state_dict) <= set(own) or not set(own) <= set(state_dict):
        convert = get_checkpoint_filter(name)
        if convert is not None:
            try:
                state_dict = convert(state_dict, model)
            except hub.CheckpointMismatchError as err:  # an official checkpoint, but not one that fits
                raise hub.CheckpointMismatchError(f"{source}: {err}") from None
            except (KeyError, ValueError) as err:
                # not a foreign format either: report the mismatch against our own keys
                source = f"{source} (not an official checkpoint either: {err})"
    hub.load_strict(model, state_dict, source)


def create(name: str, pretrained: bool = False, checkpoint_path: Optional[hub.PathLike] = None,
           pretrained_cfg_overlay: Optional[Dict[str, Any]] = None, cache_dir: Optional[hub.PathLike] = None,
           local_files_only: Optional[bool] = None, execution: Optional[Any] = None, **kwargs) -> nn.Module:
    """Build ``name`` (``arch`` or ``arch.tag``) and optionally load weights.

    - ``pretrained=True``: the config's Hub weights through ``hf_hub_download``
      (``cache_dir``, ``local_files_only`` and HF_HUB_OFFLINE are honoured).
    - ``checkpoint_path``: a local ``.safetensors``/``.pth``/``.pt`` file (ours,
      the official code's, or an ImageNet backbone's: converted automatically) or
      a folder written by ``save_pretrained`` (its saved constructor arguments
      are reused). ``name`` may itself be such a folder.
    - ``execution``: how the model computes (:class:`zoo.execution.ExecutionOptions` or a dict of
      its fields, e.g. ``{"mask_order": "features_first"}``); readable as ``model.execution``.
    - ``kwargs`` override the constructor arguments the config implies; ``model.pretrained_cfg`` then
      records them (``model_args`` as built, ``overrides`` what changed; ``T``/``D``/``neuron`` follow).
    - ``pretrained_cfg_overlay`` changes descriptive fields of the config (mean/std, notes, ...); what
      the model is built with can only change through ``kwargs``.
    """
    saved = None
    if not is_model(name):
        saved = _saved_config(name)
        if saved is None and Path(name).is_dir():
            raise FileNotFoundError(f"{name} is a folder without {hub.CONFIG_NAME}, so it names no model: pass a "
                                    "folder written by save_pretrained, or a model name with checkpoint_path=")
    if saved is not None:
        checkpoint_path = name if checkpoint_path is None else checkpoint_path  # the folder's weights by default
        name = f"{saved['architecture']}.{saved['tag']}" if saved.get("tag") else saved["architecture"]
    else:
        saved = _saved_config(checkpoint_path)
    cfg = get_pretrained_cfg(name)
    if saved is not None and saved["architecture"] != cfg.architecture:
        raise ValueError(f"{checkpoint_path} holds a {saved['architecture']}, not a {cfg.architecture}")
    if pretrained_cfg_overlay:
        built = sorted({"T", "D", "neuron", "model_args", "overrides"} & set(pretrained_cfg_overlay))
        if built:
            raise ValueError(f"pretrained_cfg_overlay cannot set {built}: they say what the model is built with; "
                             f"pass constructor arguments instead, e.g. zoo.create({name!r}, T=2)")
        cfg = cfg.replace(**pretrained_cfg_overlay)
    model_args = {**cfg.model_args, **(saved or {}).get("model_args", {}), **kwargs}
    missing = object()
    overrides = {k: v for k, v in model_args.items() if cfg.model_args.get(k, missing) != v}
    if overrides:
        cfg = cfg.replace(model_args=model_args, overrides=overrides)
    model = get_builder(name)(**model_args)
    model.pretrained_cfg = cfg
    model.model_args = model_args
    if execution is not None:
        if not hasattr(model, "execution"):
            raise ValueError(f"{name} has no execution options (only the segmentors have them)")
        model.execution = execution
    if checkpoint_path is not None:
        path = Path(checkpoint_path)
    elif pretrained:
        path = hub.download_weights(cfg, cache_dir=cache_dir, local_files_only=local_files_only)
    else:
        return model
    load_weights(model, name, hub.read_checkpoint(path), source=str(path))
    return model
