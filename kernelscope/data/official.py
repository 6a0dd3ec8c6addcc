"""The official benchmark data sets, found on disk by name or downloaded on demand.

Supported: CIFAR-10 (the official python release, as the ``.tar.gz`` or its extracted folder), MNIST and
Fashion-MNIST (idx files, gzipped or not). Files are looked for in ``data_dir``, then ``$KERNELSCOPE_DATA``,
then the per-user cache, each both directly and in a sub-folder named after the data set.

The CIFAR-10 batches are pickles. Unpickling runs arbitrary code in general, so they are read with an
unpickler that only resolves the few globals a numpy array needs; anything else is refused, not run.
"""

from __future__ import annotations

import codecs
import gzip
import importlib
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from kernelscope.data.dataset import ImageDataset
from kernelscope.data.download import ProgressCallback, download_file, md5_of
from kernelscope.errors import DataError

OFFICIAL_DATASETS: tuple[str, ...] = ("cifar10", "mnist", "fashion-mnist")
"""Names accepted by :func:`load_official`."""

SPLITS: tuple[str, ...] = ("test", "train")

MIRRORS: dict[str, tuple[str, ...]] = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}
"""Base URLs tried in order for each data set; a file's URL is the base plus its file name.

Module-level so that tests (and users behind a local mirror) can point downloads elsewhere.
"""

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
MNIST_CLASSES: tuple[str, ...] = tuple(str(digit) for digit in range(10))
FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip

CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_BATCHES: dict[str, tuple[str, ...]] = {
    "test": ("test_batch",),
    "train": tuple(f"data_batch_{index}" for index in range(1, 6)),
}
_CIFAR_META = "batches.meta"
_CIFAR_SIDE = 32

# (images, labels) idx file names per split, without the ".gz".
IDX_FILES: dict[str, tuple[str, str]] = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}
IDX_MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}
_IDX_IMAGES_MAGIC = 2051
_IDX_LABELS_MAGIC = 2049

# Sub-folders of a data root searched for each data set; the torchvision layouts are included so that
# files torchvision already downloaded are reused.
_SUBFOLDERS: dict[str, tuple[str, ...]] = {
    "cifar10": ("cifar10", "cifar-10"),
    "mnist": ("mnist", "MNIST", "MNIST/raw"),
    "fashion-mnist": ("fashion-mnist", "fashion_mnist", "FashionMNIST", "FashionMNIST/raw"),
}

_NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------- public API


def load_official(
    name: str,
    *,
    split: str = "test",
    data_dir: Path | str | None = None,
    download: bool = True,
    on_progress: ProgressCallback | None = None,
) -> ImageDataset:
    """Load the ``split`` ("test" or "train") of the official data set ``name`` (see OFFICIAL_DATASETS).

    Files are searched in ``data_dir``, ``$KERNELSCOPE_DATA`` and the user cache, each directly and in a
    sub-folder named after the data set. Missing files are downloaded (md5-checked, reporting to
    ``on_progress`` once per file) into the first writable of those roots' ``<name>/`` folders when
    ``download`` is true; otherwise, or when the download fails, a :class:`DataError` says which files to
    fetch from where and where to put them.
    """
    name = _check_name(name)
    split = _check_split(split)
    roots = search_roots(data_dir)
    found = _find(name, split, roots)
    if found is None:
        target = download_folder(name, data_dir)
        missing = _needed_files(name, split)
        if not download:
            raise DataError(
                f"{name} {split} split: cannot find {_describe(name, missing)} in {_join(roots)}; download"
                f" {_plural(missing)} from {_url(name, missing)} and put {_plural(missing)} in {target}"
                " (downloading is turned off)"
            )
        _fetch(name, split, missing, target, on_progress)
        found = _find(name, split, [target])
        if found is None:  # pragma: no cover - only if the folder changes under us
            raise DataError(f"{name} {split} split: downloaded files vanished from {target}; try again")
    return found()


