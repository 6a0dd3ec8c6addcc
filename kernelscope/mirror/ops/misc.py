"""Constant, ConstantOfShape, Range, Identity, Dropout, Cast, CastLike."""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch

from kernelscope.mirror.registry import NodeContext, register
from kernelscope.mirror.tensors import from_numpy, to_ints, torch_dtype

_NEW_TYPES = (21, 23, 24, 25)


def _constant_check(ctx: NodeContext) -> str | None:
    if ctx.has_attr("sparse_value"):
        return "sparse_value"
    if ctx.has_attr("value_string") or ctx.has_attr("value_strings"):
        return "string values"
    return None


def constant_value(ctx: NodeContext) -> torch.Tensor:
    """The value a ``Constant`` node holds, as a mirror tensor."""
    attrs = ctx.attrs
    if "value" in attrs:
        return from_numpy(onnx.numpy_helper.to_array(attrs["value"]), ctx.dtype)  # type: ignore[arg-type]
    for name, dtype in (("value_float", np.float32), ("value_floats", np.float32)):
        if name in attrs:
            return from_numpy(np.array(attrs[name], dtype=dtype), ctx.dtype)
    for name in ("value_int", "value_ints"):
        if name in attrs:
            return from_numpy(np.array(attrs[name], dtype=np.int64), ctx.dtype)
    raise ValueError(f"Constant node {ctx.label!r} holds no value")


@register("Constant", since=(1, 9, 11, 12, 13, 19, *_NEW_TYPES), notes="precomputed once", check=_constant_check)
def constant(ctx: NodeContext) -> torch.Tensor:
    """Constant (the mirror precomputes these at construction)."""
    return constant_value(ctx)


@register("ConstantOfShape", since=(9, 20, *_NEW_TYPES))
def constant_of_shape(ctx: NodeContext, shape: torch.Tensor) -> torch.Tensor:
    """ConstantOfShape (default: float32 zeros)."""
    value = ctx.attr("value")
    fill = from_numpy(onnx.numpy_helper.to_array(value), ctx.dtype) if value is not None else None  # type: ignore[arg-type]
    if fill is None:
        fill = torch.zeros((), dtype=ctx.dtype)
    return torch.full(to_ints(shape), fill.reshape(-1)[0].item(), dtype=fill.dtype, device=shape.device)


@register("Range", since=(11, 27))
def range_(ctx: NodeContext, start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Range: max(ceil((limit - start) / delta), 0) elements (empty when the bounds and the step disagree)."""
    first, stop, step = start.item(), limit.item(), delta.item()
    count = max(math.ceil((stop - first) / step), 0)
    if count == 0:  # torch.arange refuses bounds inconsistent with the step's sign; ONNX gives an empty tensor
        return torch.empty(0, dtype=start.dtype, device=start.device)
    return torch.arange(first, stop, step, dtype=start.dtype, device=start.device)


@register("Identity", since=(1, 13, 14, 16, 19, *_NEW_TYPES))
def identity(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Identity."""
    return x


@register("Dropout", since=(7, 10, 12, 13, 22), notes="inference: identity, mask all true")
def dropout(ctx: NodeContext, x: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropout at inference: the input, and an all-true mask when one is asked for."""
    return x, torch.ones_like(x, dtype=torch.bool)


def _cast_check(ctx: NodeContext) -> str | None:
    try:
        torch_dtype(int(ctx.attr("to")), torch.float32)  # type: ignore[arg-type]
    except TypeError:
        return f"to={onnx.TensorProto.DataType.Name(int(ctx.attr('to')))}"  # type: ignore[arg-type]
    return None


def cast_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Cast with ONNX's conventions: float -> int truncates toward zero, float -> bool is x != 0."""
    if x.dtype == dtype:
        return x
    if dtype == torch.bool:
        return x != 0
    return x.to(dtype)


@register(
    "Cast",
    since=(6, 9, 13, 19, *_NEW_TYPES, 28),
    notes="every float type casts to the mirror's float dtype (float16 computes in float32)",
    check=_cast_check,
)
def cast(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Cast."""
    return cast_to(x, torch_dtype(int(ctx.attr("to")), ctx.dtype))  # type: ignore[arg-type]


@register("CastLike", since=(15, 19, *_NEW_TYPES))
def cast_like(ctx: NodeContext, x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """CastLike."""
    return cast_to(x, like.dtype)
