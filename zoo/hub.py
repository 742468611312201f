"""Weights: reading checkpoints, the Hugging Face Hub, strict loading, ``save_pretrained``.

A saved model is a folder with ``config.json`` (architecture, tag, constructor
arguments, pretrained config) and ``model.safetensors``. Checkpoints are read
from that folder, a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file
through ``torch.load(weights_only=True)`` (never unpickling code).
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
import torch.nn as nn

__all__ = ["WeightsUnavailableError", "CheckpointMismatchError", "read_checkpoint", "download_weights",
           "load_strict", "save_pretrained", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PathLike = Union[str, os.PathLike]


class WeightsUnavailableError(RuntimeError):
    """Weights were asked for but cannot be had (none published, offline, not cached)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""


def _unwrap(obj: Any, path: Path) -> Dict[str, torch.Tensor]:
    """Find the state_dict inside common wrappers ({'state_dict': ...}, {'model': ...}, DDP 'module.')."""
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} holds no state_dict of tensors (found {type(obj).__name__})")
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def read_checkpoint(path: PathLike) -> Dict[str, torch.Tensor]:
    """Read a state_dict from a saved folder, a .safetensors file or a .pth/.pt/.bin file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        weights = path / WEIGHTS_NAME
        if not weights.is_file():
            raise FileNotFoundError(f"{path} is a folder without {WEIGHTS_NAME}; "
                                    "pass the checkpoint file itself or a folder written by save_pretrained")
        path = weights
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            return load_file(str(path))
        return _unwrap(torch.load(path, map_location="cpu", weights_only=True), path)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # corrupt or truncated files surface as many different errors
        raise ValueError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}. "
                         "The file may be truncated or corrupt; download or save it again") from err


def download_weights(cfg, cache_dir: Optional[PathLike] = None,
                     local_files_only: Optional[bool] = None) -> Path:
    """Fetch ``cfg.filename`` from the Hub repo ``cfg.hub_id`` (or find it in the cache).

    ``local_files_only`` defaults to the HF_HUB_OFFLINE setting, which
    huggingface_hub honours on its own as well.
    """
    if not cfg.hub_id:
        raise WeightsUnavailableError(
            f"no weights are published for {cfg.name}. Train it with `python -m recipes train ...` "
            "or pass checkpoint_path= (a .safetensors/.pth file, an official mmseg checkpoint, "
            "or a folder written by save_pretrained)")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.constants import HF_HUB_CACHE, HF_HUB_OFFLINE

    offline = HF_HUB_OFFLINE if local_files_only is None else local_files_only
    try:
        return Path(hf_hub_download(cfg.hub_id, cfg.filename, cache_dir=cache_dir, local_files_only=offline))
    except Exception as err:  # offline, not cached, missing repo/file, network errors
        where = cache_dir or HF_HUB_CACHE
        raise WeightsUnavailableError(
            f"could not get {cfg.filename} of {cfg.name} from the Hugging Face Hub repo {cfg.hub_id} "
            f"(looked in the cache {where}{', offline' if offline else ''}): {type(err).__name__}: {err}. "
            f"On a machine with internet run `huggingface-cli download {cfg.hub_id} {cfg.filename}` "
            "and copy the cache here (or set cache_dir=), or pass checkpoint_path= to a local copy") from err


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that lists every kind of mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        def listing(title, items):
            if not items:
                return ""
            shown = "\n    ".join(items[:20])
            more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
            return f"\n  {title} ({len(items)}):\n    {shown}{more}"
        raise CheckpointMismatchError(
            f"{source} does not fit {type(model).__name__}:"
            + listing("missing keys", missing) + listing("unexpected keys", unexpected)
            + listing("shape mismatches", shapes))
    model.load_state_dict(state_dict, strict=True)


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, then rename: a crash never leaves half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_pretrained(model: nn.Module, directory: PathLike, model_args: Optional[Dict[str, Any]] = None,
                    pretrained_cfg=None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = pretrained_cfg if pretrained_cfg is not None else getattr(model, "pretrained_cfg", None)
    config = {
        "architecture": cfg.architecture if cfg is not None else type(model).__name__,
        "tag": cfg.tag if cfg is not None else "",
        "model_args": model_args if model_args is not None else getattr(model, "model_args", {}),
        "pretrained_cfg": cfg.to_dict() if cfg is not None else None,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    _atomic_write(directory / CONFIG_NAME,
                  lambda tmp: Path(tmp).write_text(json.dumps(config, indent=2, default=list)))
    return directory