def load_official_folder(name: str, folder: Path | str, *, split: str = "test") -> ImageDataset:
    """Load ``split`` of ``name`` from exactly ``folder`` (no other roots, no download)."""
    name = _check_name(name)
    split = _check_split(split)
    folder = Path(folder)
    found = _find(name, split, [folder])
    if found is None:
        raise DataError(
            f"{folder} holds no {split} split of {name}: expected"
            f" {_describe(name, _needed_files(name, split))}; add them or pick the other split"
        )
    return found()


def load_cifar10_archive(path: Path | str, *, split: str = "test") -> ImageDataset:
    """Load ``split`` of CIFAR-10 straight from the official ``cifar-10-python.tar.gz`` (no extraction)."""
    return _read_cifar_archive(Path(path), _check_split(split))


def detect_official(folder: Path | str) -> str | None:
    """The official data set whose files ``folder`` holds directly, or ``None`` if it holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    cifar_markers = (
        CIFAR_FOLDER,
        CIFAR_ARCHIVE,
        _CIFAR_META,
        *_CIFAR_BATCHES["test"],
        *_CIFAR_BATCHES["train"],
    )
    if any((folder / marker).exists() for marker in cifar_markers):
        return "cifar10"
    idx_names = [base for pair in IDX_FILES.values() for base in pair]
    if any((folder / base).is_file() or (folder / f"{base}.gz").is_file() for base in idx_names):
        return _mnist_flavour(folder)
    return None


def search_roots(data_dir: Path | str | None = None) -> list[Path]:
    """The data roots in look-up order: ``data_dir``, ``$KERNELSCOPE_DATA``, the user cache (no repeats)."""
    roots: list[Path] = []
    candidates = [data_dir, os.environ.get("KERNELSCOPE_DATA") or None, cache_dir()]
    for candidate in candidates:
        if candidate is None:
            continue
        path = Path(candidate).expanduser()
        if path not in roots:
            roots.append(path)
    return roots


def cache_dir() -> Path:
    """The per-user cache folder: ``$XDG_CACHE_HOME/kernelscope`` or ``~/.cache/kernelscope``."""
    base = os.environ.get("XDG_CACHE_HOME") or None
    return (Path(base) if base else Path.home() / ".cache") / "kernelscope"


def download_folder(name: str, data_dir: Path | str | None = None) -> Path:
    """Where a download of ``name`` goes: the first writable ``<root>/<name>/`` of data_dir, env, cache.

    A root that already is the data set's folder (``.../mnist``) is used as is, not nested again.
    When none is writable the first candidate is returned, so error messages can still name a folder.
    """
    candidates = [_dataset_folder(root, name) for root in search_roots(data_dir)]
    for candidate in candidates:
        if _writable(candidate):
            return candidate
    return candidates[0]


def restricted_loads(data: bytes, *, what: str = "pickle") -> Any:
    """Unpickle ``data`` allowing only the globals numpy arrays need; ``what`` names it in errors."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError as exc:
        raise DataError(f"{what}: {exc}") from exc
    except Exception as exc:
        raise DataError(f"{what} is not a valid CIFAR-10 batch ({type(exc).__name__}: {exc}); re-download it") from exc


# ------------------------------------------------------------------------------------------------ lookup


def _check_name(name: str) -> str:
    key = name.strip().lower()
    if key not in OFFICIAL_DATASETS:
        raise DataError(f"unknown data set {name!r}; known names: {', '.join(OFFICIAL_DATASETS)}")
    return key


def _check_split(split: str) -> str:
    key = split.strip().lower()
    if key not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of: {', '.join(SPLITS)}")
    return key


def _dataset_folder(root: Path, name: str) -> Path:
    if root.name in _SUBFOLDERS[name] or root.name.lower() == name:
        return root
    return root / name


