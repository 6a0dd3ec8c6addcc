"""Helpers shared by the op families: axes, ONNX padding conventions, broadcasting of per-axis tensors."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def axis(value: int, rank: int) -> int:
    """A possibly negative ONNX axis as a non-negative one."""
    return value + rank if value < 0 else value


def torch_pad_order(begins: list[int], ends: list[int]) -> list[int]:
    """ONNX (begins per axis, ends per axis) as F.pad's (last axis first, begin/end pairs) list."""
    out: list[int] = []
    for b, e in zip(reversed(begins), reversed(ends), strict=True):
        out.extend((b, e))
    return out


def same_pads(
    sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int], mode: str
) -> tuple[list[int], list[int]]:
    """Begin/end pads of ``auto_pad`` SAME_UPPER / SAME_LOWER (output = ceil(input / stride))."""
    begins, ends = [], []
    for size, k, s, d in zip(sizes, kernel, strides, dilations, strict=True):
        total = max(0, (math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size)
        small, big = total // 2, total - total // 2
        # SAME_UPPER puts the extra padding at the end, SAME_LOWER at the beginning.
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return begins, ends


def window_pads(
    ctx_attrs: dict, sizes: list[int], kernel: list[int], strides: list[int], dilations: list[int]
) -> tuple[list[int], list[int]]:
    """Begin/end pads of a conv or pooling node from ``auto_pad`` and ``pads``."""
    n = len(kernel)
    mode = ctx_attrs.get("auto_pad") or "NOTSET"
    if mode in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(sizes, kernel, strides, dilations, mode)
    if mode == "VALID":
        return [0] * n, [0] * n
    pads = list(ctx_attrs.get("pads") or [0] * (2 * n))
    return pads[:n], pads[n:]


def symmetric_or_pad(
    x: torch.Tensor, begins: list[int], ends: list[int], value: float = 0.0
) -> tuple[torch.Tensor, list[int]]:
    """Torch's symmetric ``padding`` argument; asymmetric pads are applied here with F.pad instead."""
    if begins == ends:
        return x, begins
    return F.pad(x, torch_pad_order(begins, ends), value=value), [0] * len(begins)


def per_axis(values: torch.Tensor, axis_: int, rank: int) -> torch.Tensor:
    """Reshape a 1-D per-axis tensor so that it broadcasts along ``axis_`` of a rank-``rank`` tensor."""
    if values.dim() != 1 or rank == 0:
        return values
    shape = [1] * rank
    shape[axis_] = values.shape[0]
    return values.reshape(shape)


def ints(value: object, default: list[int]) -> list[int]:
    """An ints attribute as a list (``default`` when absent or empty)."""
    if value is None:
        return list(default)
    values = [int(v) for v in value]  # type: ignore[union-attr]
    return values or list(default)
