"""Recipes: nested dicts in ``recipes/configs/<name>.py`` (a ``RECIPE`` dict each), with ``--set`` overrides.

Every recipe is checked by :func:`validate_recipe` before anything is built: each value must have
its key's type and range (``data.batch_size=2.5``, ``optim.lr=abc`` or ``train.checkpoint_interval=0``
are errors, not truncated or deferred), unknown and missing keys are errors, and ints given for
float keys and lists given for tuple keys are converted.
"""
from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import os
import pkgutil
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = ["RecipeError", "error_message", "list_recipes", "load_recipe", "apply_overrides", "validate_recipe",
           "resume_changes", "RESUMABLE_KEYS", "get"]

_CONFIG_PACKAGE = "recipes.configs"


class RecipeError(ValueError):
    """A recipe, or a ``--set`` override, that cannot be used as it is; the message says which key and why."""


def error_message(err: BaseException) -> str:
    """An exception's message for a one-line report (``str(KeyError)`` would quote it)."""
    return err.args[0] if isinstance(err, KeyError) and err.args else str(err)


def list_recipes() -> List[str]:
    from . import configs
    return sorted(m.name for m in pkgutil.iter_modules(configs.__path__) if not m.name.startswith("_"))


def load_recipe(name_or_path: str) -> Dict[str, Any]:
    """A registered recipe by name (``camvid``) or a Python file defining ``RECIPE``."""
    path = Path(name_or_path)
    if path.suffix == ".py" and path.is_file():
        spec = importlib.util.spec_from_file_location(f"_recipe_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    elif name_or_path in list_recipes():
        module = importlib.import_module(f"{_CONFIG_PACKAGE}.{name_or_path}")
    elif path.suffix == ".py":
        raise RecipeError(f"recipe file {path} does not exist")
    else:
        raise RecipeError(f"unknown recipe {name_or_path!r}; known recipes: {', '.join(list_recipes())} "
                          "(or pass a .py file that defines RECIPE)")
    if not isinstance(getattr(module, "RECIPE", None), dict):
        raise RecipeError(f"{name_or_path} defines no RECIPE dict")
    recipe = copy.deepcopy(module.RECIPE)
    recipe.setdefault("name", path.stem if path.suffix == ".py" else name_or_path)
    return recipe


def parse_value(text: str) -> Any:
    """A ``--set`` value: a Python literal, else the bare string (a path, a name)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as a path


def apply_overrides(recipe: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """``["optim.lr=1e-4", "data.root=/data/ade"]`` -> a new recipe; unknown keys are an error (typos)."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise RecipeError(f"--set expects KEY=VALUE, got {item!r}")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = recipe
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                sections = sorted(k for k, v in node.items() if isinstance(v, dict))
                raise RecipeError(f"--set {dotted}: {key!r} is not a section of the recipe; "
                                  f"the sections here are {sections}")
            node = node[key]
        # the per-pixel loss section names only its type; its optional keys may still be set
        if (keys[-1] not in node and not (len(keys) > 1 and keys[-2] in _OPEN_SECTIONS)
                and ".".join(keys) not in _OPTIONAL_KEYS):
            raise RecipeError(f"--set {dotted}: no such key; the section has {sorted(node)}")
        node[keys[-1]] = parse_value(text.strip())
    return recipe


# ------------------------------------------------------------------ where datasets live

DATA_ENV = "SPIKEZOO_DATA"


def data_root() -> Path:
    """The folder that holds the datasets, each in its own sub-folder: ``$SPIKEZOO_DATA``, else ``./data``."""
    return Path(os.environ.get(DATA_ENV) or "data")


def dataset_path(root: str) -> Path:
    """A recipe's ``data.root`` as a folder: a name such as ``camvid`` lies under :func:`data_root`;
    an absolute path, or one starting with ``./`` or ``../``, is taken as it is (relative to the
    current folder)."""
    path = Path(root)
    if path.is_absolute() or root.startswith(("./", "../", ".\\", "..\\")) or root in (".", ".."):
        return path
    return data_root() / path


# ------------------------------------------------------------------ checking a recipe

class _Check:
    """The type and range one recipe key accepts."""

    def __init__(self, kind: str, low: Optional[float] = None, high: Optional[float] = None, *,
                 optional: bool = False, choices: Sequence[str] = (), length: Optional[int] = None,
                 low_open: bool = False, high_open: bool = False):
        self.kind, self.low, self.high, self.optional = kind, low, high, optional
        self.choices, self.length, self.low_open, self.high_open = tuple(choices), length, low_open, high_open

    def describe(self) -> str:
        kinds = {"int": "an int", "float": "a number", "str": "a string", "bool": "True or False",
                 "ints": "a tuple of ints", "floats": "a tuple of numbers", "strs": "a tuple of strings",
                 "dict": "a dict"}
        text = kinds[self.kind]
        if self.length:
            text = f"{text} of length {self.length}"
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        if bounds:
            text += (" with every element " if self.kind in ("ints", "floats") else " ") + " and ".join(bounds)
        if self.choices:
            text += f" among {list(self.choices)}"
        return text + (", or None" if self.optional else "")

    def _number(self, value: Any, kind: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError
        if kind == "int":
            if not isinstance(value, int):
                raise TypeError
        else:
            value = float(value)
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            raise TypeError
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            raise TypeError
        return value

    def __call__(self, value: Any) -> Any:
        """The value in canonical form (floats for number keys, tuples for sequences); TypeError if unfit."""
        if value is None and self.optional:
            return None
        if self.kind in ("int", "float"):
            return self._number(value, self.kind)
        if self.kind == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise TypeError
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise TypeError
            return value
        if self.kind == "dict":
            if not isinstance(value, dict):
                raise TypeError
            return value
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)) or not value:
            raise TypeError
        if self.length is not None and len(value) != self.length:
            raise TypeError
        if self.kind == "strs":
            if not all(isinstance(v, str) for v in value):
                raise TypeError
            return tuple(value)
        return tuple(self._number(v, self.kind[:-1]) for v in value)