def _candidate_dirs(name: str, roots: Sequence[Path]) -> list[Path]:
    """Existing folders that may hold ``name``'s files, in look-up order."""
    dirs: list[Path] = []
    for root in roots:
        for folder in (root, *(root / sub for sub in _SUBFOLDERS[name])):
            if folder.is_dir() and folder not in dirs:
                dirs.append(folder)
    return dirs


def _find(name: str, split: str, roots: Sequence[Path]) -> Callable[[], ImageDataset] | None:
    """A loader for the first complete copy of ``split`` under ``roots``, or ``None`` if there is none."""
    dirs = _candidate_dirs(name, roots)
    if name == "cifar10":
        return _find_cifar(split, dirs)
    paths = [_find_idx(base, dirs) for base in IDX_FILES[split]]
    if paths[0] is None or paths[1] is None:
        return None
    images_path, labels_path = paths
    return lambda: _read_idx_dataset(name, images_path, labels_path)


def _find_cifar(split: str, dirs: Sequence[Path]) -> Callable[[], ImageDataset] | None:
    batches = _CIFAR_BATCHES[split]
    for folder in dirs:
        # The extracted folder is preferred: reading it needs no decompression.
        for batch_dir in (folder / CIFAR_FOLDER, folder):
            if all((batch_dir / batch).is_file() for batch in batches):
                return lambda batch_dir=batch_dir: _read_cifar_folder(batch_dir, split)
        archive = folder / CIFAR_ARCHIVE
        if archive.is_file():
            return lambda archive=archive: _read_cifar_archive(archive, split)
    return None


def _find_idx(base: str, dirs: Sequence[Path]) -> Path | None:
    for folder in dirs:
        for candidate in (folder / f"{base}.gz", folder / base):
            if candidate.is_file():
                return candidate
    return None


def _needed_files(name: str, split: str) -> list[str]:
    """The file names a download of ``split`` fetches."""
    if name == "cifar10":
        return [CIFAR_ARCHIVE]
    return [f"{base}.gz" for base in IDX_FILES[split]]


def _describe(name: str, files: Sequence[str]) -> str:
    if name == "cifar10":
        return f"{CIFAR_ARCHIVE} or its extracted {CIFAR_FOLDER}/ folder"
    return ", ".join(f"{file.removesuffix('.gz')}[.gz]" for file in files)


def _mnist_flavour(folder: Path) -> str:
    """Tell MNIST from Fashion-MNIST (same file names): by the md5 of a small labels file, else the name."""
    for base in (IDX_FILES["test"][1], IDX_FILES["train"][1]):
        labels = folder / f"{base}.gz"
        if labels.is_file():
            digest = md5_of(labels)
            for name, table in IDX_MD5.items():
                if table[labels.name] == digest:
                    return name
    return "fashion-mnist" if "fashion" in folder.name.lower() or "fashion" in folder.parent.name.lower() else "mnist"


def _writable(folder: Path) -> bool:
    """Whether ``folder`` could be created and written, judged without creating anything."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    return existing.is_dir() and os.access(existing, os.W_OK | os.X_OK)


def _join(paths: Sequence[Path]) -> str:
    return ", ".join(str(path) for path in paths)


def _url(name: str, files: Sequence[str]) -> str:
    """Where to get ``files`` by hand: the file's own URL when there is one, else the mirror folder."""
    base = MIRRORS[name][0]
    return base + files[0] if len(files) == 1 else base


def _plural(files: Sequence[str]) -> str:
    return "it" if len(files) == 1 else "them"


# --------------------------------------------------------------------------------------------- download


