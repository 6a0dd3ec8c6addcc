"""Activations (Relu family, sigmoids, Gelu, Clip) and Softmax / LogSoftmax / Hardmax."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kernelscope.mirror.ops._common import axis
from kernelscope.mirror.registry import NodeContext, register


@register("Relu", since=(6, 13, 14))
def relu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Relu."""
    return torch.relu(x)


@register("LeakyRelu", since=(6, 16))
def leaky_relu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """LeakyRelu."""
    return F.leaky_relu(x, float(ctx.attr("alpha", 0.01)))


@register("PRelu", since=(7, 9, 16), notes="slope broadcast to the input (unidirectional)")
def prelu(ctx: NodeContext, x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    """PRelu; written with where() because F.prelu wants a per-channel slope only."""
    return torch.where(x < 0, x * slope, x)


@register("Elu", since=(6, 22))
def elu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Elu."""
    return F.elu(x, float(ctx.attr("alpha", 1.0)))


@register("Celu", since=(12,))
def celu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Celu."""
    return F.celu(x, float(ctx.attr("alpha", 1.0)))


@register("Selu", since=(6, 22))
def selu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Selu with the node's alpha / gamma."""
    alpha = float(ctx.attr("alpha", 1.67326319217681884765625))
    gamma = float(ctx.attr("gamma", 1.05070102214813232421875))
    return gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("ThresholdedRelu", since=(10, 22))
def thresholded_relu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """ThresholdedRelu."""
    return torch.where(x > float(ctx.attr("alpha", 1.0)), x, torch.zeros_like(x))


@register("Sigmoid", since=(6, 13))
def sigmoid(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Sigmoid."""
    return torch.sigmoid(x)


@register("HardSigmoid", since=(6, 22))
def hard_sigmoid(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """HardSigmoid: clip(alpha x + beta, 0, 1)."""
    return torch.clamp(float(ctx.attr("alpha", 0.2)) * x + float(ctx.attr("beta", 0.5)), 0.0, 1.0)


@register("HardSwish", since=(14, 22))
def hard_swish(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """HardSwish: x * clip(x / 6 + 1/2, 0, 1)."""
    return x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@register("Tanh", since=(6, 13))
def tanh(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Tanh."""
    return torch.tanh(x)


@register("Softplus", since=(1, 22), notes="exact log(1 + exp(x)) (F.softplus with threshold above float range)")
def softplus(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Softplus."""
    return F.softplus(x, beta=1.0, threshold=50.0 if x.dtype == torch.float64 else 30.0)


@register("Softsign", since=(1, 22))
def softsign(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Softsign."""
    return F.softsign(x)


@register("Mish", since=(18, 22))
def mish(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Mish."""
    return F.mish(x)


@register("Gelu", since=(20,), notes="approximate='none' and 'tanh'")
def gelu(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Gelu."""
    return F.gelu(x, approximate=str(ctx.attr("approximate", "none")))


@register("Clip", since=(6, 11, 12, 13), notes="min/max attributes before opset 11, optional inputs from 11")
def clip(
    ctx: NodeContext, x: torch.Tensor, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None
) -> torch.Tensor:
    """Clip."""
    if ctx.since < 11:
        lo_v, hi_v = ctx.attr("min"), ctx.attr("max")
        return torch.clamp(x, min=None if lo_v is None else float(lo_v), max=None if hi_v is None else float(hi_v))
    if lo is not None:
        x = torch.maximum(x, lo.to(x.dtype))
    if hi is not None:
        x = torch.minimum(x, hi.to(x.dtype))
    return x


def _coerced(x: torch.Tensor, axis_: int, fn) -> torch.Tensor:
    # Before opset 13 (Log)Softmax flattens to 2-D at ``axis`` and normalizes over the whole trailing block.
    shape = x.shape
    rows = math.prod(shape[:axis_])
    return fn(x.reshape(rows, -1), 1).reshape(shape)


def _softmax_like(ctx: NodeContext, x: torch.Tensor, fn) -> torch.Tensor:
    if ctx.since < 13:
        return _coerced(x, axis(int(ctx.attr("axis", 1)), x.dim()), fn)
    return fn(x, axis(int(ctx.attr("axis", -1)), x.dim()))


_SOFTMAX_NOTES = "opset < 13: coerce to 2-D at axis; >= 13: one axis"


@register("Softmax", since=(1, 11, 13), notes=_SOFTMAX_NOTES)
def softmax(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Softmax."""
    return _softmax_like(ctx, x, lambda t, d: torch.softmax(t, d))


@register("LogSoftmax", since=(1, 11, 13), notes=_SOFTMAX_NOTES)
def log_softmax(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """LogSoftmax."""
    return _softmax_like(ctx, x, lambda t, d: torch.log_softmax(t, d))


def _hardmax(t: torch.Tensor, d: int) -> torch.Tensor:
    return F.one_hot(torch.argmax(t, d), t.shape[d]).movedim(-1, d).to(t.dtype)


@register("Hardmax", since=(1, 11, 13), notes=_SOFTMAX_NOTES + "; no gradient")
def hardmax(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Hardmax (first maximum wins)."""
    return _softmax_like(ctx, x, _hardmax)