_SCHEMA: Dict[str, Dict[str, _Check]] = {
    "model": {"name": _Check("str"), "kwargs": _Check("dict"), "init_checkpoint": _Check("str", optional=True)},
    "data": {"dataset": _Check("str"), "root": _Check("str"), "train_split": _Check("str"),
             "val_split": _Check("str"), "crop_size": _Check("ints", 1, length=2), "scales": _Check("ints", 1),
             "scale_mode": _Check("str", choices=("choice", "range", "long_range")),
             "max_long_side": _Check("int", 1, optional=True), "cat_max_ratio": _Check("float", 0, 1, low_open=True),
             "eval_scale": _Check("ints", 1, length=2, optional=True), "batch_size": _Check("int", 1),
             "num_workers": _Check("int", 0), "val_limit": _Check("int", 1, optional=True)},
    "loss": {"type": _Check("str", choices=("mask_classification", "per_pixel")),
             "no_object_weight": _Check("float", 0), "class_weight": _Check("float", 0),
             "focal_weight": _Check("float", 0), "dice_weight": _Check("float", 0), "compile": _Check("bool"),
             "num_points": _Check("int", 1, optional=True), "semantic_weight": _Check("float", 0),
             "semantic_class_weight": _Check("floats", 0, optional=True)},
    "optim": {"lr": _Check("float", 0, low_open=True), "weight_decay": _Check("float", 0),
              "betas": _Check("floats", 0, 1, length=2, high_open=True), "backbone_lr_mult": _Check("float", 0),
              "grad_clip": _Check("float", 0, optional=True, low_open=True), "warmup_iters": _Check("int", 0),
              "poly_power": _Check("float", 0), "poly_iters": _Check("int", 1, optional=True),
              "no_decay": _Check("strs")},
    "train": {"iters": _Check("int", 1), "eval_interval": _Check("int", 1), "checkpoint_interval": _Check("int", 1),
              "log_interval": _Check("int", 1), "seed": _Check("int", 0), "amp": _Check("bool"),
              "execution": _Check("dict")},
}
# the per-pixel loss has no mask-classification weights
_OPTIONAL_KEYS = {"loss.no_object_weight", "loss.class_weight", "loss.focal_weight", "loss.dice_weight",
                  "loss.compile", "loss.num_points", "loss.semantic_weight", "loss.semantic_class_weight"}
# keys added after runs were saved: a recipe (or a checkpoint's recipe) without them has these values
_LATER_DEFAULTS = {"loss.semantic_weight": 0.0, "loss.semantic_class_weight": None}
# sections holding free-form dicts: model.kwargs (the model's arguments) and train.execution (the
# zoo.ExecutionOptions fields of the training forwards); --set may add keys to them
_OPEN_SECTIONS = ("kwargs", "execution")