def _fetch(name: str, split: str, files: Sequence[str], target: Path, on_progress: ProgressCallback | None) -> None:
    """Download ``files`` of ``name`` into ``target``, trying each mirror in turn."""
    md5s = {CIFAR_ARCHIVE: CIFAR_ARCHIVE_MD5, **IDX_MD5.get(name, {})}
    mirrors = MIRRORS[name]
    for file in files:
        if (target / file).is_file():
            continue
        failure: DataError | None = None
        for base in mirrors:
            try:
                download_file(base + file, target / file, md5s[file], on_progress=on_progress)
                failure = None
                break
            except DataError as exc:
                failure = exc
        if failure is not None:
            raise DataError(
                f"{name} {split} split: could not download {', '.join(files)} ({failure}); download"
                f" {_plural(files)} from {_url(name, files)} and put {_plural(files)} in {target}"
            ) from failure


# ------------------------------------------------------------------------------------------------ CIFAR-10


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what a CIFAR-10 batch (a dict of lists, bytes and one uint8 array) refers to."""

    # (module, name) as written in the pickle -> (numpy internal sub-module or None, attribute).
    _ALLOWED: ClassVar[dict[tuple[str, str], tuple[str | None, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
        # Written by numpy >= 1.16 for pickle protocol 5.
        ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
        ("numpy", "ndarray"): (None, "ndarray"),
        ("numpy", "dtype"): (None, "dtype"),
        # Python 3 writes bytes as _codecs.encode(str, "latin1") at protocol 2 (re-pickled batches).
        ("_codecs", "encode"): ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        target = self._ALLOWED.get((module, name))
        if target is None:
            raise DataError(
                f"refused to load {module}.{name} (only numpy arrays are allowed); the file is not a"
                " genuine CIFAR-10 batch, re-download it"
            )
        submodule, attribute = target
        if submodule is None:
            return getattr(np, attribute)
        if submodule == "_codecs":
            return codecs.encode
        return getattr(_numpy_internal(submodule), attribute)


def _numpy_internal(submodule: str) -> Any:
    """numpy's private module, under its numpy 2 name or its numpy 1 one (without the deprecation shim)."""
    for package in ("numpy._core", "numpy.core"):
        try:
            return importlib.import_module(f"{package}.{submodule}")
        except ImportError:
            continue
    raise DataError(
        f"this numpy has no {submodule} module to rebuild CIFAR-10 arrays; upgrade numpy"
    )  # pragma: no cover


def _read_cifar_folder(folder: Path, split: str) -> ImageDataset:
    batches = []
    for batch in _CIFAR_BATCHES[split]:
        path = folder / batch
        batches.append(_parse_batch(restricted_loads(_read_bytes(path), what=str(path)), str(path)))
    meta = folder / _CIFAR_META
    names = _parse_meta(restricted_loads(_read_bytes(meta), what=str(meta)), str(meta)) if meta.is_file() else None
    return _cifar_dataset(batches, names, folder)


def _read_cifar_archive(archive: Path, split: str) -> ImageDataset:
    wanted = {f"{CIFAR_FOLDER}/{batch}": batch for batch in (*_CIFAR_BATCHES[split], _CIFAR_META)}
    contents: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            # One pass in archive order: a gzip stream cannot seek back cheaply.
            for member in tar:
                key = wanted.get(member.name.removeprefix("./"))
                if key is not None and member.isfile():
                    handle = tar.extractfile(member)
                    if handle is not None:
                        contents[key] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read {archive} ({exc}); the download is damaged, delete it and download it again"
        ) from exc
    missing = [batch for batch in _CIFAR_BATCHES[split] if batch not in contents]
    if missing:
        raise DataError(
            f"{archive} lacks {', '.join(f'{CIFAR_FOLDER}/{m}' for m in missing)}; it is not the"
            f" official {CIFAR_ARCHIVE}, download it again"
        )
    batches = [
        _parse_batch(restricted_loads(contents[batch], what=f"{archive}:{batch}"), f"{archive}:{batch}")
        for batch in _CIFAR_BATCHES[split]
    ]
    meta = contents.get(_CIFAR_META)
    names = _parse_meta(restricted_loads(meta, what=f"{archive}:{_CIFAR_META}"), str(archive)) if meta else None
    return _cifar_dataset(batches, names, archive)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}; check the file's permissions") from exc


