"""Graph-surgery pass: turn a fixed batch dimension (often 1) into a dynamic one when the graph allows it.

Exporters often bake the example batch into the graph: the input says (1, 3, 32, 32) and a Reshape says
(1, -1). We rename the batch dimension of the input and outputs, rewrite constant Reshape targets whose
first entry equals the fixed batch to "copy the batch" (0) or "infer" (-1), and drop stale intermediate
shapes. The result is only a candidate: :func:`kernelscope.runtime.verify_batched` checks it against the
original one image at a time, and kernelscope falls back to single-image runs when it disagrees.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from kernelscope.model.graph import GraphIndex, attribute, tensor_array

BATCH_DIM = "batch"


def fixed_batch_size(proto: onnx.ModelProto, image_input: str) -> int | None:
    """The fixed batch size of ``image_input``, or ``None`` when its first dimension is dynamic."""
    for value in proto.graph.input:
        if value.name == image_input:
            dims = value.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def make_batch_dynamic(proto: onnx.ModelProto, image_input: str) -> onnx.ModelProto | None:
    """A copy of ``proto`` with a dynamic batch dimension, or ``None`` when it already has one."""
    fixed = fixed_batch_size(proto, image_input)
    if fixed is None:
        return None
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    for value in graph.input:
        if value.name == image_input:
            value.type.tensor_type.shape.dim[0].dim_param = BATCH_DIM
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value") and dims[0].dim_value == fixed:
            dims[0].dim_param = BATCH_DIM
    del graph.value_info[:]
    index = GraphIndex.build(graph)
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or attribute(node, "allowzero", 0):
            continue
        _rewrite_reshape_target(model, index, node, fixed)
    return model


def _rewrite_reshape_target(model: onnx.ModelProto, index: GraphIndex, node: onnx.NodeProto, fixed: int) -> None:
    name = node.input[1]
    if name in index.initializers:
        value = tensor_array(index.initializers[name], "initializer")
    elif name in index.producer and index.node(index.producer[name]).op_type == "Constant":
        const = index.node(index.producer[name])
        attr = next((a for a in const.attribute if a.name == "value"), None)
        if attr is None:
            return
        value = tensor_array(attr.t, "Constant tensor")
    else:
        return
    if value.ndim != 1 or value.size < 2 or int(value[0]) != fixed:
        return
    rewritten = value.astype(np.int64).copy()
    # "0" copies the input's first dimension (its batch); "-1" infers it when nothing else is inferred.
    rewritten[0] = 0 if -1 in rewritten[1:] else -1
    new_name = f"{name}_kernelscope_dynamic_batch"
    if new_name not in index.initializers:
        tensor = numpy_helper.from_array(rewritten, new_name)
        model.graph.initializer.append(tensor)
        index.initializers[new_name] = tensor
    node.input[1] = new_name
