"""BatchNormalization (inference), InstanceNormalization, LayerNormalization, LRN."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernelscope.mirror.ops._common import axis
from kernelscope.mirror.registry import NodeContext, register


def _bn_check(ctx: NodeContext) -> str | None:
    if ctx.since < 9 and int(ctx.attr("spatial", 1)) == 0:
        return "spatial=0"
    return None


@register(
    "BatchNormalization",
    since=(7, 9, 14, 15),
    notes="inference: running mean/var (training_mode and the training outputs are ignored)",
    check=_bn_check,
)
def batch_norm(
    ctx: NodeContext,
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
) -> torch.Tensor:
    """BatchNormalization with the stored statistics."""
    eps = float(ctx.attr("epsilon", 1e-5))
    if x.dim() == 1 or x.shape[0] == 0:
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + eps) * scale.reshape(shape) + bias.reshape(
            shape
        )
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=eps)


@register("InstanceNormalization", since=(6, 22))
def instance_norm(ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """InstanceNormalization."""
    return F.instance_norm(x, weight=scale, bias=bias, eps=float(ctx.attr("epsilon", 1e-5)))


@register("LayerNormalization", since=(17,), notes="any axis; Mean / InvStdDev outputs supported")
def layer_norm(
    ctx: NodeContext, x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """LayerNormalization over axes ``axis..rank-1``."""
    first = axis(int(ctx.attr("axis", -1)), x.dim())
    dims = tuple(range(first, x.dim()))
    mean = x.mean(dim=dims, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
    inv_std = torch.rsqrt(var + float(ctx.attr("epsilon", 1e-5)))
    y = (x - mean) * inv_std * scale
    if bias is not None:
        y = y + bias
    return y, mean, inv_std


@register("LRN", since=(1, 13), notes="ONNX window: floor((size-1)/2) channels before, ceil((size-1)/2) after")
def lrn(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
    """Local response normalization across channels."""
    size = int(ctx.attr("size"))
    alpha, beta, bias = float(ctx.attr("alpha", 1e-4)), float(ctx.attr("beta", 0.75)), float(ctx.attr("bias", 1.0))
    # F.local_response_norm centres even windows the other way, so sum the window explicitly.
    square = (x * x).unsqueeze(1)  # N,1,C,...
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    pad = [0, 0] * (x.dim() - 2) + [before, after]
    windows = F.pad(square, pad).squeeze(1).unfold(1, size, 1)  # N,C,...,size
    total = windows.sum(-1)
    return x / (bias + alpha / size * total) ** beta
