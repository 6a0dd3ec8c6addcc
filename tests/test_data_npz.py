"""load_npz: image layouts, dtypes, label encodings and every rejection path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernelscope.data.npz import load_npz
from kernelscope.errors import DataError

LABELS = np.array([0, 2, 1], dtype=np.int64)


def one_line(info: pytest.ExceptionInfo[DataError]) -> str:
    message = str(info.value)
    assert message and "\n" not in message
    return message


def nhwc(channels: int, dtype: type = np.uint8) -> np.ndarray:
    return (np.arange(3 * 4 * 5 * channels) % 256).reshape(3, 4, 5, channels).astype(dtype)


def write(tmp_path: Path, **arrays: np.ndarray) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_layouts(tmp_path: Path, channels: int, layout: str) -> None:
    reference = nhwc(channels)
    x = reference if layout == "NHWC" else reference.transpose(0, 3, 1, 2)
    dataset = load_npz(write(tmp_path, x=x, y=LABELS))
    assert dataset.images.dtype == np.uint8
    np.testing.assert_array_equal(dataset.images, reference)
    assert dataset.images.flags.c_contiguous
    np.testing.assert_array_equal(dataset.labels, LABELS)
    assert dataset.num_classes is None and dataset.class_names is None
    assert dataset.name == "data" and dataset.source.endswith("data.npz")


def test_grayscale_without_channel_axis(tmp_path: Path) -> None:
    x = nhwc(1)[..., 0]
    dataset = load_npz(write(tmp_path, x=x, y=LABELS))
    assert dataset.images.shape == (3, 4, 5, 1)


@given(channels=st.sampled_from([1, 3]), height=st.integers(2, 6), width=st.integers(4, 6), nchw=st.booleans())
@settings(max_examples=30, deadline=None)
def test_layout_detection_property(
    tmp_path_factory: pytest.TempPathFactory, channels: int, height: int, width: int, nchw: bool
) -> None:
    reference = np.random.default_rng(0).integers(0, 256, (2, height, width, channels), dtype=np.uint8)
    x = reference.transpose(0, 3, 1, 2) if nchw else reference
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, x=x, y=np.array([0, 1]))
    np.testing.assert_array_equal(load_npz(path).images, reference)


def test_float_unit_range_is_rescaled(tmp_path: Path) -> None:
    x = np.full((3, 2, 2, 3), 0.5, np.float64)
    x[0] = 1.0
    dataset = load_npz(write(tmp_path, x=x, y=LABELS))
    assert dataset.images.dtype == np.float32
    assert dataset.images.max() == 255.0 and dataset.images[1, 0, 0, 0] == pytest.approx(127.5)


def test_float_pixel_range_is_kept(tmp_path: Path) -> None:
    x = nhwc(3, np.float64)
    dataset = load_npz(write(tmp_path, x=x, y=LABELS))
    assert dataset.images.dtype == np.float32
    np.testing.assert_array_equal(dataset.images, x.astype(np.float32))


def test_wider_integer_pixels_become_uint8(tmp_path: Path) -> None:
    dataset = load_npz(write(tmp_path, x=nhwc(3, np.int64), y=LABELS))
    assert dataset.images.dtype == np.uint8
    np.testing.assert_array_equal(dataset.images, nhwc(3))


def test_one_hot_labels(tmp_path: Path) -> None:
    one_hot = np.eye(5, dtype=np.float32)[LABELS]
    dataset = load_npz(write(tmp_path, x=nhwc(3), y=one_hot))
    np.testing.assert_array_equal(dataset.labels, LABELS)
    assert dataset.labels.dtype == np.int64 and dataset.num_classes == 5


def test_whole_float_labels_are_accepted(tmp_path: Path) -> None:
    dataset = load_npz(write(tmp_path, x=nhwc(3), y=LABELS.astype(np.float32)))
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == LABELS.tolist()


def _bad_cases() -> list[tuple[dict[str, np.ndarray], str]]:
    x = nhwc(3)
    nan = x.astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    inf = x.astype(np.float32)
    inf[1, 1, 1, 1] = np.inf
    return [
        ({"y": LABELS}, "no array named x"),
        ({"x": x}, "no array named y"),
        ({"images": x, "labels": LABELS}, "it holds: images, labels"),
        ({"x": x, "y": LABELS[:2]}, "3 images but y has 2 labels"),
        ({"x": x[:0], "y": LABELS[:0]}, "no examples"),
        ({"x": np.zeros((3, 16), np.uint8), "y": LABELS}, "shape"),
        ({"x": np.zeros((3, 4, 4, 4, 3), np.uint8), "y": LABELS}, "shape"),
        ({"x": np.zeros((3, 4, 5, 6), np.uint8), "y": LABELS}, "1 or 3"),
        ({"x": x, "y": np.array([0, -1, 2])}, "negative"),
        ({"x": x, "y": np.array([0.5, 1, 2])}, "non-integer"),
        ({"x": x, "y": LABELS.reshape(3, 1, 1)}, "y has shape"),
        ({"x": x, "y": np.array(["a", "b", "c"])}, "dtype"),
        ({"x": nan, "y": LABELS}, "NaN"),
        ({"x": inf, "y": LABELS}, "NaN or infinite"),
        ({"x": x.astype(np.float32) / 255 - 0.5, "y": LABELS}, "normalised"),
        ({"x": x.astype(np.int32) * 2, "y": LABELS}, "outside 0..255"),
        ({"x": x.astype(np.complex64), "y": LABELS}, "dtype complex64"),
        ({"x": np.zeros((3, 0, 4, 3), np.uint8), "y": LABELS}, "empty images"),
    ]


@pytest.mark.parametrize("arrays, match", _bad_cases())
def test_rejections(tmp_path: Path, arrays: dict[str, np.ndarray], match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        load_npz(write(tmp_path, **arrays))
    one_line(info)


def test_object_arrays_are_not_unpickled(tmp_path: Path) -> None:
    path = write(tmp_path, x=np.array([object(), 1], dtype=object), y=LABELS)
    with pytest.raises(DataError, match="plain numeric arrays") as info:
        load_npz(path)
    one_line(info)


def test_not_an_npz(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(DataError, match="cannot read") as info:
        load_npz(bad)
    one_line(info)
    single = tmp_path / "single.npy"
    np.save(single, nhwc(3))
    with pytest.raises(DataError, match="single array") as info:
        load_npz(single)
    one_line(info)
    with pytest.raises(DataError, match="no such"):
        load_npz(tmp_path / "missing.npz")
