"""MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, GlobalLpPool.

Torch pools take symmetric padding of at most half a kernel; other pads are applied with F.pad first
(-inf for max, zeros plus an explicit divisor for average pooling).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernelscope.mirror.ops._common import ints, torch_pad_order, window_pads
from kernelscope.mirror.registry import NodeContext, register

_MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVG = {2: F.avg_pool2d, 3: F.avg_pool3d}


def _geometry(ctx: NodeContext, x: torch.Tensor) -> tuple[list[int], list[int], list[int], list[int], list[int]]:
    kernel = [int(k) for k in ctx.attr("kernel_shape")]  # type: ignore[union-attr]
    n = len(kernel)
    strides = ints(ctx.attr("strides"), [1] * n)
    dilations = ints(ctx.attr("dilations"), [1] * n)
    begins, ends = window_pads(ctx.attrs, list(x.shape[2:]), kernel, strides, dilations)
    return kernel, strides, dilations, begins, ends


def _fits_torch(kernel: list[int], begins: list[int], ends: list[int], dilations: list[int]) -> bool:
    return begins == ends and all(2 * p <= (k - 1) * d + 1 for p, k, d in zip(begins, kernel, dilations, strict=True))


def _max_check(ctx: NodeContext) -> str | None:
    if ctx.num_outputs > 1:
        return "Indices output"
    if int(ctx.attr("storage_order", 0)) != 0:
        return "storage_order=1"
    return None


@register(
    "MaxPool",
    since=(1, 8, 10, 11, 12, 22),
    notes="auto_pad, ceil_mode, dilations, asymmetric pads; not the Indices output",
    check=_max_check,
)
def max_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """MaxPool."""
    kernel, strides, dilations, begins, ends = _geometry(ctx, x)
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    if _fits_torch(kernel, begins, ends, dilations):
        padding = begins
    else:
        x = F.pad(x, torch_pad_order(begins, ends), value=float("-inf"))
        padding = [0] * len(kernel)
    return _MAX[len(kernel)](x, kernel, strides, padding, dilations, ceil_mode=ceil_mode)


def _avg_check(ctx: NodeContext) -> str | None:
    dilations = ctx.attr("dilations")
    if dilations and any(int(d) != 1 for d in dilations):  # type: ignore[union-attr]
        return "dilations"
    kernel = ctx.attr("kernel_shape") or []
    if len(kernel) not in (1, 2, 3):  # type: ignore[arg-type]
        return f"{len(kernel)}-D kernels"  # type: ignore[arg-type]
    return None


@register(
    "AveragePool",
    since=(7, 10, 11, 19, 22),
    notes="auto_pad, ceil_mode, count_include_pad, asymmetric pads; not dilations",
    check=_avg_check,
)
def average_pool(ctx: NodeContext, x: torch.Tensor, exact_divide: bool = False) -> torch.Tensor:
    """AveragePool; 1-D pools run as 2-D pools over a unit axis.

    ``exact_divide`` computes window sums divided by window counts even where torch's pool would do.
    """
    kernel, strides, _dilations, begins, ends = _geometry(ctx, x)
    one_d = len(kernel) == 1
    if one_d:
        x = x.unsqueeze(-2)
        kernel, strides, begins, ends = [1, *kernel], [1, *strides], [0, *begins], [0, *ends]
    ceil_mode = bool(ctx.attr("ceil_mode", 0))
    include_pad = bool(ctx.attr("count_include_pad", 0))
    pool = _AVG[len(kernel)]
    if not exact_divide and _fits_torch(kernel, begins, ends, [1] * len(kernel)):
        y = pool(x, kernel, strides, begins, ceil_mode=ceil_mode, count_include_pad=include_pad)
    else:
        padded = F.pad(x, torch_pad_order(begins, ends))
        total = pool(padded, kernel, strides, 0, ceil_mode=ceil_mode, divisor_override=1)
        if include_pad:
            # the divisor counts padded cells but not the overhang that ceil_mode adds past the pads
            ones = torch.ones((1, 1, *padded.shape[2:]), dtype=x.dtype, device=x.device)
        else:
            inside = torch.ones((1, 1, *x.shape[2:]), dtype=x.dtype, device=x.device)
            ones = F.pad(inside, torch_pad_order(begins, ends))
        count = pool(ones, kernel, strides, 0, ceil_mode=ceil_mode, divisor_override=1)
        y = total / count
    return y.squeeze(-2) if one_d else y


@register("GlobalAveragePool", since=(1, 22))
def global_average_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """GlobalAveragePool."""
    return x.mean(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool", since=(1, 22))
def global_max_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """GlobalMaxPool."""
    return x.amax(dim=tuple(range(2, x.dim())), keepdim=True)


@register("GlobalLpPool", since=(2, 22))
def global_lp_pool(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """GlobalLpPool."""
    p = float(ctx.attr("p", 2))
    return (x.abs() ** p).sum(dim=tuple(range(2, x.dim())), keepdim=True) ** (1.0 / p)
