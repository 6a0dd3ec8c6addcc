"""The in-memory form every data source is loaded into."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ImageDataset:
    """Labelled images as raw pixels, before any model-specific preprocessing.

    ``images`` has shape (N, H, W, C) with C in {1, 3} (an array, or for large image folders a
    :class:`~kernelscope.data.streamed.StreamedImages` that decodes the images a slice asks for); dtype
    uint8 (0..255) or float32 on the same
    0..255 scale (float sources in [0, 1] are rescaled on load so that one ``scale`` option means the same
    thing for every source). ``labels`` is int64 of shape (N,). ``num_classes`` is the number of classes
    the source defines (10 for CIFAR-10, the number of sub-folders of an image folder), or ``None`` when
    the source does not say (an ``.npz``), in which case only the label range can be checked.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    source: str
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the stored images."""
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def channels(self) -> int:
        """Number of colour channels of the stored images (1 or 3)."""
        return int(self.images.shape[3])

    def subset(self, indices: np.ndarray) -> ImageDataset:
        """The examples at ``indices``, in that order (a copy, so the parent can be freed; streamed images
        stay undecoded)."""
        take = getattr(self.images, "take_images", None)
        return ImageDataset(
            name=self.name,
            images=take(indices) if take is not None else np.ascontiguousarray(self.images[indices]),
            labels=np.ascontiguousarray(self.labels[indices]),
            source=self.source,
            num_classes=self.num_classes,
            class_names=self.class_names,
        )
