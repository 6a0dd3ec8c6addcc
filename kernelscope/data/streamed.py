"""Images decoded when they are read: an (N, H, W, C) uint8 array whose slices decode only their own images.

An image folder of photos is too large to hold decoded (5,000 ImageNet validation images at 224 x 224 are
750 MB of pixels, the whole set 7.5 GB). :class:`StreamedImages` stands in for the array wherever the tool
reads images — a batch (``images[start:stop]``), a shuffled minibatch (``images[indices]``), a subset
(:meth:`take_images`) — and decodes exactly the images asked for, so memory holds one batch at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


class StreamedImages:
    """``len(items)`` images of ``shape`` (H, W, C), uint8, ``decode(item)`` giving each one on demand."""

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(
        self, items: Sequence[object], image_shape: tuple[int, int, int], decode: Callable[[object], np.ndarray]
    ):
        self._items = list(items)
        self._image_shape = tuple(int(d) for d in image_shape)
        self._decode = decode

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, H, W, C), as for the decoded array."""
        return (len(self._items), *self._image_shape)  # type: ignore[return-value]

    @property
    def nbytes(self) -> int:
        """Bytes the decoded array would take."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self._items)

    def take_images(self, indices: Sequence[int] | np.ndarray) -> StreamedImages:
        """The images at ``indices``, still undecoded (what :meth:`ImageDataset.subset` keeps)."""
        return StreamedImages(
            [self._items[int(i)] for i in np.asarray(indices).reshape(-1)], self._image_shape, self._decode
        )

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._one(self._items[int(key)])
        if isinstance(key, slice):
            chosen = self._items[key]
        else:
            index = np.asarray(key)
            if index.dtype == bool:
                index = np.flatnonzero(index)
            chosen = [self._items[int(i)] for i in index.reshape(-1)]
        out = np.empty((len(chosen), *self._image_shape), dtype=np.uint8)
        for row, item in enumerate(chosen):
            out[row] = self._one(item)
        return out

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """Every image decoded (only for code that asks for the whole array)."""
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def _one(self, item: object) -> np.ndarray:
        return self._decode(item)  # ``decode`` checks the shape: it can name the file
