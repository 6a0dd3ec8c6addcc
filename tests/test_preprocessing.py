"""How preprocessing is decided, and that it computes (pixel * scale - mean) / std in the right layout."""

from __future__ import annotations

import numpy as np
import pytest

from kernelscope.data.dataset import ImageDataset
from kernelscope.data.preprocessing import PreprocessingOptions, resolve_preprocessing, select_examples
from kernelscope.errors import DataError, UsageError


def _dataset(name="x", n=4, size=8, channels=3):
    rng = np.random.default_rng(0)
    return ImageDataset(
        name, rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), np.zeros(n, np.int64), "t"
    )


def test_formula_and_layout():
    data = _dataset("cifar10")
    pre = resolve_preprocessing(input_shape=("N", 3, 8, 8), input_dtype="float32", metadata=None, dataset=data)
    assert pre.sources["mean"] == "preset cifar10" and pre.layout == "NCHW"
    x = pre.to_model_input(data.images)
    expected = (data.images.astype(np.float32) / 255 - np.array(pre.mean, np.float32)) / np.array(pre.std, np.float32)
    np.testing.assert_allclose(x, expected.transpose(0, 3, 1, 2), atol=1e-5)
    nhwc = resolve_preprocessing(input_shape=(1, 8, 8, 3), input_dtype="float32", metadata=None, dataset=data)
    assert nhwc.layout == "NHWC" and nhwc.to_model_input(data.images).shape == (4, 8, 8, 3)


def test_priority_option_over_metadata_over_preset():
    data = _dataset("mnist", channels=1)
    meta = {"mean": [0.5], "std": [0.25]}
    pre = resolve_preprocessing(input_shape=(1, 1, 8, 8), input_dtype="float32", metadata=meta, dataset=data)
    assert pre.mean == (0.5,) and pre.sources["mean"] == "model metadata"
    assert pre.scale == pytest.approx(1 / 255) and pre.sources["scale"] == "preset mnist"
    pre = resolve_preprocessing(
        input_shape=(1, 1, 8, 8),
        input_dtype="float32",
        metadata=meta,
        dataset=data,
        options=PreprocessingOptions(mean=(0.1,)),
    )
    assert pre.mean == (0.1,) and pre.sources["mean"] == "option"


def test_model_metadata_dataset_picks_the_preset_for_other_data():
    pre = resolve_preprocessing(
        input_shape=("N", 3, 8, 8), input_dtype="float32", metadata={}, dataset=_dataset("my-folder"), preset="cifar10"
    )
    assert pre.sources["std"] == "preset cifar10"


def test_uint8_models_get_raw_pixels():
    data = _dataset()
    pre = resolve_preprocessing(input_shape=("N", 8, 8, 3), input_dtype="uint8", metadata=None, dataset=data)
    np.testing.assert_array_equal(pre.to_model_input(data.images), data.images)
    with pytest.raises(UsageError, match="normalizes them itself"):
        resolve_preprocessing(
            input_shape=("N", 8, 8, 3),
            input_dtype="uint8",
            metadata=None,
            dataset=data,
            options=PreprocessingOptions(scale=1.0),
        )


def test_mismatches_need_explicit_conversion():
    data = _dataset(size=6, channels=1)
    with pytest.raises(DataError, match="--size 8,8"):
        resolve_preprocessing(input_shape=("N", 3, 8, 8), input_dtype="float32", metadata=None, dataset=data)
    pre = resolve_preprocessing(
        input_shape=("N", 3, 8, 8),
        input_dtype="float32",
        metadata=None,
        dataset=data,
        options=PreprocessingOptions(size=(8, 8), channels=3),
    )
    x = pre.to_model_input(data.images)
    assert x.shape == (4, 3, 8, 8)
    np.testing.assert_array_equal(x[:, 0], x[:, 2])  # gray repeated into RGB
    with pytest.raises(UsageError, match="contradicts"):
        resolve_preprocessing(
            input_shape=("N", 3, 8, 8),
            input_dtype="float32",
            metadata=None,
            dataset=data,
            options=PreprocessingOptions(size=(16, 16)),
        )
    with pytest.raises(UsageError, match="mean has 2 values"):
        resolve_preprocessing(
            input_shape=("N", 3, 8, 8),
            input_dtype="float32",
            metadata=None,
            dataset=_dataset(),
            options=PreprocessingOptions(mean=(0.1, 0.2)),
        )


def test_dynamic_model_takes_the_data_as_it_is():
    pre = resolve_preprocessing(
        input_shape=("N", 3, "H", "W"), input_dtype="float16", metadata=None, dataset=_dataset(size=5)
    )
    assert pre.size == (5, 5) and pre.sources["size"] == "data"
    assert pre.to_model_input(_dataset(size=5).images).dtype == np.float16


def test_select_examples_is_seeded_and_bounded():
    data = _dataset(n=50)
    a, b = select_examples(data, 10, 1), select_examples(data, 10, 1)
    np.testing.assert_array_equal(a.images, b.images)
    assert len(a) == 10 and len(select_examples(data, 500, 1)) == 50
    with pytest.raises(UsageError):
        select_examples(data, 0, 1)
