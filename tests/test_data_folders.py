"""load_image_folder: directories and tars of <class>/<file> images, decoded with Pillow."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kernelscope.data.folders import load_image_folder
from kernelscope.errors import DataError


def one_line(info: pytest.ExceptionInfo[DataError]) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


def save(path: Path, pixels: np.ndarray, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def rgb(value: int, size: tuple[int, int] = (4, 5)) -> np.ndarray:
    pixels = np.zeros((*size, 3), np.uint8)
    pixels[..., 0] = value
    pixels[..., 2] = 255 - value
    return pixels


def gray(value: int, size: tuple[int, int] = (4, 5)) -> np.ndarray:
    return np.full(size, value, np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_directory_labels_follow_sorted_class_and_file_names(tmp_path: Path) -> None:
    save(tmp_path / "zebra" / "b.png", rgb(10))
    save(tmp_path / "zebra" / "a.PNG", rgb(20))  # extensions are case-insensitive
    save(tmp_path / "ant" / "x.bmp", rgb(30), "BMP")
    (tmp_path / "ant" / "notes.txt").write_text("ignored")
    save(tmp_path / "ant" / ".hidden.png", rgb(99))
    (tmp_path / ".git").mkdir()
    dataset = load_image_folder(tmp_path)
    assert dataset.class_names == ("ant", "zebra")
    assert dataset.num_classes == 2
    assert dataset.labels.tolist() == [0, 1, 1]
    assert dataset.labels.dtype == np.int64
    assert dataset.images.dtype == np.uint8 and dataset.images.shape == (3, 4, 5, 3)
    assert dataset.images[:, 0, 0, 0].tolist() == [30, 20, 10]
    assert dataset.source == str(tmp_path)


def test_channels_auto_and_forced(tmp_path: Path) -> None:
    save(tmp_path / "gray" / "a.png", gray(100))
    save(tmp_path / "gray" / "b.png", gray(200))
    only_gray = load_image_folder(tmp_path)
    assert only_gray.images.shape == (2, 4, 5, 1)
    assert only_gray.images[:, 0, 0, 0].tolist() == [100, 200]
    assert load_image_folder(tmp_path, channels=3).images.shape == (2, 4, 5, 3)
    save(tmp_path / "red" / "a.png", rgb(255))
    mixed = load_image_folder(tmp_path)
    assert mixed.images.shape == (3, 4, 5, 3)  # one colour image makes it RGB
    assert mixed.images[0, 0, 0].tolist() == [100, 100, 100]
    assert load_image_folder(tmp_path, channels=1).images.shape == (3, 4, 5, 1)


def test_gray_palette_and_rgba_images(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    Image.fromarray(gray(50)).convert("P").save(tmp_path / "a" / "p.gif")
    assert load_image_folder(tmp_path).channels == 1  # a palette of grays is not colour
    rgba = np.dstack([rgb(7), np.full((4, 5), 128, np.uint8)])
    save(tmp_path / "b" / "c.png", rgba)
    dataset = load_image_folder(tmp_path)
    assert dataset.channels == 3 and dataset.images[1, 0, 0].tolist() == [7, 0, 248]


def test_sizes_must_match_unless_resized(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", rgb(1, (4, 5)))
    save(tmp_path / "a" / "2.jpg", rgb(1, (8, 8)))
    with pytest.raises(DataError, match="--size") as info:
        load_image_folder(tmp_path)
    assert "2.jpg" in one_line(info)
    resized = load_image_folder(tmp_path, size=(6, 7))
    assert resized.images.shape == (2, 6, 7, 3)
    assert resized.image_size == (6, 7)


def test_resize_is_bilinear(tmp_path: Path) -> None:
    pixels = np.zeros((2, 2), np.uint8)
    pixels[:, 1] = 200
    save(tmp_path / "a" / "x.png", pixels)
    out = load_image_folder(tmp_path, size=(2, 4)).images[0, 0, :, 0]
    expected = np.asarray(Image.fromarray(pixels).resize((4, 2), Image.Resampling.BILINEAR))[0]
    np.testing.assert_array_equal(out, expected)
    assert 0 < out[1] < 200 or 0 < out[2] < 200  # interpolated, not nearest


def test_empty_class_folder_is_named(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", rgb(1))
    (tmp_path / "empty_class").mkdir()
    (tmp_path / "empty_class" / "readme.txt").write_text("no images")
    with pytest.raises(DataError, match="empty_class") as info:
        load_image_folder(tmp_path)
    one_line(info)


def test_no_class_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no class sub-folders") as info:
        load_image_folder(tmp_path)
    one_line(info)
    save(tmp_path / "loose.png", rgb(1))
    with pytest.raises(DataError, match="no class sub-folders"):
        load_image_folder(tmp_path)
    with pytest.raises(DataError, match="no such"):
        load_image_folder(tmp_path / "missing")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    save(tmp_path / "a" / "good.png", rgb(1))
    (tmp_path / "a" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match=r"bad.png") as info:
        load_image_folder(tmp_path)
    one_line(info)
    truncated = png_bytes(rgb(3, (16, 16)))[:-30]
    (tmp_path / "a" / "bad.png").write_bytes(truncated)
    with pytest.raises(DataError, match=r"bad.png"):
        load_image_folder(tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    save(tmp_path / "a" / "1.png", rgb(1))
    for kwargs in ({"channels": 2}, {"size": (0, 4)}, {"size": "big"}):
        with pytest.raises(DataError) as info:
            load_image_folder(tmp_path, **kwargs)
        one_line(info)


def test_tar_members_read_directly(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "test.tar",
        {
            "./dog/0001.png": png_bytes(rgb(5)),
            "cat/0002.png": png_bytes(rgb(6)),
            "cat/0001.png": png_bytes(rgb(7)),
            "cat/README": b"not an image",
        },
    )
    dataset = load_image_folder(archive)
    assert dataset.class_names == ("cat", "dog")
    assert dataset.labels.tolist() == [0, 0, 1]
    assert dataset.images[:, 0, 0, 0].tolist() == [7, 6, 5]
    assert dataset.name == f"{tmp_path.name}-test"  # a bare split name gets its folder's name too


def test_tar_with_one_top_folder(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "pets.tar",
        {"pets/cat/a.png": png_bytes(gray(1)), "pets/dog/a.png": png_bytes(gray(2))},
    )
    dataset = load_image_folder(archive)
    assert dataset.class_names == ("cat", "dog") and dataset.name == "pets"
    assert dataset.images.shape == (2, 4, 5, 1)


def test_bad_tars(tmp_path: Path) -> None:
    flat = make_tar(tmp_path / "flat.tar", {"a.png": png_bytes(gray(1))})
    with pytest.raises(DataError, match="<class>/<file>") as info:
        load_image_folder(flat)
    one_line(info)
    deep = make_tar(tmp_path / "deep.tar", {"a/b/c.png": png_bytes(gray(1)), "d/e.png": png_bytes(gray(1))})
    with pytest.raises(DataError, match=r"a/b/c.png"):
        load_image_folder(deep)
    broken = tmp_path / "broken.tar"
    broken.write_bytes(b"this is not a tar file" * 40)
    with pytest.raises(DataError, match=r"broken.tar") as info:
        load_image_folder(broken)
    one_line(info)
    corrupt = make_tar(tmp_path / "corrupt.tar", {"a/x.jpg": b"\xff\xd8\xff garbage"})
    with pytest.raises(DataError, match=r"corrupt.tar:a/x.jpg"):
        load_image_folder(corrupt)
