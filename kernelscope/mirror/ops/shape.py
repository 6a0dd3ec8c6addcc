"""Shape and layout ops: Reshape, Flatten, Transpose, (Un)Squeeze, Concat, Split, Slice, Gather, Shape, Size,
Expand, Tile, Pad.

Shape tensors are int64 torch tensors computed at run time, so graphs that read the batch size with
``Shape`` keep working with any batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernelscope.mirror.ops._common import axis, torch_pad_order
from kernelscope.mirror.registry import NodeContext, register
from kernelscope.mirror.tensors import to_ints

_NEW_TYPES = (21, 23, 24, 25)  # later since_versions that only add element types


@register("Reshape", since=(5, 13, 14, 19, *_NEW_TYPES), notes="0 copies a dim (unless allowzero), -1 infers")
def reshape(ctx: NodeContext, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    """Reshape."""
    dims = to_ints(shape)
    if not int(ctx.attr("allowzero", 0)):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    return x.reshape(dims)


@register("Flatten", since=(1, 9, 11, 13, *_NEW_TYPES))
def flatten(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Flatten to 2-D at ``axis``."""
    at = axis(int(ctx.attr("axis", 1)), x.dim())
    return x.reshape(math.prod(x.shape[:at]), math.prod(x.shape[at:]))


