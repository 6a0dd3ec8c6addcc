"""One entry point that turns a data-set argument (a name or a path) into an :class:`ImageDataset`."""

from __future__ import annotations

import os
import tarfile
import zlib
from pathlib import Path

from kernelscope.data.dataset import ImageDataset
from kernelscope.data.download import ProgressCallback
from kernelscope.data.folders import load_image_folder
from kernelscope.data.npz import load_npz
from kernelscope.data.official import (
    CIFAR_ARCHIVE,
    CIFAR_FOLDER,
    OFFICIAL_DATASETS,
    SPLITS,
    detect_official,
    load_cifar10_archive,
    load_official,
    load_official_folder,
)
from kernelscope.errors import DataError

ALIASES: dict[str, str] = {
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
    "mnist": "mnist",
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
}
"""Accepted spellings (lower case) of the official data-set names."""

# Sub-folders / tars that a folder of splits may hold (``data/test/<class>/...`` or ``data/test.tar``).
_SPLIT_FOLDERS = frozenset({*SPLITS, "val", "valid", "validation"})


def load_dataset(
    spec: str,
    *,
    split: str = "test",
    data_dir: Path | str | None = None,
    download: bool = True,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    on_progress: ProgressCallback | None = None,
    resize: int | None = None,
    crop: int | None = None,
    class_index: Path | str | None = None,
) -> ImageDataset:
    """Load the data set ``spec`` names: an official name (see OFFICIAL_DATASETS) or a path.

    A path may be an image folder (or a folder of ``test``/``train`` image folders or tars), a folder of
    official files (``cifar-10-batches-py``, idx files), a ``.npz``, a ``.tar`` image folder, or the
    official ``cifar-10-python.tar.gz``. ``split`` picks the official split or the split sub-folder;
    ``data_dir``, ``download`` and ``on_progress`` apply to official names, ``size`` and ``channels`` to
    image folders only, and so do ``resize`` / ``crop`` (the standard evaluation transform, see
    :class:`~kernelscope.data.folders.Geometry`) and ``class_index`` (folder names -> the model's output
    indices); given for other data they are a one-line :class:`DataError`.
    """
    folder = {"size": size, "channels": channels, "resize": resize, "crop": crop, "class_index": class_index}
    name = resolve_name(spec)
    if name is not None:
        _no_folder_options(spec, folder)
        return load_official(name, split=split, data_dir=data_dir, download=download, on_progress=on_progress)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"no such data set or file: {spec} (known names: {', '.join(OFFICIAL_DATASETS)})")
    if path.is_dir():
        return _load_directory(path, split=split, folder=folder)
    return _load_file(path, split=split, folder=folder)


def _no_folder_options(spec: object, folder: dict) -> None:
    """``--resize`` / ``--crop`` / ``--classes`` on data that is not an image folder: say so in one line."""
    given = [f"--{k}" if k != "class_index" else "--classes" for k in ("resize", "crop", "class_index") if folder[k]]
    if given:
        raise DataError(f"{' and '.join(given)} apply to image folders (or tars of them), not to {spec}")


def resolve_name(spec: str) -> str | None:
    """The official name ``spec`` spells, or ``None`` when it is a path (has a separator) or unknown."""
    if os.sep in spec or "/" in spec or (os.altsep and os.altsep in spec):
        return None
    return ALIASES.get(spec.strip().lower())


def _load_directory(path: Path, *, split: str, folder: dict) -> ImageDataset:
    official = detect_official(path)
    if official is not None:
        _no_folder_options(path, folder)
        return load_official_folder(official, path, split=split)
    child = _split_child(path, split)
    return load_image_folder(child if child is not None else path, **folder)


def _split_child(path: Path, split: str) -> Path | None:
    """``path/<split>.tar`` or ``path/<split>/`` when ``path`` is a folder of splits, not of classes."""
    tar = path / f"{split}.tar"
    if tar.is_file():
        return tar
    subdirs = {child.name.lower() for child in path.iterdir() if child.is_dir() and not child.name.startswith(".")}
    if (path / split).is_dir() and subdirs <= _SPLIT_FOLDERS:
        return path / split
    tars = {child.name.lower() for child in path.iterdir() if child.is_file() and child.suffix.lower() == ".tar"}
    if not subdirs and tars:
        raise DataError(
            f"{path} has no {split}.tar (it holds {', '.join(sorted(tars))}); pick another split or"
            " pass the tar file itself"
        )
    return None


def _load_file(path: Path, *, split: str, folder: dict) -> ImageDataset:
    lower = path.name.lower()
    if lower.endswith(".npz"):
        _no_folder_options(path, folder)
        return load_npz(path)
    if lower == CIFAR_ARCHIVE or (lower.endswith((".tar.gz", ".tgz")) and _is_cifar_archive(path)):
        _no_folder_options(path, folder)
        return load_cifar10_archive(path, split=split)
    if lower.endswith((".tar", ".tar.gz", ".tgz")):
        return load_image_folder(path, **folder)
    raise DataError(
        f"don't know how to read {path}: use a .npz, a .tar or folder of class folders, or one of"
        f" {', '.join(OFFICIAL_DATASETS)}"
    )


def _is_cifar_archive(path: Path) -> bool:
    """Whether a renamed ``.tar.gz`` is the official CIFAR-10 one (its first member is the batch folder)."""
    try:
        with tarfile.open(path, "r:*") as tar:
            first = tar.next()
    except (tarfile.TarError, OSError, EOFError, zlib.error):
        return False  # Let the image-folder reader report the damage.
    return first is not None and first.name.removeprefix("./").split("/", 1)[0] == CIFAR_FOLDER
