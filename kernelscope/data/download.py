"""Fetching data files over the network with an integrity check, using only the standard library.

Downloads stream into a temporary file next to the destination and are renamed into place only after
the md5 matches, so an interrupted or corrupted download never leaves a file that looks complete.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from kernelscope.errors import DataError

ProgressCallback = Callable[[int, int | None], None]
"""Called as ``on_progress(bytes_done, total_bytes_or_None)`` while a download runs."""

_CHUNK = 1 << 16


class DownloadError(DataError):
    """The network request failed (offline, unreachable host, HTTP error, timeout)."""


def md5_of(path: Path | str, *, chunk_size: int = 1 << 20) -> str:
    """Hex md5 digest of the file at ``path``, read in chunks so large archives need little memory."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def download_file(
    url: str,
    dest: Path,
    md5: str,
    *,
    on_progress: ProgressCallback | None = None,
    timeout: float = 30,
) -> Path:
    """Download ``url`` to ``dest`` and return ``dest`` once its md5 equals ``md5``.

    Raises :class:`DownloadError` when the request fails and :class:`DataError` when the content does
    not match the expected md5 or ``dest``'s folder cannot be written; in both cases nothing is left at
    ``dest`` or in a temporary file.
    """
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    except OSError as exc:
        raise DataError(f"cannot write to {dest.parent}: {exc.strerror or exc}; choose a writable data folder") from exc
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            digest = _stream(url, handle, on_progress=on_progress, timeout=timeout)
        if digest != md5.lower():
            raise DataError(
                f"downloaded {url} but its md5 is {digest}, expected {md5}; the mirror may serve a different"
                " file, try again later or download it by hand"
            )
        os.replace(temp, dest)
    finally:
        # Covers md5 mismatch, network errors and KeyboardInterrupt alike: never leave a partial file.
        temp.unlink(missing_ok=True)
    return dest


def _stream(url: str, out, *, on_progress: ProgressCallback | None, timeout: float) -> str:
    """Copy the body of ``url`` into the open binary file ``out``; return the md5 of what was written."""
    digest = hashlib.md5(usedforsecurity=False)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            total = _content_length(response)
            done = 0
            if on_progress is not None:
                on_progress(0, total)
            for block in iter(lambda: response.read(_CHUNK), b""):
                try:
                    out.write(block)
                except OSError as exc:
                    raise DataError(f"cannot write the download of {url}: {exc.strerror or exc}") from exc
                digest.update(block)
                done += len(block)
                if on_progress is not None:
                    on_progress(done, total)
    except DataError:
        raise
    except urllib.error.HTTPError as exc:
        raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise DownloadError(f"cannot download {url}: {exc.reason}") from exc
    except (OSError, http.client.HTTPException, ValueError) as exc:
        # OSError covers timeouts and connection resets mid-stream; ValueError an unknown URL scheme.
        raise DownloadError(f"cannot download {url}: {exc or type(exc).__name__}") from exc
    return digest.hexdigest()


def _content_length(response) -> int | None:
    """The announced size of the body, or ``None`` when the server does not say (or says nonsense)."""
    value = response.headers.get("Content-Length") if response.headers is not None else None
    try:
        total = int(value) if value is not None else None
    except ValueError:
        return None
    return total if total is not None and total >= 0 else None
