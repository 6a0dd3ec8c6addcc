"""Data sets stored as a NumPy ``.npz`` with an image array ``x`` and a label array ``y``."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from kernelscope.data.dataset import ImageDataset
from kernelscope.errors import DataError

_CHANNEL_COUNTS = (1, 3)
_MAX_PIXEL = 255.0


def load_npz(path: Path | str) -> ImageDataset:
    """Load ``x`` (N,H,W,C), (N,C,H,W) or (N,H,W) and ``y`` (N,) integer or (N,K) one-hot from ``path``.

    uint8 pixels are kept; integer pixels must lie in 0..255; float pixels in [0, 1] are rescaled to
    0..255 and stored as float32 (floats already on 0..255 are kept as float32). ``num_classes`` is K for
    one-hot labels, otherwise ``None``. The file is opened without pickle support, so it cannot run code.
    """
    path = Path(path)
    x, y = _read_arrays(path)
    images = _normalise_images(_to_nhwc(x, path), path)
    labels, num_classes = _normalise_labels(y, path)
    if labels.shape[0] != images.shape[0]:
        raise DataError(f"{path}: x has {images.shape[0]} images but y has {labels.shape[0]} labels; make them match")
    if images.shape[0] == 0:
        raise DataError(f"{path} holds no examples (x and y are empty); export at least one image")
    return ImageDataset(
        name=path.stem,
        images=images,
        labels=labels,
        source=str(path),
        num_classes=num_classes,
        class_names=None,
    )


_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_NPY_MAGIC = b"\x93NUMPY"


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            head = handle.read(len(_NPY_MAGIC))
    except FileNotFoundError as exc:
        raise DataError(f"no such .npz file: {path}; check the path") from exc
    except OSError as exc:
        raise DataError(f"cannot read {path} ({exc.strerror or exc}); check the file") from exc
    if not head.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC, _NPY_MAGIC)):
        # np.load would try such bytes as a pickle and advise allow_pickle=True: never suggest that.
        raise DataError(f"{path} is not a .npz file (no zip header); save it with numpy.savez(path, x=..., y=...)")
    try:
        archive = np.load(path, allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"no such .npz file: {path}; check the path") from exc
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"cannot read {path} as a .npz file ({exc}); save it with numpy.savez") from exc
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not x and y; save it with numpy.savez(path, x=..., y=...)")
    with archive:
        keys = set(archive.files)
        missing = [key for key in ("x", "y") if key not in keys]
        if missing:
            found = ", ".join(sorted(keys)) or "nothing"
            raise DataError(
                f"{path} has no array named {' or '.join(missing)} (it holds: {found});"
                " save images as x and labels as y"
            )
        try:
            return archive["x"], archive["y"]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            # allow_pickle=False makes object arrays fail here instead of running their pickles.
            raise DataError(f"cannot read x/y from {path} ({exc}); store plain numeric arrays") from exc


def _to_nhwc(x: np.ndarray, path: Path) -> np.ndarray:
    """(N,H,W,C) view of ``x``, telling channels-first from channels-last by which axis is 1 or 3."""
    if x.ndim == 3:
        return x[..., np.newaxis]
    if x.ndim != 4:
        raise DataError(f"{path}: x has shape {x.shape}; expected (N,H,W,C), (N,C,H,W) or (N,H,W)")
    if x.shape[3] in _CHANNEL_COUNTS:
        return x  # Channels-last wins a tie: (N,3,H,3) images are rarer than 3-pixel-wide ones.
    if x.shape[1] in _CHANNEL_COUNTS:
        return np.transpose(x, (0, 2, 3, 1))
    raise DataError(
        f"{path}: x has shape {x.shape} with neither axis 1 nor axis 3 of size 1 or 3;"
        " store (N,H,W,C) or (N,C,H,W) images with 1 or 3 channels"
    )


def _normalise_images(x: np.ndarray, path: Path) -> np.ndarray:
    """uint8 as is; other integers checked to 0..255; floats checked finite, [0,1] rescaled to 0..255."""
    if x.shape[1] == 0 or x.shape[2] == 0:
        raise DataError(f"{path}: x has empty images (shape {x.shape}); store at least 1x1 pixels")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype == np.bool_ or np.issubdtype(x.dtype, np.integer):
        if x.size and (x.min() < 0 or x.max() > _MAX_PIXEL):
            raise DataError(
                f"{path}: x holds integers outside 0..255 (min {x.min()}, max {x.max()}); store raw 0..255 pixels"
            )
        return np.ascontiguousarray(x, dtype=np.uint8)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: x has dtype {x.dtype}; store images as uint8 or float")
    pixels = np.asarray(x, dtype=np.float32)
    if not np.isfinite(pixels).all():
        raise DataError(f"{path}: x contains NaN or infinite values; clean the array before saving it")
    if pixels.size == 0:
        return np.ascontiguousarray(pixels)
    low, high = float(pixels.min()), float(pixels.max())
    if low < 0 or high > _MAX_PIXEL:
        # Normalised (mean/std) pixels would be silently misread; the model's preprocessing belongs elsewhere.
        raise DataError(
            f"{path}: x holds values from {low:g} to {high:g}; store raw pixels in [0,1] or 0..255, not normalised ones"
        )
    if high <= 1.0:
        pixels = pixels * np.float32(_MAX_PIXEL)
    return np.ascontiguousarray(pixels)


def _normalise_labels(y: np.ndarray, path: Path) -> tuple[np.ndarray, int | None]:
    """int64 labels and, for one-hot ``y``, the class count K."""
    num_classes: int | None = None
    if y.ndim == 2:
        if y.shape[1] == 0:
            raise DataError(f"{path}: y has shape {y.shape}; one-hot labels need at least one class column")
        if not np.issubdtype(y.dtype, np.number) and y.dtype != np.bool_:
            raise DataError(f"{path}: y has dtype {y.dtype}; store integer class indices or one-hot numbers")
        num_classes = int(y.shape[1])
        y = np.argmax(y, axis=1) if y.shape[0] else np.zeros(0, dtype=np.int64)
    elif y.ndim != 1:
        raise DataError(f"{path}: y has shape {y.shape}; expected (N,) class indices or (N,K) one-hot labels")
    return _integer_labels(y, path), num_classes


def _integer_labels(y: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(y.dtype, np.floating):
        # Some exporters write class indices as floats; accept them only if they are whole numbers.
        if not np.isfinite(y).all() or not np.array_equal(y, np.round(y)):
            raise DataError(f"{path}: y holds non-integer values; store class indices as integers")
    elif not (np.issubdtype(y.dtype, np.integer) or y.dtype == np.bool_):
        raise DataError(f"{path}: y has dtype {y.dtype}; store class indices as integers")
    labels = y.astype(np.int64)
    if labels.size and labels.min() < 0:
        raise DataError(f"{path}: y holds negative labels (min {labels.min()}); class indices start at 0")
    return labels
