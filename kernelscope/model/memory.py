"""Sizing onnxruntime runs by a memory budget: how many (variant, image) pairs one scoring run may hold.

A scoring run evaluates V kernel variants of N images as one batch of V·N, so its activations grow with V·N.
A fixed count (1,024 variant-images) is harmless at 32 pixels and tens of gigabytes at 224. The per-image
cost is estimated from the graph itself: the float tensors onnx shape inference can size at batch 1, the
largest few of which are alive at once when onnxruntime runs the graph (its planner reuses the rest).
"""

from __future__ import annotations

import numpy as np
import onnx

from kernelscope.errors import UsageError

#: Default budget for one scoring run's activations (``--memory``).
DEFAULT_MEMORY = 2 * 1024**3
#: How many of the largest activation tensors are counted as alive at once.
LIVE_TENSORS = 4

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def parse_memory(text: str) -> int:
    """``--memory`` as bytes: a number with an optional unit (``512MB``, ``2GB``, ``1.5G``; powers of 1024)."""
    value = str(text).strip().lower().replace(" ", "").removesuffix("ib")
    number = value.rstrip("kmgb")
    unit = value[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        raise UsageError(f"--memory must be a size such as 2GB or 512MB, not {text!r}") from None
    if unit not in _UNITS or not np.isfinite(amount) or amount <= 0:
        raise UsageError(f"--memory must be a positive size such as 2GB or 512MB, not {text!r}")
    return int(amount * _UNITS[unit])


def activation_bytes_per_image(proto: onnx.ModelProto, image_input: str, after: str | None = None) -> int | None:
    """Bytes of the largest activation tensors of one image (None when shape inference cannot size them).

    ``after``: count only the tensors that depend on this one (where the kernel variants fork: only they are
    V·N images large; the part before runs once per image).
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for value in model.graph.input:
        if value.name == image_input and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].ClearField("dim_param")
            value.type.tensor_type.shape.dim[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # best effort: custom ops and odd models may defeat inference
        return None
    initializers = {t.name for t in proto.graph.initializer}
    wanted = None
    if after is not None:
        from kernelscope.model.graph import GraphIndex

        wanted = GraphIndex.build(proto.graph).downstream_tensors(after)
    sizes: list[int] = []
    named: list[tuple[str, int]] = []
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = value.type.tensor_type
        if (
            value.name in initializers
            or not tensor.HasField("shape")
            or (wanted is not None and value.name not in wanted)
        ):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if not dims or any(d <= 0 for d in dims):
            continue
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        sizes.append(int(np.prod(dims)) * itemsize)
        named.append((value.name, sizes[-1]))
    if not sizes:
        return None
    total = int(sum(sorted(sizes, reverse=True)[:LIVE_TENSORS]))
    if after is not None:
        # The mask's product with the fork tensor and its reshape to V·N images are extra copies of it.
        total += 2 * next((size for name, size in named if name == after), 0)
    return total


def run_size_for(budget: int, per_image: int | None, default: int) -> int:
    """Variant-images per run: ``default``, or fewer when that many would not fit in ``budget`` bytes."""
    if per_image is None or per_image <= 0:
        return default
    return max(1, min(default, budget // per_image))


def budgeted_run(runner, memory: int, run_size: int, batch_size: int) -> tuple[int, int]:
    """(variant-images per run, images per batch) for scoring ``runner``'s layer within ``memory`` bytes.

    Only the tensors after the point where the variants fork (``runner.expansion``, else its mask site) are
    V·N images large; ``run_size`` and ``batch_size`` are kept when they fit.
    """
    fork = runner.expansion.tensor if runner.expansion is not None else runner.site.tensor
    per_image = activation_bytes_per_image(runner.batching.proto, runner.image_input, after=fork)
    sized = run_size_for(memory, per_image, run_size)
    return sized, min(batch_size, sized)
