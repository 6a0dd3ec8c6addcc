"""Writing output files safely: never partially, never over the input, never over a file without asking."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from kernelscope.errors import UsageError


def check_output_path(path: str | os.PathLike[str], *, force: bool, inputs: tuple[Path, ...] = ()) -> Path:
    """Validate an output path before any work is done, so a long run does not fail at the very end."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"output {target} is a folder; give a file path")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise UsageError(f"the folder of output {target} does not exist; create {parent} first")
    for source in inputs:
        if source.exists() and target.exists() and os.path.samefile(source, target):
            raise UsageError(f"output {target} is the input file; kernelscope never overwrites its input")
    if target.exists() and not force:
        raise UsageError(f"output {target} already exists; pass --force to overwrite it")
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, then rename it over ``path``."""
    target = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp, target)
    except BaseException:  # includes KeyboardInterrupt: never leave the temporary file behind
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """UTF-8 text version of :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode("utf-8"))