@register("Transpose", since=(1, 13, *_NEW_TYPES))
def transpose(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Transpose (default: reverse the axes)."""
    perm = ctx.attr("perm")
    # a tuple, never ``*dims``: a 0-d tensor has no axes to list
    return x.permute(tuple(list(perm) if perm else range(x.dim() - 1, -1, -1)))  # type: ignore[arg-type]


def _axes(ctx: NodeContext, axes: torch.Tensor | None) -> list[int] | None:
    # Before opset 13 axes are an attribute; from 13 an optional input.
    if ctx.since < 13:
        value = ctx.attr("axes")
        return [int(a) for a in value] if value else None  # type: ignore[union-attr]
    return to_ints(axes) if axes is not None else None


@register("Squeeze", since=(1, 11, 13, *_NEW_TYPES), notes="axes attribute before opset 13, input from 13")
def squeeze(ctx: NodeContext, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    """Squeeze."""
    dims = _axes(ctx, axes)
    if dims is None:
        return x.squeeze()
    return x.squeeze(tuple(axis(a, x.dim()) for a in dims)) if dims else x


@register("Unsqueeze", since=(1, 11, 13, *_NEW_TYPES), notes="axes attribute before opset 13, input from 13")
def unsqueeze(ctx: NodeContext, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
    """Unsqueeze (axes refer to the output's rank)."""
    dims = _axes(ctx, axes) or []
    rank = x.dim() + len(dims)
    for a in sorted(axis(a, rank) for a in dims):
        x = x.unsqueeze(a)
    return x


@register("Concat", since=(4, 11, 13))
def concat(ctx: NodeContext, *xs: torch.Tensor) -> torch.Tensor:
    """Concat."""
    return torch.cat(xs, dim=axis(int(ctx.attr("axis")), xs[0].dim()))


@register("Split", since=(2, 11, 13, 18), notes="split attribute / input, equal parts, num_outputs (18)")
def split(ctx: NodeContext, x: torch.Tensor, sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Split."""
    dim = axis(int(ctx.attr("axis", 0)), x.dim())
    parts = to_ints(sizes) if ctx.since >= 13 else [int(s) for s in (ctx.attr("split") or [])]  # type: ignore[union-attr]
    if not parts:
        count = int(ctx.attr("num_outputs", 0) or ctx.num_outputs)
        # equal parts; from opset 18 the last one may be smaller
        chunk = math.ceil(x.shape[dim] / count)
        parts = [min(chunk, x.shape[dim] - i * chunk) for i in range(count)]
    return tuple(torch.split(x, parts, dim=dim))


def _slice(x: torch.Tensor, starts: list[int], ends: list[int], axes: list[int], steps: list[int]) -> torch.Tensor:
    index: list[slice] = [slice(None)] * x.dim()
    flips: list[tuple[int, int, int, int]] = []
    for start, end, ax, step in zip(starts, ends, axes, steps, strict=True):
        ax = axis(ax, x.dim())
        # Python's slice clamping is ONNX's clamping (including INT64 min/max sentinels).
        lo, hi, st = slice(start, end, step).indices(x.shape[ax])
        if st > 0:
            index[ax] = slice(lo, hi, st)
        else:
            flips.append((ax, lo, hi, st))
    y = x[tuple(index)]
    for ax, lo, hi, st in flips:  # torch has no negative steps: gather the indices explicitly
        picks = torch.arange(lo, hi, st, device=x.device)
        y = y.index_select(ax, picks)
    return y


@register("Slice", since=(1, 10, 11, 13), notes="attributes before opset 10, inputs from 10; negative steps")
def slice_(
    ctx: NodeContext,
    x: torch.Tensor,
    starts: torch.Tensor | None = None,
    ends: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
    steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Slice."""
    if ctx.since < 10:
        s, e = [int(v) for v in ctx.attr("starts")], [int(v) for v in ctx.attr("ends")]  # type: ignore[union-attr]
        a = [int(v) for v in (ctx.attr("axes") or range(len(s)))]  # type: ignore[union-attr]
        return _slice(x, s, e, a, [1] * len(s))
    s, e = to_ints(starts), to_ints(ends)
    a = to_ints(axes) if axes is not None else list(range(len(s)))
    st = to_ints(steps) if steps is not None else [1] * len(s)
    return _slice(x, s, e, a, st)


@register("Gather", since=(1, 11, 13), notes="negative indices")
def gather(ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Gather along ``axis``."""
    dim = axis(int(ctx.attr("axis", 0)), x.dim())
    idx = indices.long()
    idx = torch.where(idx < 0, idx + x.shape[dim], idx)
    picked = x.index_select(dim, idx.reshape(-1))
    # a 0-d index into a 1-D tensor (``x.size(0)``: Shape -> Gather) gives a 0-d result: an empty shape tuple
    return picked.reshape((*x.shape[:dim], *idx.shape, *x.shape[dim + 1 :]))


@register("GatherElements", since=(11, 13))
def gather_elements(ctx: NodeContext, x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """GatherElements."""
    dim = axis(int(ctx.attr("axis", 0)), x.dim())
    idx = indices.long()
    return torch.gather(x, dim, torch.where(idx < 0, idx + x.shape[dim], idx))


@register("Shape", since=(1, 13, 15, 19, *_NEW_TYPES), notes="start / end (15)")
def shape(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Shape as an int64 tensor."""
    dims = list(x.shape)
    rank = len(dims)
    start = int(ctx.attr("start", 0) or 0)
    end = ctx.attr("end")
    start = min(max(start + rank if start < 0 else start, 0), rank)
    stop = rank if end is None else int(end)  # type: ignore[arg-type]
    stop = min(max(stop + rank if stop < 0 else stop, 0), rank)
    return torch.tensor(dims[start:stop], dtype=torch.int64, device=x.device)


@register("Size", since=(1, 13, 19, *_NEW_TYPES))
def size(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Number of elements as an int64 scalar."""
    return torch.tensor(x.numel(), dtype=torch.int64, device=x.device)


@register("Expand", since=(8, 13), notes="bidirectional broadcast")
def expand(ctx: NodeContext, x: torch.Tensor, shape_: torch.Tensor) -> torch.Tensor:
    """Expand."""
    return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(to_ints(shape_))))


@register("Tile", since=(6, 13))
def tile(ctx: NodeContext, x: torch.Tensor, repeats: torch.Tensor) -> torch.Tensor:
    """Tile."""
    return x.repeat(tuple(to_ints(repeats)))  # a 0-d input has empty repeats


_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}


def _pad_check(ctx: NodeContext) -> str | None:
    mode = str(ctx.attr("mode", "constant"))
    return None if mode in _PAD_MODES else f"mode={mode}"


@register(
    "Pad",
    since=(2, 11, 13, 18, 19, 21, 23, 24, 25),
    notes="pads attribute before opset 11, inputs from 11 (axes from 18); constant/reflect/edge/wrap",
    check=_pad_check,
)
def pad(
    ctx: NodeContext,
    x: torch.Tensor,
    pads: torch.Tensor | None = None,
    value: torch.Tensor | None = None,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pad."""
    rank = x.dim()
    if ctx.since < 11:
        amounts = [int(p) for p in ctx.attr("pads")]  # type: ignore[union-attr]
        fill = float(ctx.attr("value", 0.0))
        axes_ = list(range(rank))
    else:
        amounts = to_ints(pads)
        fill = float(value.reshape(-1)[0]) if value is not None and value.numel() else 0.0
        axes_ = [axis(a, rank) for a in to_ints(axes)] if axes is not None else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    half = len(axes_)
    for i, a in enumerate(axes_):
        begins[a], ends[a] = amounts[i], amounts[half + i]
    # F.pad pads the trailing axes; leading axes without padding need not be listed.
    first = next((i for i in range(rank) if begins[i] or ends[i]), rank)
    if first == rank:
        return x
    mode = _PAD_MODES[str(ctx.attr("mode", "constant"))]
    order = torch_pad_order(begins[first:], ends[first:])
    if mode == "constant":
        return F.pad(x, order, value=fill)
    # torch's other modes pad the trailing 1-3 axes of a (C, spatial...) tensor: fold the leading axes into C
    folded = x.reshape(-1, *x.shape[first:])
    y = F.pad(folded, order, mode=mode)
    return y.reshape((*x.shape[:first], *y.shape[1:]))
