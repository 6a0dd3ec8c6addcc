"""Write tuned weights back into a copy of the deployed ONNX file, changing nothing else.

The copy keeps every node, attribute, input, output, opset and every other initializer byte for byte;
each tuned initializer keeps its name, shape and element type (float16 weights are written back as
float16) and only its values change. Whether the tensors live inline or as external data is decided when
the file is saved (:func:`kernelscope.io.save_model_atomic`), as for the input.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kernelscope.errors import ModelError


def write_back(proto: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``proto`` in which the initializers named in ``values`` hold the new values.

    Raises :class:`ModelError` when a name is not an initializer of the graph or a value does not have
    the initializer's shape (the graph would not mean the same thing any more).
    """
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    remaining = dict(values)
    for tensor in out.graph.initializer:
        if tensor.name not in remaining:
            continue
        value = np.asarray(remaining.pop(tensor.name))
        shape = tuple(int(d) for d in tensor.dims)
        if value.shape != shape:
            raise ModelError(f"tuned value for {tensor.name!r} has shape {value.shape}, the initializer {shape}")
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        cast = value.astype(dtype)
        if not np.all(np.isfinite(cast.astype(np.float64))):
            raise ModelError(f"tuned value for {tensor.name!r} is not finite in {dtype} (it overflowed)")
        new = numpy_helper.from_array(cast, tensor.name)
        if tensor.doc_string:
            new.doc_string = tensor.doc_string
        tensor.Clear()
        tensor.CopyFrom(new)
    if remaining:
        raise ModelError(f"the graph has no initializer named {', '.join(map(repr, sorted(remaining)))}")
    return out


def changed_initializers(before: onnx.ModelProto, after: onnx.ModelProto) -> list[str]:
    """Names of the initializers whose stored values differ between two versions of one graph."""
    old = {t.name: t for t in before.graph.initializer}
    changed = []
    for tensor in after.graph.initializer:
        if tensor.name not in old or not np.array_equal(
            numpy_helper.to_array(old[tensor.name]), numpy_helper.to_array(tensor)
        ):
            changed.append(tensor.name)
    return changed
