"""Loading image data sets: official benchmarks by name, image folders, tars and ``.npz`` files."""

from __future__ import annotations

from kernelscope.data.dataset import ImageDataset
from kernelscope.data.official import OFFICIAL_DATASETS
from kernelscope.data.sources import load_dataset

__all__ = ["OFFICIAL_DATASETS", "ImageDataset", "load_dataset"]
