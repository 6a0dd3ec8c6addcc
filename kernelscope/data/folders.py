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
from kernelscope.data.streamed import StreamedImages
from kernelscope.errors import DataError, some_of

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
"""File suffixes (lower case) treated as images; other files in class folders are ignored."""
#: Decoded pixels above which an image folder streams (each batch decoded when read) instead of being
#: decoded into memory once: 5,000 photos at 224 x 224 already take 750 MB.
STREAM_ABOVE_BYTES = 256 << 20

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

    def output_size(self, width: int, height: int, where: str) -> tuple[int, int]:
        """(height, width) that :meth:`apply` gives an image of ``width`` x ``height`` (from its header)."""
        if self.resize is not None:
            scale = self.resize / min(width, height)
            width, height = max(1, round(width * scale)), max(1, round(height * scale))
        if self.crop is not None:
            self._check_crop(width, height, where)
            width = height = self.crop
        if self.size is not None:
            height, width = self.size
        return height, width

    def _check_crop(self, width: int, height: int, where: str) -> None:
        if width < self.crop or height < self.crop:
            raise DataError(
                f"image {where} is {height}x{width} (HxW), smaller than --crop {self.crop}; add "
                f"--resize {self.crop} or more"
            )

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
            self._check_crop(image.width, image.height, where)
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
    stream: bool | None = None,
) -> ImageDataset:
    """Load an image-folder data set from a directory or a ``.tar`` of ``<class>/<file>`` members.

    Class names are the sorted sub-folder names and give the label order; files are taken in sorted order.
    With ``class_index`` (a file mapping folder names to the model's output indices, see
    :func:`load_class_index`; e.g. ImageNet synsets) the labels come from it instead.
    ``resize`` / ``crop`` / ``size`` bring every image to one size (:class:`Geometry`); without them all must
    share one size. ``channels`` 1 or 3 forces grayscale or RGB; ``None`` picks RGB if any image has colour.

    ``stream``: keep the images undecoded and decode each batch when it is read (:class:`StreamedImages`),
    after a pass over the files' headers (sizes, colour). ``None`` streams when the decoded pixels would
    take more than :data:`STREAM_ABOVE_BYTES`; a small set is decoded once, up front.
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
    headers = [_header(entry, geometry) for entry in entries]
    _check_same_size(headers, entries)  # after the geometry: --resize alone keeps each aspect ratio
    mode = _target_mode(headers, channels)
    height, width = headers[0].size
    image_shape = (height, width, 3 if mode == "RGB" else 1)
    if stream is None:
        stream = len(entries) * int(np.prod(image_shape)) > STREAM_ABOVE_BYTES
    if stream:
        pixels = StreamedImages(entries, image_shape, lambda entry: _pixels(entry, geometry, mode, image_shape))
    else:
        pixels = np.stack([_pixels(entry, geometry, mode, image_shape) for entry in entries])
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
    """Class names and image entries of a tar whose members are ``<class>/<file>``.

    An uncompressed tar is read member by member when an image is decoded (offsets recorded here); a
    compressed one cannot be read out of order cheaply, so its (compressed) image files are held in memory.
    """
    members: dict[tuple[str, str], Callable[[], bytes]] = {}
    plain = _is_plain_tar(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = PurePosixPath(member.name.removeprefix("./")).parts
                if member.isfile() and len(parts) >= 2 and _is_image_name(parts[-1]):
                    key = ("/".join(parts[:-1]), parts[-1])
                    if plain:
                        members[key] = _member_reader(archive, member.offset_data, member.size)
                        continue
                    handle = tar.extractfile(member)
                    if handle is not None:
                        data = handle.read()
                        members[key] = lambda data=data: data
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {archive} as a tar file ({exc}); check that it is a complete .tar") from exc
    by_class = _group_by_class(members, archive)
    classes = sorted(by_class)
    entries = [
        _Entry(f"{archive}:{folder}/{file}", name, read) for name in classes for folder, file, read in by_class[name]
    ]
    return classes, entries


def _is_plain_tar(archive: Path) -> bool:
    """Whether ``archive`` is an uncompressed tar (no gzip, bzip2 or xz magic number)."""
    try:
        with open(archive, "rb") as handle:
            head = handle.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {archive} ({exc.strerror or exc})") from None
    return not (head.startswith(b"\x1f\x8b") or head.startswith(b"BZh") or head.startswith(b"\xfd7zXZ"))


def _member_reader(archive: Path, offset: int, size: int) -> Callable[[], bytes]:
    def read() -> bytes:
        with open(archive, "rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise OSError(f"{archive} ended inside a member (it changed after it was scanned)")
        return data

    return read


def _group_by_class(
    members: dict[tuple[str, str], Callable[[], bytes]], archive: Path
) -> dict[str, list[tuple[str, str, Callable[[], bytes]]]]:
    """Group tar images by class: the member's folder, minus a top folder that all members share."""
    if not members:
        raise DataError(f"{archive} holds no images in <class>/<file> members; build it with one folder per class")
    folders = {folder for folder, _ in members}
    prefix = _common_top(folders)
    by_class: dict[str, list[tuple[str, str, Callable[[], bytes]]]] = {}
    for (folder, file), read in sorted(members.items()):
        name = folder[len(prefix) :] if prefix else folder
        if not name or "/" in name:
            raise DataError(f"{archive} member {folder}/{file} is not <class>/<file>; use one folder level per class")
        by_class.setdefault(name, []).append((folder, file, read))
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


@dataclass(frozen=True)
class _Header:
    """What an image's header says: its size after the geometry, (height, width), and whether it has colour."""

    size: tuple[int, int]
    colour: bool


def _header(entry: _Entry, geometry: Geometry) -> _Header:
    """Read ``entry``'s header only (no pixels decoded, except a palette's colours); failures name the file."""
    try:
        image = Image.open(io.BytesIO(entry.read()))
        return _Header(geometry.output_size(image.width, image.height, entry.where), _is_colour(image))
    except UnidentifiedImageError as exc:
        raise DataError(
            f"cannot read image {entry.where} (not an image format Pillow knows); delete or replace it"
        ) from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {entry.where} ({exc}); delete or replace it") from exc


def _pixels(entry: _Entry, geometry: Geometry, mode: str, shape: tuple[int, int, int]) -> np.ndarray:
    """``entry`` decoded and brought to ``shape`` (H, W, C) in ``mode``."""
    pixels = _to_array(_decode(entry, geometry), mode)
    if pixels.shape != shape:
        raise DataError(
            f"image {entry.where} decodes to {pixels.shape[0]}x{pixels.shape[1]} (HxW) but its header said "
            f"{shape[0]}x{shape[1]}; delete or replace it"
        )
    return pixels


def _check_same_size(headers: Sequence[_Header], entries: Sequence[_Entry]) -> None:
    first = headers[0].size
    for header, entry in zip(headers, entries, strict=True):
        if header.size != first:
            raise DataError(
                f"images differ in size: {entries[0].where} is {first[0]}x{first[1]} but"
                f" {entry.where} is {header.size[0]}x{header.size[1]} (HxW); pass --size H,W to resize them all"
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


def _target_mode(headers: Sequence[_Header], channels: int | None) -> str:
    if channels is None:
        return "RGB" if any(header.colour for header in headers) else "L"
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
