"""Quantization ops, mirrored so that gradients flow.

Quantized values are carried as floating tensors holding integers (integer tensors would stop autograd);
rounding uses a straight-through estimator, ``x + (round(x) - x).detach()``, so the backward pass sees the
identity where the forward pass rounds (half to even, as onnxruntime does). Integer ops (QLinearConv,
QLinearMatMul, ConvInteger, MatMulInteger) compute in the integer domain on these floats -- exact while
accumulators stay below 2**24 in float32 -- and requantize with onnxruntime's float multiplier
``x_scale * w_scale / y_scale``, which keeps them bit-compatible with onnxruntime in practice.
"""

from __future__ import annotations

import torch
from onnx import TensorProto

from kernelscope.mirror.ops._common import axis, per_axis
from kernelscope.mirror.ops.conv import conv_nd
from kernelscope.mirror.registry import NodeContext, register
from kernelscope.mirror.tensors import INT_RANGES, onnx_type_of

_QDQ_VERSIONS = (10, 13, 19, 21, 23, 24, 25, 28)


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even in the forward pass, identity in the backward pass."""
    return x + (torch.round(x) - x).detach()


def _qrange(ctx: NodeContext, zero_point: torch.Tensor | None) -> tuple[int, int]:
    """Saturation range of the quantized type: the zero point's type, else ``output_dtype``, else uint8."""
    if zero_point is not None and onnx_type_of(zero_point) in INT_RANGES:
        return INT_RANGES[onnx_type_of(zero_point)]  # type: ignore[index]
    output_dtype = int(ctx.attr("output_dtype", 0) or 0)
    return INT_RANGES.get(output_dtype, INT_RANGES[TensorProto.UINT8])


