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


def _default_file_mode() -> int:
    """The mode ``open()`` would give a new file (0o666 less the umask).

    ``tempfile.mkstemp`` creates files readable by their owner only; a report or a model written through a
    temporary file should end up with the permissions any other new file would get, so others can read it.
    """
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file in the same folder, then rename it over ``path``."""
    target = Path(path)
    handle, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent or ".")
    try:
        os.chmod(temp, _default_file_mode())
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


def save_model_atomic(proto, path: str | os.PathLike[str], *, external_data: bool = False) -> list[Path]:
    """Write an ONNX model atomically; returns the files written.

    Inline models are serialized and renamed into place. With ``external_data`` the tensors go to
    ``<name>.data`` beside the model: both files are first written into a temporary folder in the target
    folder, then renamed into place (data first), so neither a failure nor Ctrl-C leaves a partial file.
    """
    import shutil

    import onnx

    target = Path(path)
    if not external_data:
        atomic_write_bytes(target, proto.SerializeToString())
        return [target]
    data_name = f"{target.name}.data"
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent or "."))
    try:
        copy = onnx.ModelProto()
        copy.CopyFrom(proto)  # onnx.save moves tensors to external data in place: keep the caller's intact
        onnx.save(
            copy,
            str(staging / target.name),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_name,
            size_threshold=1024,
        )
        written = []
        for name in (data_name, target.name):
            if (staging / name).exists():
                os.chmod(staging / name, _default_file_mode())
                os.replace(staging / name, target.parent / name)
                written.append(target.parent / name)
        return written[::-1]
    finally:
        shutil.rmtree(staging, ignore_errors=True)
