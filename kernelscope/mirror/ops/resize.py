"""Resize and Upsample: nearest and (bi/tri)linear, separably per axis with explicit source coordinates.

Each resized axis maps output index i to a source coordinate with the ONNX coordinate transformation,
then picks (nearest) or blends (linear) input samples with index_select, so every ONNX rounding rule is
reproduced exactly and gradients flow to the input.
"""

from __future__ import annotations

import math

import torch

from kernelscope.mirror.ops._common import axis
from kernelscope.mirror.registry import NodeContext, register
from kernelscope.mirror.tensors import to_ints

_COORDINATE_MODES = {
    "half_pixel",
    "pytorch_half_pixel",
    "align_corners",
    "asymmetric",
    "half_pixel_symmetric",
    "tf_half_pixel_for_nn",
}
_NEAREST_MODES = {"round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple"}


def _source(mode: str, out_len: int, in_len: int, scale: float, device: torch.device) -> torch.Tensor:
    """Source coordinate of every output index along one axis (float32, as onnxruntime computes it)."""
    i = torch.arange(out_len, dtype=torch.float32, device=device)
    if mode == "half_pixel":
        return (i + 0.5) / scale - 0.5
    if mode == "pytorch_half_pixel":
        return (i + 0.5) / scale - 0.5 if out_len > 1 else torch.zeros_like(i)
    if mode == "align_corners":
        return i * ((in_len - 1) / (out_len - 1)) if out_len > 1 else torch.zeros_like(i)
    if mode == "tf_half_pixel_for_nn":
        return (i + 0.5) / scale
    if mode == "half_pixel_symmetric":
        adjustment = out_len / (scale * in_len)
        offset = in_len / 2 * (1 - adjustment)
        return offset + (i + 0.5) / scale - 0.5
    return i / scale  # asymmetric


def _nearest_index(coord: torch.Tensor, mode: str, in_len: int, downsampling: bool) -> torch.Tensor:
    if mode == "floor":
        index = torch.floor(coord)
    elif mode == "ceil":
        index = torch.ceil(coord)
    elif mode == "simple":  # onnxruntime's rule for Upsample and Resize-10
        index = torch.ceil(coord) if downsampling else torch.floor(coord)
    else:
        frac = coord - torch.floor(coord)
        halfway = frac == 0.5
        rounded = torch.floor(coord + 0.5)
        tie = torch.floor(coord) if mode == "round_prefer_floor" else torch.ceil(coord)
        index = torch.where(halfway, tie, rounded)
    return index.clamp(0, in_len - 1).long()


def _resize_axis(
    x: torch.Tensor, dim: int, out_len: int, scale: float, mode: str, coord_mode: str, nearest_mode: str
) -> torch.Tensor:
    in_len = x.shape[dim]
    if out_len == in_len and scale == 1.0:
        return x
    coord = _source(coord_mode, out_len, in_len, scale, x.device)
    if mode == "nearest":
        return x.index_select(dim, _nearest_index(coord, nearest_mode, in_len, scale < 1.0))
    coord = coord.clamp(0, in_len - 1)
    lo = torch.floor(coord)
    weight = (coord - lo).to(x.dtype)
    lo_i = lo.long()
    hi_i = (lo_i + 1).clamp(max=in_len - 1)
    shape = [1] * x.dim()
    shape[dim] = out_len
    weight = weight.reshape(shape)
    return x.index_select(dim, lo_i) * (1 - weight) + x.index_select(dim, hi_i) * weight


def _run(
    x: torch.Tensor, scales: list[float], sizes: list[int], axes: list[int], mode: str, coord: str, nearest: str
) -> torch.Tensor:
    for i, dim in enumerate(axes):
        in_len = x.shape[dim]
        if sizes:
            out_len = sizes[i]
            scale = out_len / in_len
        else:
            scale = scales[i]
            out_len = math.floor(in_len * scale)
        x = _resize_axis(x, dim, out_len, scale, mode, coord, nearest)
    return x


def _mode(ctx: NodeContext) -> str:
    mode = str(ctx.attr("mode", "nearest"))
    return "linear" if mode in ("linear", "bilinear", "trilinear") else mode


def _resize_check(ctx: NodeContext) -> str | None:
    if _mode(ctx) not in ("nearest", "linear"):
        return f"mode={ctx.attr('mode')}"
    coord = str(ctx.attr("coordinate_transformation_mode", "half_pixel"))
    if ctx.since >= 11 and coord not in _COORDINATE_MODES:
        return f"coordinate_transformation_mode={coord}"
    if ctx.since >= 11 and str(ctx.attr("nearest_mode", "round_prefer_floor")) not in _NEAREST_MODES:
        return f"nearest_mode={ctx.attr('nearest_mode')}"
    if int(ctx.attr("antialias", 0) or 0):
        return "antialias=1"
    if str(ctx.attr("keep_aspect_ratio_policy", "stretch")) != "stretch":
        return f"keep_aspect_ratio_policy={ctx.attr('keep_aspect_ratio_policy')}"
    return None


@register(
    "Resize",
    since=(10, 11, 13, 18, 19),
    notes="nearest (all nearest_modes) and linear; coordinate modes half_pixel, pytorch_half_pixel, align_corners, "
    "asymmetric, half_pixel_symmetric, tf_half_pixel_for_nn; axes; not cubic, antialias, tf_crop_and_resize",
    check=_resize_check,
)
def resize(
    ctx: NodeContext,
    x: torch.Tensor,
    roi_or_scales: torch.Tensor | None = None,
    scales: torch.Tensor | None = None,
    sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resize."""
    if ctx.since == 10:  # inputs (X, scales); asymmetric coordinates like Upsample
        factors = [float(s) for s in roi_or_scales.reshape(-1).tolist()]  # type: ignore[union-attr]
        return _run(x, factors, [], list(range(x.dim())), _mode(ctx), "asymmetric", "simple")
    axes_attr = ctx.attr("axes")
    axes = [axis(int(a), x.dim()) for a in axes_attr] if axes_attr else list(range(x.dim()))  # type: ignore[union-attr]
    factors = [float(s) for s in scales.reshape(-1).tolist()] if scales is not None and scales.numel() else []
    out_sizes = to_ints(sizes) if sizes is not None and sizes.numel() else []
    coord = str(ctx.attr("coordinate_transformation_mode", "half_pixel"))
    nearest = str(ctx.attr("nearest_mode", "round_prefer_floor"))
    return _run(x, factors, out_sizes, axes, _mode(ctx), coord, nearest)


def _upsample_check(ctx: NodeContext) -> str | None:
    mode = _mode(ctx)
    return None if mode in ("nearest", "linear") else f"mode={mode}"


@register(
    "Upsample",
    since=(7, 9, 10),
    notes="nearest and linear, asymmetric coordinates (scales attribute at 7, input from 9)",
    check=_upsample_check,
)
def upsample(ctx: NodeContext, x: torch.Tensor, scales: torch.Tensor | None = None) -> torch.Tensor:
    """Upsample (deprecated in favour of Resize)."""
    if ctx.since < 9:
        factors = [float(s) for s in ctx.attr("scales")]  # type: ignore[union-attr]
    else:
        factors = [float(s) for s in scales.reshape(-1).tolist()]  # type: ignore[union-attr]
    return _run(x, factors, [], list(range(x.dim())), _mode(ctx), "asymmetric", "simple")