def _broadcast(ctx: NodeContext, param: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A per-tensor, per-axis or blocked scale / zero point shaped to broadcast against ``x``."""
    if param.numel() == 1 and int(ctx.attr("block_size", 0) or 0) == 0:
        return param.reshape(())
    dim = axis(int(ctx.attr("axis", 1)), x.dim())
    block = int(ctx.attr("block_size", 0) or 0)
    if block:
        param = param.repeat_interleave(block, dim=dim).narrow(dim, 0, x.shape[dim])
        return param
    return per_axis(param, dim, x.dim())


def _q_check(ctx: NodeContext) -> str | None:
    output_dtype = int(ctx.attr("output_dtype", 0) or 0)
    if output_dtype and output_dtype not in INT_RANGES:
        return f"output_dtype={TensorProto.DataType.Name(output_dtype)}"
    return None


@register(
    "QuantizeLinear",
    since=_QDQ_VERSIONS,
    notes="per-tensor, per-axis, blocked; integer types only (no float8/float4); rounding by straight-through "
    "estimator",
    check=_q_check,
)
def quantize_linear(
    ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None
) -> torch.Tensor:
    """QuantizeLinear: saturate(round(x / scale) + zero_point), as a float tensor holding integers."""
    lo, hi = _qrange(ctx, zero_point)
    x = x.to(ctx.dtype) if not x.is_floating_point() else x
    q = round_ste(x / _broadcast(ctx, scale.to(x.dtype), x))
    if zero_point is not None:
        q = q + _broadcast(ctx, zero_point.to(x.dtype), x)
    return torch.clamp(q, lo, hi)


@register("DequantizeLinear", since=_QDQ_VERSIONS, notes="per-tensor, per-axis, blocked; integer inputs")
def dequantize_linear(
    ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None
) -> torch.Tensor:
    """DequantizeLinear: (x - zero_point) * scale."""
    xf = x.to(ctx.dtype)
    if zero_point is not None:
        xf = xf - _broadcast(ctx, zero_point.to(ctx.dtype), xf)
    return xf * _broadcast(ctx, scale.to(ctx.dtype), xf)


@register("DynamicQuantizeLinear", since=(11,), notes="uint8; scale and zero point are treated as constants")
def dynamic_quantize_linear(ctx: NodeContext, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DynamicQuantizeLinear: uint8 quantization over the range of ``x`` (extended to include 0)."""
    # The quantization grid is a function of the batch; the straight-through gradient treats it as fixed.
    with torch.no_grad():
        lo = torch.clamp(x.min(), max=0.0)
        hi = torch.clamp(x.max(), min=0.0)
        scale = (hi - lo) / 255.0
        safe = torch.where(scale == 0, torch.ones_like(scale), scale)
        zero_point = torch.round(torch.clamp(0.0 - lo / safe, 0.0, 255.0))
    y = torch.clamp(round_ste(x / safe) + zero_point, 0, 255)
    return y, scale, zero_point.to(torch.uint8)


def _centered(value: torch.Tensor, zero_point: torch.Tensor | None, dtype: torch.dtype, dim: int) -> torch.Tensor:
    """``value - zero_point`` in float; a 1-D zero point applies along ``dim``."""
    v = value.to(dtype)
    if zero_point is None:
        return v
    zp = zero_point.to(dtype)
    zp = per_axis(zp.reshape(-1), dim, v.dim()) if zp.numel() > 1 else zp.reshape(())
    return v - zp


def _requantize(
    ctx: NodeContext, acc: torch.Tensor, multiplier: torch.Tensor, y_zero_point: torch.Tensor | None
) -> torch.Tensor:
    lo, hi = _qrange(ctx, y_zero_point)
    q = round_ste(acc * multiplier)
    if y_zero_point is not None:
        q = q + y_zero_point.to(acc.dtype).reshape(())
    return torch.clamp(q, lo, hi)


def _multiplier(a_scale: torch.Tensor, b_scale: torch.Tensor, y_scale: torch.Tensor, dtype: torch.dtype):
    # onnxruntime computes (a_scale * b_scale) / y_scale in float32; doing the same keeps rounding identical.
    a, b, y = (t.to(torch.float32) for t in (a_scale, b_scale, y_scale))
    return ((a.reshape(()) * b.reshape(-1)) / y.reshape(())).to(dtype)


@register("QLinearConv", since=(10,), notes="integer-domain conv, per-tensor or per-channel weights; STE rounding")
def qlinear_conv(
    ctx: NodeContext,
    x: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor,
    w: torch.Tensor,
    w_scale: torch.Tensor,
    w_zero_point: torch.Tensor,
    y_scale: torch.Tensor,
    y_zero_point: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """QLinearConv."""
    dtype = ctx.dtype
    xi = _centered(x, x_zero_point, dtype, 1)
    wi = _centered(w, w_zero_point, dtype, 0)
    acc = conv_nd(ctx, xi, wi, None if bias is None else bias.to(dtype))
    multiplier = _multiplier(x_scale, w_scale, y_scale, dtype)
    multiplier = per_axis(multiplier, 1, acc.dim()) if multiplier.numel() > 1 else multiplier.reshape(())
    return _requantize(ctx, acc, multiplier, y_zero_point)


@register("QLinearMatMul", since=(10, 21), notes="integer-domain matmul, per-tensor or per-column b; STE rounding")
def qlinear_matmul(
    ctx: NodeContext,
    a: torch.Tensor,
    a_scale: torch.Tensor,
    a_zero_point: torch.Tensor,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    b_zero_point: torch.Tensor,
    y_scale: torch.Tensor,
    y_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """QLinearMatMul."""
    dtype = ctx.dtype
    acc = torch.matmul(_centered(a, a_zero_point, dtype, a.dim() - 2), _centered(b, b_zero_point, dtype, b.dim() - 1))
    multiplier = _multiplier(a_scale, b_scale, y_scale, dtype)
    multiplier = multiplier if multiplier.numel() > 1 else multiplier.reshape(())
    return _requantize(ctx, acc, multiplier, y_zero_point)


@register("ConvInteger", since=(10,), notes="int32 result carried as float (exact below 2**24)")
def conv_integer(
    ctx: NodeContext,
    x: torch.Tensor,
    w: torch.Tensor,
    x_zero_point: torch.Tensor | None = None,
    w_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """ConvInteger: conv(x - x_zero_point, w - w_zero_point)."""
    return conv_nd(ctx, _centered(x, x_zero_point, ctx.dtype, 1), _centered(w, w_zero_point, ctx.dtype, 0))


@register("MatMulInteger", since=(10,), notes="int32 result carried as float (exact below 2**24)")
def matmul_integer(
    ctx: NodeContext,
    a: torch.Tensor,
    b: torch.Tensor,
    a_zero_point: torch.Tensor | None = None,
    b_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """MatMulInteger: (a - a_zero_point) @ (b - b_zero_point)."""
    # a's zero point is per row (axis -2 of a 2-D a), b's per column (its last axis)
    return torch.matmul(
        _centered(a, a_zero_point, ctx.dtype, a.dim() - 2), _centered(b, b_zero_point, ctx.dtype, b.dim() - 1)
    )
