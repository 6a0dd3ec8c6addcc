"""Conv and ConvTranspose (1-D, 2-D, 3-D; auto_pad, asymmetric pads, groups, dilations)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernelscope.mirror.ops._common import ints, symmetric_or_pad, torch_pad_order, window_pads
from kernelscope.mirror.registry import NodeContext, register

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _rank_check(ctx: NodeContext) -> str | None:
    kernel = ctx.attr("kernel_shape")
    if kernel is not None and len(kernel) not in _CONV:  # type: ignore[arg-type]
        return f"{len(kernel)}-D kernels"  # type: ignore[arg-type]
    return None


def conv_nd(ctx: NodeContext, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """ONNX Conv semantics on float tensors (used by Conv and the integer conv ops)."""
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    strides = ints(ctx.attr("strides"), [1] * n)
    dilations = ints(ctx.attr("dilations"), [1] * n)
    begins, ends = window_pads(ctx.attrs, list(x.shape[2:]), kernel, strides, dilations)
    x, padding = symmetric_or_pad(x, begins, ends)
    return _CONV[n](x, w, b, strides, padding, dilations, int(ctx.attr("group", 1)))


@register("Conv", since=(1, 11, 22), notes="1-D/2-D/3-D, auto_pad, asymmetric pads via F.pad", check=_rank_check)
def conv(ctx: NodeContext, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """Conv."""
    return conv_nd(ctx, x, w, b)


@register(
    "ConvTranspose",
    since=(1, 11, 22),
    notes="1-D/2-D/3-D, pads / output_padding / output_shape / auto_pad via an unpadded transpose then crop",
    check=_rank_check,
)
def conv_transpose(ctx: NodeContext, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """ConvTranspose: compute the full (unpadded) result, then crop / extend it the ONNX way."""
    n = w.dim() - 2
    kernel = list(w.shape[2:])
    sizes = list(x.shape[2:])
    strides = ints(ctx.attr("strides"), [1] * n)
    dilations = ints(ctx.attr("dilations"), [1] * n)
    out_pad = ints(ctx.attr("output_padding"), [0] * n)
    group = int(ctx.attr("group", 1))
    full = [s * (i - 1) + (k - 1) * d + 1 for i, k, s, d in zip(sizes, kernel, strides, dilations, strict=True)]
    output_shape = ints(ctx.attr("output_shape"), [])
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = output_shape[-n:] if output_shape else [i * s for i, s in zip(sizes, strides, strict=True)]
        totals = [f + p - t for f, p, t in zip(full, out_pad, target, strict=True)]
        begins = [t // 2 for t in totals] if auto_pad == "SAME_UPPER" else [t - t // 2 for t in totals]
        ends = [t - b_ for t, b_ in zip(totals, begins, strict=True)]
    elif auto_pad == "VALID":
        begins, ends = [0] * n, [0] * n
    else:
        pads = ints(ctx.attr("pads"), [0] * (2 * n))
        begins, ends = pads[:n], pads[n:]
    y = _CONV_T[n](x, w, None, strides, 0, 0, group, dilations)
    # output_padding adds zeros at the end, pads remove values at both ends: one F.pad with signed amounts.
    y = F.pad(y, torch_pad_order([-v for v in begins], [p - e for p, e in zip(out_pad, ends, strict=True)]))
    if b is not None:
        y = y + b.reshape([1, -1] + [1] * n)
    return y
