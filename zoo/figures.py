"""Figures written the same way every time: the same figure gives the same bytes, so that the reports kept
under version control change only where their content does (SVG's date stamp dropped, its element ids
salted with a constant instead of a random value)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import matplotlib
from matplotlib.figure import Figure

__all__ = ["save_figure"]


def save_figure(fig: Figure, path: Union[str, Path], dpi: int) -> Path:
    """``fig.savefig(path, dpi=dpi)``, reproducibly; returns ``path``."""
    path = Path(path)
    with matplotlib.rc_context({"svg.hashsalt": "spikezoo"}):
        fig.savefig(path, dpi=dpi, metadata={"Date": None} if path.suffix in (".svg", ".pdf") else None)
    return path
