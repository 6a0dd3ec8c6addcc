"""The ``com.microsoft`` quantized ops that onnxruntime's ``quantize_static`` (QOperator format) emits.

They follow onnxruntime's kernels: dequantize, compute in float, requantize with round-half-to-even (a
straight-through estimator, like every rounding in the mirror); QGemm and QLinearMul requantize integer
accumulators with onnxruntime's combined float multiplier.
"""

from __future__ import annotations

import torch

from kernelscope.mirror.ops.pooling import average_pool
from kernelscope.mirror.ops.quantization import _centered, _qrange, round_ste
from kernelscope.mirror.registry import MS_DOMAIN, NodeContext, register


def _dequantize(x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, dtype) -> torch.Tensor:
    return _centered(x, zero_point, dtype, 1) * scale.to(dtype).reshape(())


def _quantize(
    ctx: NodeContext, value: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None
) -> torch.Tensor:
    # onnxruntime's contrib pools round after adding the zero point (ties then follow its parity)
    lo, hi = _qrange(ctx, zero_point)
    q = value / scale.to(value.dtype).reshape(())
    if zero_point is not None:
        q = q + zero_point.to(value.dtype).reshape(())
    return torch.clamp(round_ste(q), lo, hi)


def _channels_first(ctx: NodeContext) -> str | None:
    return "channels_last=1" if int(ctx.attr("channels_last", 0) or 0) else None


@register(
    "QLinearAveragePool",
    since=1,
    domain=MS_DOMAIN,
    notes="dequantize, AveragePool, quantize; NCHW only",
    check=_channels_first,
)
def qlinear_average_pool(
    ctx: NodeContext,
    x: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor | None,
    y_scale: torch.Tensor,
    y_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """QLinearAveragePool."""
    value = _dequantize(x, x_scale, x_zero_point, ctx.dtype)
    # onnxruntime sums the window then divides by its size (not a multiply by 1/size): do the same
    pooled = average_pool(ctx, value, exact_divide=True)
    return _quantize(ctx, pooled, y_scale, y_zero_point)


@register(
    "QLinearGlobalAveragePool",
    since=1,
    domain=MS_DOMAIN,
    notes="dequantize, mean, quantize; NCHW only",
    check=_channels_first,
)
def qlinear_global_average_pool(
    ctx: NodeContext,
    x: torch.Tensor,
    x_scale: torch.Tensor,
    x_zero_point: torch.Tensor | None,
    y_scale: torch.Tensor,
    y_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """QLinearGlobalAveragePool."""
    value = _dequantize(x, x_scale, x_zero_point, ctx.dtype)
    return _quantize(ctx, value.mean(dim=tuple(range(2, x.dim())), keepdim=True), y_scale, y_zero_point)


@register("QGemm", since=1, domain=MS_DOMAIN, notes="integer-domain Gemm; float output when y_scale is absent")
def qgemm(
    ctx: NodeContext,
    a: torch.Tensor,
    a_scale: torch.Tensor,
    a_zero_point: torch.Tensor | None,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    b_zero_point: torch.Tensor | None,
    c: torch.Tensor | None = None,
    y_scale: torch.Tensor | None = None,
    y_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """QGemm: alpha * (A - a_zp)' (B - b_zp)' (+ C in the accumulator), requantized when y_scale is given."""
    dtype = ctx.dtype
    trans_b = bool(int(ctx.attr("transB", 0) or 0))
    ai = _centered(a, a_zero_point, dtype, 1)  # per-row zero points are not produced by the quantizer
    bi = _centered(b, b_zero_point, dtype, 0 if trans_b else 1)
    if int(ctx.attr("transA", 0) or 0):
        ai = ai.transpose(0, 1)
    if trans_b:
        bi = bi.transpose(0, 1)
    acc = ai @ bi
    if c is not None:
        acc = acc + c.to(dtype)
    alpha = float(ctx.attr("alpha", 1.0))
    scale = a_scale.to(torch.float32).reshape(()) * b_scale.to(torch.float32).reshape(-1) * alpha
    if y_scale is None:
        return acc * scale.to(dtype)
    multiplier = (scale / y_scale.to(torch.float32).reshape(())).to(dtype)
    lo, hi = _qrange(ctx, y_zero_point)
    q = round_ste(acc * multiplier)
    if y_zero_point is not None:
        q = q + y_zero_point.to(dtype).reshape(())
    return torch.clamp(q, lo, hi)


def _binary(
    ctx: NodeContext,
    a: torch.Tensor,
    a_scale: torch.Tensor,
    a_zero_point: torch.Tensor | None,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    b_zero_point: torch.Tensor | None,
    c_scale: torch.Tensor,
    c_zero_point: torch.Tensor | None,
    multiply: bool,
) -> torch.Tensor:
    dtype = ctx.dtype
    sa, sb, sc = (s.to(torch.float32).reshape(()) for s in (a_scale, b_scale, c_scale))
    za, zb, zc = (
        torch.zeros((), dtype=torch.float32, device=a.device) if z is None else z.to(torch.float32).reshape(())
        for z in (a_zero_point, b_zero_point, c_zero_point)
    )
    lo, hi = _qrange(ctx, c_zero_point)
    if multiply:
        value = (a.to(dtype) - za.to(dtype)) * (b.to(dtype) - zb.to(dtype)) * (sa * sb / sc).to(dtype) + zc.to(dtype)
    else:
        # onnxruntime's MLAS kernel: ratio_a * a + ratio_b * b + (zc - ratio_a * za - ratio_b * zb), in float32
        ra, rb = sa / sc, sb / sc
        offset = zc - ra * za - rb * zb
        value = a.to(dtype) * ra.to(dtype) + b.to(dtype) * rb.to(dtype) + offset.to(dtype)
    return torch.clamp(round_ste(value), lo, hi)


@register("QLinearAdd", since=1, domain=MS_DOMAIN, notes="per-tensor; (a - za) sa/sc + (b - zb) sb/sc, rounded")
def qlinear_add(ctx: NodeContext, *inputs: torch.Tensor) -> torch.Tensor:
    """QLinearAdd (com.microsoft)."""
    a, sa, za, b, sb, zb, sc, *zc = inputs
    return _binary(ctx, a, sa, za, b, sb, zb, sc, zc[0] if zc else None, multiply=False)


@register("QLinearMul", since=1, domain=MS_DOMAIN, notes="per-tensor; (a - za)(b - zb) sa sb / sc, rounded")
def qlinear_mul(ctx: NodeContext, *inputs: torch.Tensor) -> torch.Tensor:
    """QLinearMul (com.microsoft)."""
    a, sa, za, b, sb, zb, sc, *zc = inputs
    return _binary(ctx, a, sa, za, b, sb, zb, sc, zc[0] if zc else None, multiply=True)
