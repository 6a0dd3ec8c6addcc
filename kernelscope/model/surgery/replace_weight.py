"""Graph-surgery pass: give the audited convolution new weight values, touching nothing else.

The new weights are given in the same float domain as :attr:`ConvLayer.weight` (dequantized for QDQ and
QLinearConv, integer units minus the zero point for ConvInteger). They are written back into the stored
tensor the convolution reads — through ``Identity``, ``Cast``, ``Reshape``-family and ``DequantizeLinear``
nodes — in that tensor's own dtype and shape. Quantized weights are re-quantized with their existing scale
and zero point (round to nearest, clipped to the integer range), so a quantized model stays quantized.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from kernelscope.errors import ModelError
from kernelscope.model.first_conv import CONV_OPS, ConvLayer
from kernelscope.model.graph import GraphIndex, attribute, constant_value, optional_constant


def _quantize(values: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int, dtype: np.dtype) -> np.ndarray:
    """Inverse of DequantizeLinear for constants: round(values / scale) + zero_point, clipped to ``dtype``."""
    scale = np.asarray(scale, dtype=np.float64)
    zero_f = np.zeros_like(scale) if zero is None else np.asarray(zero, dtype=np.float64)
    if scale.ndim == 1 and scale.size > 1:
        shape = [1] * values.ndim
        shape[axis % values.ndim] = scale.size
        scale, zero_f = scale.reshape(shape), zero_f.reshape(shape)
    info = np.iinfo(dtype)
    return np.clip(np.rint(values / scale) + zero_f, info.min, info.max).astype(dtype)


def set_tensor(proto: onnx.ModelProto, index: GraphIndex, name: str, value: np.ndarray) -> None:
    """Overwrite the stored tensor ``name`` (initializer or Constant node output) with ``value``."""
    if name in index.initializers:
        for tensor in proto.graph.initializer:
            if tensor.name == name:
                tensor.CopyFrom(numpy_helper.from_array(value, name))
                return
    node = index.node(index.producer[name])
    for attr in node.attribute:
        if attr.name == "value":
            attr.t.CopyFrom(numpy_helper.from_array(value, attr.t.name))
            return
    raise ModelError(f"cannot rewrite the Constant {name!r}: it holds no tensor value")


def replace_conv_weight(proto: onnx.ModelProto, layer: ConvLayer, weight: np.ndarray) -> onnx.ModelProto:
    """A copy of ``proto`` in which ``layer`` applies ``weight``; every other tensor, node and attribute is
    unchanged (byte for byte, since only one tensor of the copy is rewritten)."""
    if weight.shape != layer.weight.shape:
        raise ValueError(f"new weight has shape {weight.shape}, the layer's is {layer.weight.shape}")
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    index = GraphIndex.build(model.graph)
    node = index.node(layer.node_index)
    weight_input = node.input[CONV_OPS[node.op_type][0]]
    values = np.asarray(weight, dtype=np.float64)

    # Integer convolutions: back from the float domain to integers with the node's own parameters.
    if node.op_type == "QLinearConv":
        stored = constant_value(index, weight_input)[0]
        values = _quantize(
            values, optional_constant(index, node, 4), optional_constant(index, node, 5), 0, stored.dtype
        )
    elif node.op_type == "ConvInteger":
        stored = constant_value(index, weight_input)[0]
        # ConvInteger's float domain is integer units minus the zero point (its scale lives in a later Mul).
        values = _quantize(values, np.ones(1), optional_constant(index, node, 3), 0, stored.dtype)

    # Walk back from the convolution to the stored tensor, inverting each node on the way.
    name = weight_input
    for _ in range(64):
        if name in index.initializers or index.node(index.producer[name]).op_type == "Constant":
            stored = constant_value(index, name)[0]
            if np.issubdtype(stored.dtype, np.integer) and not np.issubdtype(np.asarray(values).dtype, np.integer):
                raise ModelError(f"cannot store float weights in the integer tensor {name!r} without its quantization")
            set_tensor(model, index, name, np.asarray(values).reshape(stored.shape).astype(stored.dtype))
            return model
        producer = index.node(index.producer[name])
        source = producer.input[0]
        if producer.op_type == "DequantizeLinear":
            stored_dtype = constant_value(index, source)[0].dtype
            values = _quantize(
                np.asarray(values, dtype=np.float64).reshape(constant_value(index, name)[0].shape),
                optional_constant(index, producer, 1),
                optional_constant(index, producer, 2),
                int(attribute(producer, "axis", 1)),
                stored_dtype,
            )
        elif producer.op_type in ("Reshape", "Unsqueeze", "Squeeze"):
            values = np.asarray(values).reshape(constant_value(index, source)[0].shape)
        elif producer.op_type not in ("Identity", "Cast"):
            raise ModelError(f"cannot write weights back through {producer.op_type} node {producer.name!r}")
        name = source
    raise ModelError("the weight's producer chain is too long or cyclic")


def set_metadata(proto: onnx.ModelProto, key: str, value: str) -> None:
    """Set (or replace) one ``metadata_props`` entry in place."""
    for entry in proto.metadata_props:
        if entry.key == key:
            entry.value = value
            return
    entry = proto.metadata_props.add()
    entry.key = key
    entry.value = value
