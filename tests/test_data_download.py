"""download_file / md5_of: local HTTP server and file:// URLs only, never the internet."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kernelscope.data.download import DownloadError, download_file, md5_of
from kernelscope.errors import DataError

from local_server import closed_port_url, serve

PAYLOAD = bytes(range(256)) * 1000  # 256 kB: several read chunks, so progress is reported more than once
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


@pytest.fixture
def www(tmp_path: Path) -> Path:
    root = tmp_path / "www"
    root.mkdir()
    (root / "payload.bin").write_bytes(PAYLOAD)
    return root


def test_md5_of_matches_hashlib(www: Path) -> None:
    assert md5_of(www / "payload.bin") == PAYLOAD_MD5


def test_http_download_reports_progress_and_lands_atomically(www: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    dest = tmp_path / "out" / "nested" / "payload.bin"
    with serve(www) as base:
        result = download_file(base + "payload.bin", dest, PAYLOAD_MD5, on_progress=lambda d, t: calls.append((d, t)))
    assert result == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["payload.bin"]  # no temporary file left behind
    assert calls[0] == (0, len(PAYLOAD))
    assert calls[-1] == (len(PAYLOAD), len(PAYLOAD))
    assert len(calls) > 2
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_file_url_download(www: Path, tmp_path: Path) -> None:
    calls: list[tuple[int, int | None]] = []
    dest = tmp_path / "payload.bin"
    download_file((www / "payload.bin").as_uri(), dest, PAYLOAD_MD5, on_progress=lambda d, t: calls.append((d, t)))
    assert dest.read_bytes() == PAYLOAD
    assert calls[-1][0] == len(PAYLOAD)


def test_md5_mismatch_leaves_no_file(www: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with serve(www) as base, pytest.raises(DataError, match="md5") as info:
        download_file(base + "payload.bin", out / "payload.bin", "0" * 32)
    assert not isinstance(info.value, DownloadError)
    assert "\n" not in str(info.value)
    assert leftovers(out) == []


def test_md5_mismatch_over_file_url_leaves_no_file(www: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="md5"):
        download_file((www / "payload.bin").as_uri(), tmp_path / "x.bin", "f" * 32)
    assert not (tmp_path / "x.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["www"]


def test_http_404_is_a_download_error(www: Path, tmp_path: Path) -> None:
    with serve(www) as base, pytest.raises(DownloadError, match="404"):
        download_file(base + "missing.bin", tmp_path / "out" / "missing.bin", PAYLOAD_MD5)
    assert leftovers(tmp_path / "out") == []


def test_refused_connection_is_a_download_error(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as info:
        download_file(closed_port_url() + "x.bin", tmp_path / "x.bin", PAYLOAD_MD5, timeout=5)
    assert isinstance(info.value, DataError)
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path) == []


def test_missing_file_url_and_bad_scheme_are_download_errors(tmp_path: Path) -> None:
    with pytest.raises(DownloadError):
        download_file((tmp_path / "nope.bin").as_uri(), tmp_path / "x.bin", PAYLOAD_MD5)
    with pytest.raises(DownloadError):
        download_file("gopher2://example/x", tmp_path / "x.bin", PAYLOAD_MD5)
    assert leftovers(tmp_path) == []


def test_unwritable_destination_is_a_data_error(www: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match="cannot write"):
        download_file((www / "payload.bin").as_uri(), blocker / "payload.bin", PAYLOAD_MD5)
