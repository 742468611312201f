"""Weights: reading checkpoints, the Hugging Face Hub, strict loading, ``save_pretrained``.

A saved model is a folder with ``config.json`` (architecture, tag, constructor
arguments, pretrained config) and ``model.safetensors``. Checkpoints are read
from that folder, a ``.safetensors`` file, or a ``.pth``/``.pt``/``.bin`` file
through ``torch.load(weights_only=True)`` (never unpickling code).
"""
from __future__ import annotations

import errno
import json
import os
import socket
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Sequence, Union
from urllib.parse import urlsplit

import torch
import torch.nn as nn

__all__ = ["WeightsUnavailableError", "CheckpointMismatchError", "UnknownKeysError", "read_checkpoint",
           "download_weights", "mismatch_error", "load_strict", "save_pretrained", "write_files_atomically",
           "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
PathLike = Union[str, os.PathLike]


class WeightsUnavailableError(RuntimeError):
    """Weights were asked for but cannot be had (none published, offline, not cached)."""


class CheckpointMismatchError(RuntimeError):
    """A checkpoint does not fit the model: lists missing, unexpected and mis-shaped keys."""


class UnknownKeysError(KeyError):
    """Raised by a converter of official checkpoints: keys it does not know, all of them in ``keys``.

    The converters see the keys of one part with its prefix stripped; the checkpoint
    filters catch this error to report the keys under their full official names.
    """

    def __init__(self, what: str, keys: Sequence[str]):
        self.keys = list(keys)
        super().__init__(f"not {what} key{'s' if len(self.keys) > 1 else ''}: "
                         + ", ".join(repr(k) for k in self.keys[:20])
                         + (f" and {len(self.keys) - 20} more" if len(self.keys) > 20 else ""))

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return self.args[0]


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


# How long the Hub gets to accept a connection before it counts as unreachable. Without this check
# huggingface_hub retries a failed connection with backoff for about 23 s before it looks in the cache.
HUB_CONNECT_TIMEOUT_S = 1.5


def _hub_reachable(endpoint: str, timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``endpoint`` (or to the proxy that requests to it would use) opens in time."""
    url = urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme)
    if proxy and not urllib.request.proxy_bypass(url.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def download_weights(cfg, cache_dir: Optional[PathLike] = None,
                     local_files_only: Optional[bool] = None) -> Path:
    """The weights of ``cfg``: the file that ships inside the package (``cfg.shipped_file``, no network),
    else ``cfg.filename`` from the Hub repo ``cfg.hub_id`` (or from the cache).

    ``local_files_only`` defaults to the HF_HUB_OFFLINE setting, which
    huggingface_hub honours on its own as well. When the Hub endpoint
    (HF_ENDPOINT) does not accept a connection within ``HUB_CONNECT_TIMEOUT_S``,
    only the cache is searched, so that an offline machine fails (or finds its
    cached copy) at once instead of after huggingface_hub's retries.
    """
    shipped = cfg.shipped_path
    if shipped is not None:
        if not shipped.is_file():
            raise WeightsUnavailableError(
                f"{cfg.name}'s weights should ship with the package as {shipped}, which is missing: reinstall "
                "spikezoo (pip install -e . from a full checkout), or pass checkpoint_path=")
        return shipped
    if not cfg.hub_id:
        raise WeightsUnavailableError(
            f"no weights are published for {cfg.name}. Train it with `python -m recipes train ...` "
            "or pass checkpoint_path= (a .safetensors/.pth file, an official mmseg checkpoint, "
            "or a folder written by save_pretrained)")
    from huggingface_hub import constants, hf_hub_download

    offline = constants.HF_HUB_OFFLINE if local_files_only is None else local_files_only
    unreachable = not offline and not _hub_reachable(constants.ENDPOINT)
    try:
        return Path(hf_hub_download(cfg.hub_id, cfg.filename, cache_dir=cache_dir,
                                    local_files_only=offline or unreachable))
    except Exception as err:  # offline, not cached, missing repo/file, network errors
        where = cache_dir or constants.HF_HUB_CACHE
        why = (", offline" if offline else
               f"; the Hub at {constants.ENDPOINT} cannot be reached" if unreachable else "")
        raise WeightsUnavailableError(
            f"could not get {cfg.filename} of {cfg.name} from the Hugging Face Hub repo {cfg.hub_id} "
            f"(looked in the cache {where}{why}): {type(err).__name__}: {err}. "
            f"On a machine with internet run `hf download {cfg.hub_id} {cfg.filename}` "
            "and copy the cache here (or set cache_dir=), or pass checkpoint_path= to a local copy") from err


def mismatch_error(what: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
                   shapes: Sequence[str] = ()) -> CheckpointMismatchError:
    """The error for ``what`` (e.g. 'x.pth does not fit Spike2Former'), listing each kind of mismatch."""
    def listing(title, items):
        if not items:
            return ""
        shown = "\n    ".join(items[:20])
        more = f"\n    ... and {len(items) - 20} more" if len(items) > 20 else ""
        return f"\n  {title} ({len(items)}):\n    {shown}{more}"
    return CheckpointMismatchError(f"{what}:" + listing("missing keys", list(missing))
                                   + listing("unexpected keys", list(unexpected))
                                   + listing("shape mismatches", list(shapes)))


def load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with an error that lists every kind of mismatch."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
              for k, v in own.items() if k in state_dict and state_dict[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise mismatch_error(f"{source} does not fit {type(model).__name__}", missing, unexpected, shapes)
    model.load_state_dict(state_dict, strict=True)


def write_files_atomically(contents: Dict[Path, Union[bytes, memoryview]], retry_hint: str) -> None:
    """Write each file under a temporary name in its folder, flushed to disk, then rename them all.

    A crash never leaves half a file, nor new content beside an older sibling (weights and config
    are replaced together). The data are serialised by the caller, so a full disk surfaces here as
    ``OSError(ENOSPC)`` from the write (serialisers report it in their own opaque ways); it is
    re-raised with a message that names the folder, says what is intact and ends with ``retry_hint``.
    """
    temporaries: Dict[Path, str] = {}
    umask = os.umask(0)
    os.umask(umask)
    try:
        for path, data in contents.items():
            fd, temporaries[path] = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            if hasattr(os, "fchmod"):  # mkstemp's files are private (0600); give the mode open() would give
                os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        for path, temporary in temporaries.items():
            os.replace(temporary, path)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        folder = next(iter(contents)).parent
        size = sum(memoryview(data).nbytes for data in contents.values()) / 2 ** 20
        kept = [path.name for path in contents if path.exists()]
        intact = (f"the previous {', '.join(kept)} {'is' if len(kept) == 1 else 'are'} intact"
                  if kept else "no partial file is left there")
        raise OSError(err.errno, f"the disk is full: no space left on the device of {folder} while writing "
                                 f"{', '.join(path.name for path in contents)} ({size:.0f} MB); {intact}; "
                                 f"{retry_hint}", str(folder)) from err
    finally:
        for temporary in temporaries.values():
            if os.path.exists(temporary):
                os.unlink(temporary)


def save_pretrained(model: nn.Module, directory: PathLike, model_args: Optional[Dict[str, Any]] = None,
                    pretrained_cfg=None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
    from safetensors.torch import save

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} is a file; save_pretrained writes a folder ({CONFIG_NAME} + "
                              f"{WEIGHTS_NAME}): pass the path of a new or existing folder")
    directory.mkdir(parents=True, exist_ok=True)
    cfg = pretrained_cfg if pretrained_cfg is not None else getattr(model, "pretrained_cfg", None)
    config = {
        "architecture": cfg.architecture if cfg is not None else type(model).__name__,
        "tag": cfg.tag if cfg is not None else "",
        "model_args": model_args if model_args is not None else getattr(model, "model_args", {}),
        "pretrained_cfg": cfg.to_dict() if cfg is not None else None,
    }
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    write_files_atomically({
        directory / WEIGHTS_NAME: save(tensors, metadata={"format": "pt"}),
        directory / CONFIG_NAME: json.dumps(config, indent=2, default=list).encode(),
    }, "free some space and save again")
    return directory