def _field(batch: dict, key: str) -> Any:
    # Batches written by Python 2 have bytes keys; re-pickled ones may have str keys.
    return batch[key.encode()] if key.encode() in batch else batch.get(key)


def _parse_batch(batch: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(images (N,32,32,3) uint8, labels (N,) int64) from one unpickled batch dict."""
    side = _CIFAR_SIDE
    if not isinstance(batch, dict):
        raise DataError(f"{where} is not a CIFAR-10 batch (holds {type(batch).__name__}, not a dict); re-download it")
    data, labels = _field(batch, "data"), _field(batch, "labels")
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3 * side * side:
        raise DataError(f"{where} has no 'data' array of shape (N, {3 * side * side}); re-download it")
    try:
        label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
        pixels = np.asarray(data, dtype=np.uint8)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where} has unreadable 'data' or 'labels' ({exc}); re-download it") from exc
    if label_array.shape[0] != data.shape[0]:
        raise DataError(f"{where} has {data.shape[0]} images but {label_array.shape[0]} labels; re-download it")
    _check_labels(label_array, where)
    # Stored as N rows of 1024 red, 1024 green, 1024 blue values (row-major): CHW -> HWC.
    images = pixels.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
    return images, label_array


def _parse_meta(meta: Any, where: str) -> tuple[str, ...] | None:
    names = _field(meta, "label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != _NUM_CLASSES:
        return None  # Unusual but harmless: fall back to the official names.
    return tuple(n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names)


def _cifar_dataset(
    batches: list[tuple[np.ndarray, np.ndarray]], names: tuple[str, ...] | None, source: Path
) -> ImageDataset:
    images = np.ascontiguousarray(np.concatenate([images for images, _ in batches]))
    labels = np.concatenate([labels for _, labels in batches])
    return ImageDataset(
        name="cifar10",
        images=images,
        labels=labels,
        source=str(source),
        num_classes=_NUM_CLASSES,
        class_names=names or CIFAR10_CLASSES,
    )


def _check_labels(labels: np.ndarray, where: str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= _NUM_CLASSES):
        raise DataError(
            f"{where} has labels outside 0..{_NUM_CLASSES - 1} (min {labels.min()}, max {labels.max()}); re-download it"
        )


# ------------------------------------------------------------------------------------------ MNIST (idx)


def read_idx(path: Path | str, magic: int) -> np.ndarray:
    """Parse an idx file (gzipped or not) whose magic number must be ``magic``; a uint8 array."""
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
        raise DataError(
            f"{path} is not an idx file of the expected kind (magic number {found}, expected {magic}); re-download it"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated (its idx header is incomplete); re-download it")
    shape = tuple(int(size) for size in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != expected:
        raise DataError(
            f"{path} holds {len(raw) - header} data bytes but its header says {shape} ({expected});"
            " the file is truncated or damaged, re-download it"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()


def _read_maybe_gzip(path: Path) -> bytes:
    raw = _read_bytes(path)
    if raw[:2] != b"\x1f\x8b":  # gzip magic: decide by content, not by the (maybe renamed) suffix
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot decompress {path} ({exc}); the file is damaged, re-download it") from exc


def _read_idx_dataset(name: str, images_path: Path, labels_path: Path) -> ImageDataset:
    images = read_idx(images_path, _IDX_IMAGES_MAGIC)
    labels = read_idx(labels_path, _IDX_LABELS_MAGIC).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels;"
            " use files of the same split and release"
        )
    _check_labels(labels, str(labels_path))
    return ImageDataset(
        name=name,
        images=images[..., np.newaxis],
        labels=labels,
        source=str(images_path.parent),
        num_classes=_NUM_CLASSES,
        class_names=FASHION_MNIST_CLASSES if name == "fashion-mnist" else MNIST_CLASSES,
    )
