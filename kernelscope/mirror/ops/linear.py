"""Gemm and MatMul."""

from __future__ import annotations

import torch

from kernelscope.mirror.registry import NodeContext, register


@register("Gemm", since=(7, 9, 11, 13), notes="alpha, beta, transA, transB; C optional (unidirectional broadcast)")
def gemm(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
    """Gemm: alpha * A' B' + beta * C."""
    if ctx.attr("transA", 0):
        a = a.transpose(0, 1)
    if ctx.attr("transB", 0):
        b = b.transpose(0, 1)
    y = a @ b
    alpha = float(ctx.attr("alpha", 1.0))
    if alpha != 1.0:
        y = y * alpha
    if c is not None:
        beta = float(ctx.attr("beta", 1.0))
        y = y + (c * beta if beta != 1.0 else c)
    return y


@register("MatMul", since=(1, 9, 13), notes="numpy matmul semantics (torch.matmul)")
def matmul(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MatMul."""
    return torch.matmul(a, b)
