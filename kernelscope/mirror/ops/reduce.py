"""Reductions (axes as attribute or, from opset 18 / ReduceSum 13, as input) and ArgMax / ArgMin."""

from __future__ import annotations

import torch

from kernelscope.mirror.ops._common import axis
from kernelscope.mirror.registry import NodeContext, register
from kernelscope.mirror.tensors import to_ints


def _reduce_dims(ctx: NodeContext, x: torch.Tensor, axes: torch.Tensor | None, input_from: int) -> tuple | None:
    """The axes to reduce; ``()`` means "none" (noop_with_empty_axes), ``None`` means all."""
    if ctx.since >= input_from:
        dims = to_ints(axes) if axes is not None else []
        if not dims:
            return () if int(ctx.attr("noop_with_empty_axes", 0)) else None
    else:
        dims = [int(a) for a in (ctx.attr("axes") or [])]  # type: ignore[union-attr]
        if not dims:
            return None
    return tuple(sorted({axis(a, x.dim()) for a in dims}))


def _sum(x, d, k):
    return torch.sum(x, dim=d, keepdim=k)


def _mean(x, d, k):
    return torch.mean(x, dim=d, keepdim=k)


def _max(x, d, k):
    return torch.amax(x, dim=d, keepdim=k)


def _min(x, d, k):
    return torch.amin(x, dim=d, keepdim=k)


def _prod(x, d, k):
    for dim in sorted(d, reverse=True):
        x = torch.prod(x, dim=dim, keepdim=k)
    return x


def _l1(x, d, k):
    return torch.sum(x.abs(), dim=d, keepdim=k)


def _l2(x, d, k):
    return torch.sqrt(torch.sum(x * x, dim=d, keepdim=k))


def _sum_square(x, d, k):
    return torch.sum(x * x, dim=d, keepdim=k)


def _log_sum_exp(x, d, k):
    return torch.logsumexp(x, dim=d, keepdim=k)


def _log_sum(x, d, k):
    return torch.log(torch.sum(x, dim=d, keepdim=k))


_REDUCTIONS = {
    # op: (since_versions, first version with axes as an input, fn)
    "ReduceSum": ((1, 11, 13), 13, _sum),
    "ReduceMean": ((1, 11, 13, 18), 18, _mean),
    "ReduceMax": ((1, 11, 12, 13, 18, 20), 18, _max),
    "ReduceMin": ((1, 11, 12, 13, 18, 20), 18, _min),
    "ReduceProd": ((1, 11, 13, 18), 18, _prod),
    "ReduceL1": ((1, 11, 13, 18), 18, _l1),
    "ReduceL2": ((1, 11, 13, 18), 18, _l2),
    "ReduceSumSquare": ((1, 11, 13, 18), 18, _sum_square),
    "ReduceLogSumExp": ((1, 11, 13, 18), 18, _log_sum_exp),
    "ReduceLogSum": ((1, 11, 13, 18), 18, _log_sum),
}


#: What onnxruntime returns for noop_with_empty_axes=1 without axes: the reduction's elementwise part only.
_NOOP = {
    "ReduceL1": torch.abs,
    "ReduceL2": torch.abs,
    "ReduceSumSquare": lambda x: x * x,
    "ReduceLogSum": torch.log,
}


def _reduction(op_type: str, since: tuple[int, ...], input_from: int, fn) -> None:
    noop = _NOOP.get(op_type, lambda x: x)

    def impl(ctx: NodeContext, x: torch.Tensor, axes: torch.Tensor | None = None) -> torch.Tensor:
        dims = _reduce_dims(ctx, x, axes, input_from)
        if dims == ():
            return noop(x)
        keep = bool(int(ctx.attr("keepdims", 1)))
        if dims is None:
            dims = tuple(range(x.dim()))
        if x.dim() == 0:
            return x
        return fn(x, dims, keep)

    impl.__name__ = op_type.lower()
    impl.__doc__ = f"{op_type}."
    register(op_type, since=since, notes=f"axes attribute before opset {input_from}, input from {input_from}")(impl)


for _op, (_since, _from, _fn) in _REDUCTIONS.items():
    _reduction(_op, _since, _from, _fn)


def _arg(ctx: NodeContext, x: torch.Tensor, fn) -> torch.Tensor:
    dim = axis(int(ctx.attr("axis", 0)), x.dim())
    keep = bool(int(ctx.attr("keepdims", 1)))
    if int(ctx.attr("select_last_index", 0)):
        flipped = fn(torch.flip(x, (dim,)), dim=dim, keepdim=keep)
        return x.shape[dim] - 1 - flipped
    return fn(x, dim=dim, keepdim=keep)


@register("ArgMax", since=(1, 11, 12, 13), notes="select_last_index (12)")
def arg_max(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """ArgMax (int64)."""
    return _arg(ctx, x, torch.argmax)


@register("ArgMin", since=(1, 11, 12, 13), notes="select_last_index (12)")
def arg_min(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """ArgMin (int64)."""
    return _arg(ctx, x, torch.argmin)