def validate_recipe(recipe: Dict[str, Any]) -> Dict[str, Any]:
    """Check every key of ``recipe`` against its type and range; return it with values in canonical form.

    Raises :class:`RecipeError` listing every problem (``data.batch_size: expected an int >= 1, got 2.5``).
    """
    from zoo.execution import as_options
    from zoo.registry import is_model

    from .datasets import DATASET_CLASSES

    recipe = copy.deepcopy(recipe)
    if isinstance(recipe.get("train"), dict):  # recipes written before these keys existed
        recipe["train"].setdefault("execution", {})
    if isinstance(recipe.get("data"), dict):
        recipe["data"].setdefault("scale_mode", "choice")
    if isinstance(recipe.get("loss"), dict) and recipe["loss"].get("type") == "mask_classification":
        for dotted, value in _LATER_DEFAULTS.items():
            recipe["loss"].setdefault(dotted.split(".", 1)[1], value)
    problems: List[str] = []
    for section in sorted(set(recipe) - set(_SCHEMA) - {"name"}):
        problems.append(f"{section}: not a section of a recipe (sections: {sorted(_SCHEMA)})")
    for section, checks in _SCHEMA.items():
        node = recipe.get(section)
        if not isinstance(node, dict):
            problems.append(f"{section}: missing section (a dict with keys {sorted(checks)})")
            continue
        for key in sorted(set(node) - set(checks)):
            problems.append(f"{section}.{key}: no such key; the section has {sorted(checks)}")
        for key, check in checks.items():
            dotted = f"{section}.{key}"
            if key not in node:
                if dotted not in _OPTIONAL_KEYS or node.get("type") != "per_pixel":
                    problems.append(f"{dotted}: missing")
                continue
            try:
                node[key] = check(node[key])
            except TypeError:
                problems.append(f"{dotted}: expected {check.describe()}, got {node[key]!r}")
    if not problems:
        try:
            as_options(recipe["train"]["execution"])
        except (TypeError, ValueError) as err:
            problems.append(f"train.execution: {err}")
        if not is_model(recipe["model"]["name"]):
            problems.append(f"model.name: unknown model {recipe['model']['name']!r} (zoo.list_models() lists them)")
        if recipe["loss"]["type"] == "per_pixel" and recipe["loss"].get("semantic_weight"):
            problems.append("loss.semantic_weight: the per-pixel loss is a semantic loss already; weigh its "
                            "classes with loss.semantic_class_weight")
        if recipe["data"]["dataset"] not in DATASET_CLASSES:
            problems.append(f"data.dataset: unknown dataset {recipe['data']['dataset']!r}; "
                            f"known: {sorted(DATASET_CLASSES)}")
    if problems:
        name = recipe.get("name", "the recipe")
        raise RecipeError(f"{name}: " + "; ".join(problems) if len(problems) == 1 else
                          f"{name} has {len(problems)} problems:\n  " + "\n  ".join(problems))
    return recipe


def _flatten(node: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(node, dict) and not prefix.endswith("kwargs"):
        flat: Dict[str, Any] = {}
        for key, value in node.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    if isinstance(node, dict):
        return {prefix: {k: _canonical(v) for k, v in sorted(node.items())}}
    return {prefix: _canonical(node)}


def _canonical(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    return value


# What ``--resume`` may change: how long the run goes on and how it reports, where the data lies and
# how it is read, whether the mask losses and the network are compiled (the same computation).
# Everything else is the state the checkpoint was trained with (the optimiser's learning rates, the
# schedule, the model, the loss, the precision and the sample order).
RESUMABLE_KEYS = ("name", "train.iters", "train.eval_interval", "train.checkpoint_interval", "train.log_interval",
                  "data.root", "data.num_workers", "data.val_limit", "loss.compile", "train.execution.compile")


def resume_changes(saved: Dict[str, Any], recipe: Dict[str, Any]) -> Tuple[List[str], List[str]]:
    """Keys whose values differ between a checkpoint's recipe and ``recipe``: (allowed, refused) on resume."""
    before, after = _flatten(saved), _flatten(recipe)
    if before.get("loss.type") == "mask_classification":
        before = {**_LATER_DEFAULTS, **before}
    changed = sorted(k for k in set(before) | set(after) if before.get(k, "<absent>") != after.get(k, "<absent>"))
    allowed = [k for k in changed if k in RESUMABLE_KEYS]
    refused = [f"{k}: {before.get(k, '<absent>')!r} in the checkpoint, {after.get(k, '<absent>')!r} now"
               for k in changed if k not in RESUMABLE_KEYS]
    return allowed, refused


def get(recipe: Dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = recipe
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node
