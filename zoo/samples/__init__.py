"""Sample frames that ship with the package (see ``README.md`` here for their source and licence).

    from zoo.samples import sample_frames
    for frame in sample_frames("camvid"):
        frame.image, frame.label          # paths: an RGB JPEG and its class-index PNG (or None)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

__all__ = ["SampleFrame", "sample_frames", "SAMPLES"]

SAMPLES = Path(__file__).resolve().parent
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LABEL_SUFFIX = "_label.png"


@dataclass(frozen=True)
class SampleFrame:
    name: str
    image: Path
    label: Optional[Path]


def sample_frames(dataset: str = "camvid") -> List[SampleFrame]:
    """The bundled frames of ``dataset``, in name order."""
    folder = SAMPLES / dataset
    available = sorted(p.name for p in SAMPLES.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not folder.is_dir():
        raise FileNotFoundError(f"no sample frames for {dataset!r}; the package has samples for: {available}")
    frames = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in _IMAGE_SUFFIXES or path.name.endswith(_LABEL_SUFFIX):
            continue
        label = folder / f"{path.stem}{_LABEL_SUFFIX}"
        frames.append(SampleFrame(path.stem, path, label if label.is_file() else None))
    return frames
