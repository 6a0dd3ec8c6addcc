"""Image-folder data sets: one sub-folder per class, as a directory or as a tar of ``<class>/<file>``."""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, UnidentifiedImageError

from kernelscope.data.dataset import ImageDataset
from kernelscope.errors import DataError

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File suffixes (lower case) treated as images; other files in class folders are ignored."""

# Pillow modes without colour information; everything else (RGB, RGBA, CMYK, YCbCr, ...) is colour.
_GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass(frozen=True)
class _Entry:
    """One image file to decode: where it is (for messages), its class, and how to get its bytes."""

    where: str
    class_name: str
    read: Callable[[], bytes]


def load_image_folder(
    path: Path | str,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
) -> ImageDataset:
    """Load an image-folder data set from a directory or a ``.tar`` of ``<class>/<file>`` members.

    Class names are the sorted sub-folder names and give the label order; files are taken in sorted order.
    With ``size`` (height, width) every image is resized (bilinear); without it all must share one size.
    ``channels`` 1 or 3 forces grayscale or RGB; ``None`` picks RGB if any image has colour.
    """
    path = Path(path)
    size = _check_size(size)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels!r}")
    if path.is_dir():
        classes, entries = _scan_directory(path)
    elif path.is_file():
        classes, entries = _scan_tar(path)
    else:
        raise DataError(f"no such image folder or tar file: {path}; check the path")
    images = [_decode(entry, size) for entry in entries]
    if size is None:
        _check_same_size(images, entries)
    mode = _target_mode(images, channels)
    pixels = np.stack([_to_array(image, mode) for image in images])
    index = {name: label for label, name in enumerate(classes)}
    labels = np.array([index[entry.class_name] for entry in entries], dtype=np.int64)
    return ImageDataset(
        name=_dataset_name(path),
        images=pixels,
        labels=labels,
        source=str(path),
        num_classes=len(classes),
        class_names=tuple(classes),
    )


# ------------------------------------------------------------------------------------------------ scanning


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _scan_directory(root: Path) -> tuple[list[str], list[_Entry]]:
    """Class names and image entries of a directory, both sorted."""
    class_dirs = sorted(
        (child for child in root.iterdir() if child.is_dir() and not child.name.startswith(".")),
        key=lambda child: child.name,
    )
    if not class_dirs:
        raise DataError(f"{root} has no class sub-folders; put each class's images in its own sub-folder")
    entries: list[_Entry] = []
    for class_dir in class_dirs:
        files = sorted(f for f in class_dir.iterdir() if f.is_file() and _is_image_name(f.name))
        if not files:
            raise DataError(
                f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))});"
                " add some or remove the folder"
            )
        entries.extend(_Entry(str(f), class_dir.name, f.read_bytes) for f in files)
    return [class_dir.name for class_dir in class_dirs], entries


def _scan_tar(archive: Path) -> tuple[list[str], list[_Entry]]:
    """Class names and image entries of a tar whose members are ``<class>/<file>``, read in memory."""
    members: dict[tuple[str, str], bytes] = {}
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name.removeprefix("./")).parts
                if member.isfile() and len(parts) >= 2 and _is_image_name(parts[-1]):
                    handle = tar.extractfile(member)
                    if handle is not None:
                        members[("/".join(parts[:-1]), parts[-1])] = handle.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {archive} as a tar file ({exc}); check that it is a complete .tar") from exc
    by_class = _group_by_class(members, archive)
    classes = sorted(by_class)
    entries = [
        _Entry(f"{archive}:{folder}/{file}", name, lambda data=data: data)
        for name in classes
        for folder, file, data in by_class[name]
    ]
    return classes, entries


def _group_by_class(members: dict[tuple[str, str], bytes], archive: Path) -> dict[str, list[tuple[str, str, bytes]]]:
    """Group tar images by class: the member's folder, minus a top folder that all members share."""
    if not members:
        raise DataError(f"{archive} holds no images in <class>/<file> members; build it with one folder per class")
    folders = {folder for folder, _ in members}
    prefix = _common_top(folders)
    by_class: dict[str, list[tuple[str, str, bytes]]] = {}
    for (folder, file), data in sorted(members.items()):
        name = folder[len(prefix) :] if prefix else folder
        if not name or "/" in name:
            raise DataError(f"{archive} member {folder}/{file} is not <class>/<file>; use one folder level per class")
        by_class.setdefault(name, []).append((folder, file, data))
    return by_class


def _common_top(folders: set[str]) -> str:
    """``"top/"`` when every folder is ``top/<class>`` (a tar of the parent folder), else ``""``."""
    tops = {folder.split("/", 1)[0] for folder in folders}
    if len(tops) == 1 and all("/" in folder for folder in folders):
        return f"{tops.pop()}/"
    return ""


# ------------------------------------------------------------------------------------------------ decoding


def _decode(entry: _Entry, size: tuple[int, int] | None) -> Image.Image:
    """Fully decoded (and, with ``size``, resized) Pillow image; any failure names the file."""
    try:
        image = Image.open(io.BytesIO(entry.read()))
        image.load()  # Pillow decodes lazily; force it here so damage shows up with the file's name.
        if size is not None and (image.height, image.width) != size:
            if image.mode not in ("1", "L", "RGB", "RGBA", "F", "I"):
                image = image.convert("RGB" if _is_colour(image) else "L")
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except UnidentifiedImageError as exc:  # its message names an in-memory BytesIO object: say it plainly
        raise DataError(
            f"cannot read image {entry.where} (not an image format Pillow knows); delete or replace it"
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {entry.where} ({exc}); delete or replace it") from exc
    return image


def _check_same_size(images: Sequence[Image.Image], entries: Sequence[_Entry]) -> None:
    first = images[0]
    for image, entry in zip(images, entries, strict=True):
        if image.size != first.size:
            raise DataError(
                f"images differ in size: {entries[0].where} is {first.height}x{first.width} but"
                f" {entry.where} is {image.height}x{image.width} (HxW); pass --size HxW to resize them all"
            )


def _is_colour(image: Image.Image) -> bool:
    if image.mode in _GRAY_MODES:
        return False
    if image.mode in ("P", "PA"):
        # A palette image is colour only if its palette is: compare the channels after expansion.
        rgb = np.asarray(image.convert("RGB"))
        return not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
    return True


def _target_mode(images: Sequence[Image.Image], channels: int | None) -> str:
    if channels is None:
        return "RGB" if any(_is_colour(image) for image in images) else "L"
    return "RGB" if channels == 3 else "L"


def _to_array(image: Image.Image, mode: str) -> np.ndarray:
    if image.mode != mode:
        image = image.convert(mode)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels


# ----------------------------------------------------------------------------------------------- helpers


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        height, width = (int(value) for value in size)
    except (TypeError, ValueError) as exc:
        raise DataError(f"size must be (height, width), not {size!r}") from exc
    if height <= 0 or width <= 0:
        raise DataError(f"size must be positive, not {height}x{width}")
    return height, width


def _dataset_name(path: Path) -> str:
    stem = path.name.removesuffix(".gz").removesuffix(".tar") if path.is_file() else path.name
    # "cifar10-jpg/test.tar" is better named after its folder too: "cifar10-jpg-test".
    if stem.lower() in ("test", "train", "val", "valid", "validation") and path.resolve().parent.name:
        return f"{path.resolve().parent.name}-{stem}"
    return stem or str(path)
