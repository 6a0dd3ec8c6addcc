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
from kernelscope.errors import DataError, some_of

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


@dataclass(frozen=True)
class Geometry:
    """How decoded images are brought to one size: the standard evaluation transform and/or a plain resize.

    ``resize`` scales the shorter side to that many pixels (bilinear, keeping the aspect ratio), then ``crop``
    cuts the centred ``crop`` x ``crop`` square (torchvision's ``Resize(256)`` + ``CenterCrop(224)``); ``size``
    (height, width), applied last, resizes to exactly that.
    """

    size: tuple[int, int] | None = None
    resize: int | None = None
    crop: int | None = None

    def apply(self, image: Image.Image, where: str) -> Image.Image:
        """``image`` resized / cropped as configured (converted to L or RGB first where Pillow needs it)."""
        if (
            self.resize is None
            and self.crop is None
            and (self.size is None or (image.height, image.width) == self.size)
        ):
            return image
        if image.mode not in ("1", "L", "RGB", "RGBA", "F", "I"):
            image = image.convert("RGB" if _is_colour(image) else "L")
        if self.resize is not None:
            short = min(image.width, image.height)
            scale = self.resize / short
            width, height = max(1, round(image.width * scale)), max(1, round(image.height * scale))
            if (width, height) != image.size:
                image = image.resize((width, height), Image.Resampling.BILINEAR)
        if self.crop is not None:
            if image.width < self.crop or image.height < self.crop:
                raise DataError(
                    f"image {where} is {image.height}x{image.width} (HxW), smaller than --crop {self.crop}; add "
                    f"--resize {self.crop} or more"
                )
            top = round((image.height - self.crop) / 2.0)
            left = round((image.width - self.crop) / 2.0)
            image = image.crop((left, top, left + self.crop, top + self.crop))
        if self.size is not None and (image.height, image.width) != self.size:
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        return image


def load_image_folder(
    path: Path | str,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    resize: int | None = None,
    crop: int | None = None,
    class_index: Path | str | None = None,
) -> ImageDataset:
    """Load an image-folder data set from a directory or a ``.tar`` of ``<class>/<file>`` members.

    Class names are the sorted sub-folder names and give the label order; files are taken in sorted order.
    With ``class_index`` (a file mapping folder names to the model's output indices, see
    :func:`load_class_index`; e.g. ImageNet synsets) the labels come from it instead.
    ``resize`` / ``crop`` / ``size`` bring every image to one size (:class:`Geometry`); without them all must
    share one size. ``channels`` 1 or 3 forces grayscale or RGB; ``None`` picks RGB if any image has colour.
    """
    path = Path(path)
    size = _check_size(size)
    for name, value in (("--resize", resize), ("--crop", crop)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise DataError(f"{name} must be a positive number of pixels, not {value!r}")
    geometry = Geometry(size, resize, crop)
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 or 3, not {channels!r}")
    if path.is_dir():
        classes, entries = _scan_directory(path)
    elif path.is_file():
        classes, entries = _scan_tar(path)
    else:
        raise DataError(f"no such image folder or tar file: {path}; check the path")
    mapping = None
    if class_index is not None:  # checked before any image is decoded
        mapping = load_class_index(class_index)
        missing = [name for name in classes if name not in mapping]
        if missing:
            raise DataError(f"class folder(s) {some_of(missing, 5)} of {path} are not in the class index {class_index}")
    images = [_decode(entry, geometry) for entry in entries]
    if size is None:
        _check_same_size(images, entries)
    mode = _target_mode(images, channels)
    pixels = np.stack([_to_array(image, mode) for image in images])
    if mapping is not None:
        index = {name: mapping[name][0] for name in classes}
        if {i for i, _ in mapping.values()} == set(range(len(mapping))):  # a complete index: 0..K-1
            names = [""] * len(mapping)
            for folder, (i, label) in mapping.items():
                names[i] = label or folder
            num_classes, class_names = len(mapping), tuple(names)
        else:  # a partial index defines the labels, not how many classes the model has
            num_classes, class_names = None, None
    else:
        index = {name: label for label, name in enumerate(classes)}
        num_classes, class_names = len(classes), tuple(classes)
    labels = np.array([index[entry.class_name] for entry in entries], dtype=np.int64)
    return ImageDataset(
        name=_dataset_name(path),
        images=pixels,
        labels=labels,
        source=str(path),
        num_classes=num_classes,
        class_names=class_names,
    )


def load_class_index(path: Path | str) -> dict[str, tuple[int, str]]:
    """Folder name -> (the model's output index, a readable label) from a class-index file.

    Accepted: JSON ``{"n01440764": 0, ...}``; JSON ``{"0": ["n01440764", "tench"], ...}`` (the common
    ``imagenet_class_index.json``); a JSON list of folder names (position = index); or a text file with one
    class per line, its first word the folder name and the rest its label (``LOC_synset_mapping.txt``), line
    order = index. Any other shape is a one-line :class:`DataError`.
    """
    import json

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DataError(f"cannot read the class index {path}: {exc.strerror or exc}") from None
    mapping: dict[str, tuple[int, str]] = {}
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict) and doc and all(isinstance(v, int) and not isinstance(v, bool) for v in doc.values()):
        mapping = {str(k): (int(v), "") for k, v in doc.items()}
    elif isinstance(doc, dict) and doc and all(isinstance(v, list) and len(v) >= 1 for v in doc.values()):
        try:
            mapping = {str(v[0]): (int(k), " ".join(map(str, v[1:]))) for k, v in doc.items()}
        except ValueError:
            raise DataError(
                f'the class index {path} maps non-integer keys to lists; expected {{"0": [name, label]}}'
            ) from None
    elif isinstance(doc, list) and doc and all(isinstance(v, str) for v in doc):
        mapping = {name: (i, "") for i, name in enumerate(doc)}
    elif doc is None:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        for i, line in enumerate(lines):
            folder, _, label = line.partition(" ")
            mapping[folder] = (i, label.strip())
    if not mapping:
        raise DataError(
            f"the class index {path} is empty or not one of: a JSON object name -> index, a JSON object "
            "index -> [name, label], a JSON list of names, or a text file with one class per line"
        )
    if any(index < 0 for index, _ in mapping.values()) or len({i for i, _ in mapping.values()}) != len(mapping):
        raise DataError(f"the class index {path} gives a negative index or one index to two classes")
    return mapping


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


def _decode(entry: _Entry, geometry: Geometry) -> Image.Image:
    """Fully decoded Pillow image brought to size by ``geometry``; any failure names the file."""
    try:
        image = Image.open(io.BytesIO(entry.read()))
        image.load()  # Pillow decodes lazily; force it here so damage shows up with the file's name.
        image = geometry.apply(image, entry.where)
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
                f" {entry.where} is {image.height}x{image.width} (HxW); pass --size H,W to resize them all"
                " (photos: --resize 256 --crop 224, the standard evaluation transform)"
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
