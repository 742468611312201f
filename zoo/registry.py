"""The model registry, modelled on timm: one builder per architecture, a
pretrained config per tag (``arch.tag``: a T x D setting or a weight set).

    @register_model(cfgs={"t1d4": PretrainedCfg(num_classes=150, model_args={"T": 1, "D": 4, ...}, ...)})
    def spike2former_ade20k(**kwargs) -> nn.Module: ...

    zoo.create("spike2former_ade20k")          # the default (first) tag
    zoo.create("spike2former_ade20k.t1d4")
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch.nn as nn

__all__ = ["PretrainedCfg", "register_model", "list_models", "list_pretrained", "get_pretrained_cfg",
           "get_checkpoint_filter", "get_test_args", "segmentation_cfg", "split_name", "get_builder", "is_model",
           "model_zoo_table"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedCfg:
    """What a user can read about one registered model and its weights (torchvision ``Weights.meta`` style).

    ``model_args`` are the constructor arguments this config implies (classes, T, D,
    neuron, ...); ``create`` passes them to the builder, and explicit keyword
    arguments to ``create`` override them: the model's config then holds the arguments it was
    built with in ``model_args`` and the changed ones in ``overrides`` (empty when it was built
    as registered). ``T``, ``D`` and ``neuron`` are read from ``model_args``, so a config always
    says what was built. ``paper`` holds the published figures
    (metric, value, params, energy); ``params`` and ``macs`` are what this
    implementation builds (a test rebuilds every model and checks them);
    ``metrics``, ``firing_rate`` and ``energy_mj`` are our own measurements of
    the published weights, empty until measured.

    Weights that ship inside the package (``shipped_file``, a file in ``zoo/weights/``) come with a
    ``zoo/weights/<arch>.<tag>.json`` that fills ``metrics``, ``firing_rate``, ``energy_mj`` and
    ``training`` (recipe and exact command, iterations, wall time, machine, date) and
    ``sample_predictions`` (per frame of ``zoo/samples/<dataset>``: the pixels of each class the weights
    predict, which a test checks) when the model is registered; ``pretrained=True`` then loads them
    offline. ``python -m analysis export RUN`` writes both files from a finished training run.
    """

    architecture: str = ""
    tag: str = ""
    hub_id: Optional[str] = None
    filename: str = "model.safetensors"
    license: Optional[str] = None
    dataset: Optional[str] = None
    task: str = "semantic"
    num_classes: Optional[int] = None
    class_names: Tuple[str, ...] = ()
    palette: Tuple[Tuple[int, int, int], ...] = ()
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    crop_size: Tuple[int, int] = (512, 512)
    eval_scale: Optional[Tuple[int, int]] = None
    model_args: Dict[str, Any] = field(default_factory=dict)
    paper: Dict[str, Any] = field(default_factory=dict)
    params: Optional[int] = None
    macs: Optional[float] = None
    metrics: Dict[str, Any] = field(default_factory=dict)
    firing_rate: Optional[float] = None
    energy_mj: Optional[float] = None
    recipe: Optional[str] = None
    notes: str = ""
    shipped_file: Optional[str] = None
    training: Dict[str, Any] = field(default_factory=dict)
    sample_predictions: Dict[str, Any] = field(default_factory=dict)
    overrides: Dict[str, Any] = field(default_factory=dict)

    @property
    def T(self) -> int:
        """Time steps, as ``model_args`` build them."""
        return int(self.model_args.get("T", 1))

    @property
    def neuron(self) -> str:
        """The neuron kind (:func:`neurons.build`), as ``model_args`` build it."""
        return "official" if self.model_args.get("official") else str(self.model_args.get("neuron", "nilif"))

    @property
    def D(self) -> int:
        """Spike levels per step: ``model_args``' D (8 for the released code's neuron, 1 for binary LIF)."""
        return {"official": 8, "lif": 1}.get(self.neuron, int(self.model_args.get("D", 4)))

    @property
    def name(self) -> str:
        return f"{self.architecture}.{self.tag}" if self.tag else self.architecture

    @property
    def has_weights(self) -> bool:
        return self.hub_id is not None or self.shipped_file is not None

    @property
    def shipped_path(self) -> Optional[Path]:
        """Where the weights that ship with the package lie (None when none ship)."""
        return SHIPPED_WEIGHTS / self.shipped_file if self.shipped_file else None

    def replace(self, **changes) -> "PretrainedCfg":
        return dataclasses.replace(self, **changes)

    def transforms(self):
        """The preprocessing of this model's inputs (:class:`zoo.preprocess.Preprocess`): the evaluation
        resize ``eval_scale`` (keep-ratio ``(long, short)``; None keeps the image's size), then mean/std."""
        from .preprocess import Preprocess
        return Preprocess(self.mean, self.std, self.eval_scale)

    def to_dict(self) -> Dict[str, Any]:
        return {**dataclasses.asdict(self), "T": self.T, "D": self.D, "neuron": self.neuron}


CheckpointFilter = Callable[[Dict[str, Any], nn.Module], Dict[str, Any]]

# weights inside the package, each with its metadata: <arch>.<tag>.safetensors + <arch>.<tag>.json
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "weights"
# the metadata keys a shipped weight's JSON may set on its config
_SHIPPED_KEYS = ("shipped_file", "metrics", "firing_rate", "energy_mj", "training", "sample_predictions")


def _with_shipped_weights(cfg: PretrainedCfg) -> PretrainedCfg:
    """``cfg`` with the metadata of its shipped weights, when ``zoo/weights/<name>.json`` exists."""
    meta_file = SHIPPED_WEIGHTS / f"{cfg.name}.json"
    if not meta_file.is_file():
        return cfg
    meta = json.loads(meta_file.read_text())
    unknown = sorted(set(meta) - set(_SHIPPED_KEYS))
    if unknown:
        raise ValueError(f"{meta_file}: unknown keys {unknown}; allowed: {list(_SHIPPED_KEYS)}")
    return cfg.replace(**{k: meta[k] for k in _SHIPPED_KEYS if k in meta})


def segmentation_cfg(dataset: str, classes, palette, T: int, D: int, params: Optional[int],
                     paper: Dict[str, Any], *, source: str, crop=(512, 512), task: str = "semantic",
                     model_args: Optional[Dict[str, Any]] = None, notes: str = "", recipe: Optional[str] = None,
                     macs: Optional[float] = None) -> PretrainedCfg:
    """The config of a segmentor trained on ``dataset``: classes, T, D and ``model_args`` agree.

    ``paper``: the published figures, credited to ``source`` (empty for variants the paper
    does not have). ``macs``: GMACs of one inference per time step at the crop size
    (``zoo.complexity`` convention).
    """
    from .datasets_meta import DATASETS
    args = {"num_classes": len(classes), "T": T, "D": D, **(model_args or {})}
    eval_scale = DATASETS[dataset].eval_scale if dataset in DATASETS else None
    return PretrainedCfg(dataset=dataset, task=task, num_classes=len(classes), class_names=tuple(classes),
                         palette=tuple(palette), crop_size=crop, eval_scale=eval_scale, model_args=args,
                         paper={"source": source, **paper} if paper else {}, params=params, macs=macs,
                         recipe=recipe or dataset, notes=notes)


@dataclass
class _Entry:
    builder: Callable[..., nn.Module]
    cfgs: Dict[str, PretrainedCfg]
    default_tag: str
    checkpoint_filter: Optional[CheckpointFilter]
    test_args: Dict[str, Any]


_REGISTRY: Dict[str, _Entry] = {}


def register_model(fn: Optional[Callable] = None, *, cfgs: Optional[Dict[str, PretrainedCfg]] = None,
                   default_tag: Optional[str] = None, checkpoint_filter: Optional[CheckpointFilter] = None,
                   test_args: Optional[Dict[str, Any]] = None):
    """Register a model builder under its function name, with its pretrained configs by tag.

    ``checkpoint_filter(state_dict, model)`` converts a foreign checkpoint (the
    official code's, an ImageNet backbone's) into this model's keys; ``create``
    applies it whenever a checkpoint's keys are not the model's own. ``test_args`` are the
    constructor arguments of a tiny version for the tests (64x64 inputs in milliseconds); every
    model registered with them is run by the parametrised model tests.
    """

    def wrap(builder):
        name = builder.__name__
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        tagged = {tag: _with_shipped_weights(cfg.replace(architecture=name, tag=tag))
                  for tag, cfg in (cfgs or {"": PretrainedCfg()}).items()}
        default = default_tag if default_tag is not None else next(iter(tagged))
        if default not in tagged:
            raise ValueError(f"default tag {default!r} of {name} is not among {list(tagged)}")
        _REGISTRY[name] = _Entry(builder, tagged, default, checkpoint_filter, dict(test_args or {}))
        return builder

    return wrap(fn) if fn is not None else wrap


def split_name(name: str) -> Tuple[str, Optional[str]]:
    """``'arch.tag'`` -> ``('arch', 'tag')``; ``'arch'`` -> ``('arch', None)``."""
    arch, _, tag = name.partition(".")
    return arch, (tag or None)


def _all_names() -> List[str]:
    names = []
    for arch, entry in _REGISTRY.items():
        names.append(arch)
        names.extend(f"{arch}.{tag}" for tag in entry.cfgs if tag)
    return names


def _unknown(name: str) -> KeyError:
    close = difflib.get_close_matches(name, _all_names(), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return KeyError(f"unknown model {name!r}{hint} (zoo.list_models() lists them all)")


def is_model(name: str) -> bool:
    arch, tag = split_name(name)
    return arch in _REGISTRY and (tag is None or tag in _REGISTRY[arch].cfgs)


def get_builder(name: str) -> Callable[..., nn.Module]:
    arch, _ = split_name(name)
    if arch not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[arch].builder


def get_test_args(name: str) -> Dict[str, Any]:
    """The constructor arguments of the architecture's tiny test version (empty when it registered none)."""
    arch, _ = split_name(name)
    if arch not in _REGISTRY:
        raise _unknown(name)
    return dict(_REGISTRY[arch].test_args)


def get_checkpoint_filter(name: str) -> Optional[CheckpointFilter]:
    arch, _ = split_name(name)
    if arch not in _REGISTRY:
        raise _unknown(name)
    return _REGISTRY[arch].checkpoint_filter


def get_pretrained_cfg(name: str) -> PretrainedCfg:
    """The config of ``arch.tag`` (or of the architecture's default tag)."""
    arch, tag = split_name(name)
    if arch not in _REGISTRY:
        raise _unknown(name)
    entry = _REGISTRY[arch]
    tag = entry.default_tag if tag is None else tag
    if tag not in entry.cfgs:
        raise KeyError(f"{arch} has no tag {tag!r}; its tags are {sorted(t for t in entry.cfgs if t)}")
    return entry.cfgs[tag]


def list_models(pattern: str = "*", pretrained: bool = False) -> List[str]:
    """Registered names matching a glob pattern; with ``pretrained=True`` only ``arch.tag`` names with weights."""
    if pretrained:
        names = [cfg.name for entry in _REGISTRY.values() for cfg in entry.cfgs.values() if cfg.has_weights]
    else:
        names = list(_REGISTRY)
    return sorted(n for n in names if fnmatch.fnmatch(n, pattern))


def list_tags(arch: str) -> List[str]:
    """The tags of an architecture (T x D settings, weight sets), its default first: ``arch.tag`` names them.
    Empty for an architecture with a single untagged config."""
    name, _ = split_name(arch)
    if name not in _REGISTRY:
        raise _unknown(arch)
    entry = _REGISTRY[name]
    tags = sorted(t for t in entry.cfgs if t and t != entry.default_tag)
    return [entry.default_tag] + tags if entry.default_tag else tags


def list_pretrained(pattern: str = "*") -> List[str]:
    return list_models(pattern, pretrained=True)


def _paper_figures(paper: Dict[str, Any]) -> str:
    if not paper:
        return "not in the paper"
    metric = next((f"{paper[k]} {k}" if k == "mIoU" else f"{k} {paper[k]}" for k in ("mIoU", "PQ") if k in paper), "")
    energy = f", {paper['energy_mj']} mJ" if "energy_mj" in paper else ""
    return metric + energy


def model_zoo_table() -> str:
    """The README's model-zoo table (Markdown), one row per segmentation architecture at its default tag,
    built from the configs (a test keeps the README equal to it)."""
    header = ["model", "dataset (classes)", "T x D", "params", "GMACs per step", "weights", "val mIoU (ours)",
              "mJ per image (ours)", "paper"]
    rows = []
    for arch, entry in sorted(_REGISTRY.items()):
        cfg = entry.cfgs[entry.default_tag]
        if cfg.task == "backbone":
            continue
        others = list_tags(arch)[1:]
        model = f"`{arch}`" + (f" (also {', '.join('.' + t for t in others)})" if others else "")
        if cfg.shipped_file:
            weights = "shipped (`pretrained=True`, offline)"
        elif cfg.hub_id:
            weights = f"Hub: `{cfg.hub_id}`"
        else:
            weights = "none yet"
        miou = cfg.metrics.get("val", {}).get("mIoU")
        rows.append([model, f"{cfg.dataset} ({cfg.num_classes})", f"{cfg.T}x{cfg.D}", f"{cfg.params:,}",
                     "" if cfg.macs is None else f"{cfg.macs:g}", weights, "" if miou is None else f"{miou:.1f}",
                     "" if cfg.energy_mj is None else f"{cfg.energy_mj:#.3g}", _paper_figures(cfg.paper)])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)
