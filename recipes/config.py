"""Recipes: nested dicts in ``recipes/configs/<name>.py`` (a ``RECIPE`` dict each), with ``--set`` overrides."""
from __future__ import annotations

import ast
import copy
import importlib
import importlib.util
import pkgutil
from pathlib import Path
from typing import Any, Dict, Iterable, List

__all__ = ["list_recipes", "load_recipe", "apply_overrides", "get"]

_CONFIG_PACKAGE = "recipes.configs"


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
    else:
        raise KeyError(f"unknown recipe {name_or_path!r}; known recipes: {', '.join(list_recipes())} "
                       "(or pass a .py file that defines RECIPE)")
    if not isinstance(getattr(module, "RECIPE", None), dict):
        raise ValueError(f"{module.__name__} defines no RECIPE dict")
    recipe = copy.deepcopy(module.RECIPE)
    recipe.setdefault("name", path.stem if path.suffix == ".py" else name_or_path)
    return recipe


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as a path


def apply_overrides(recipe: Dict[str, Any], overrides: Iterable[str]) -> Dict[str, Any]:
    """``["optim.lr=1e-4", "data.root=/data/ade"]`` -> a new recipe; unknown keys are an error (typos)."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        dotted, text = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = recipe
        for key in keys[:-1]:
            if not isinstance(node.get(key), dict):
                raise KeyError(f"--set {dotted}: {key!r} is not a section of the recipe")
            node = node[key]
        if keys[-1] not in node and keys[-2:-1] != ["kwargs"]:
            raise KeyError(f"--set {dotted}: no such key; the section has {sorted(node)}")
        node[keys[-1]] = _parse_value(text.strip())
    return recipe


def get(recipe: Dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = recipe
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node
