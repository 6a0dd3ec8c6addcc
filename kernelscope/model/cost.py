"""A static estimate of where a model's arithmetic is: multiply-accumulates of its Conv and Gemm/MatMul nodes.

Exact scoring with the kernel mask computes the part of the network before the point where the variants fork
once per image instead of once per variant; how much that saves is the share of the model's work that lies
before that point. :func:`share_before` estimates it from the graph and its inferred shapes, for choosing a
scoring mechanism when timing both would cost more than the choice can save.
"""

from __future__ import annotations

import numpy as np
import onnx

from kernelscope.model.graph import GraphIndex
from kernelscope.model.surgery.kernel_mask import tensor_shapes

#: Ops whose multiply-accumulates are counted (everything else is memory-bound and cheap next to them).
COUNTED = ("Conv", "QLinearConv", "ConvInteger", "ConvTranspose", "Gemm", "MatMul", "QLinearMatMul", "MatMulInteger")


def node_macs(proto: onnx.ModelProto) -> dict[int, int] | None:
    """Multiply-accumulates per image of each counted node (by index); None when a shape is unknown."""
    shapes = tensor_shapes(proto)
    initializers = {t.name: tuple(t.dims) for t in proto.graph.initializer}
    macs: dict[int, int] = {}
    for i, node in enumerate(proto.graph.node):
        if node.op_type not in COUNTED:
            continue
        out = shapes.get(node.output[0])
        weight_at = 3 if node.op_type in ("QLinearConv", "QLinearMatMul") else 1
        weight = initializers.get(node.input[weight_at]) if len(node.input) > weight_at else None
        if weight is None:
            weight = shapes.get(node.input[weight_at]) if len(node.input) > weight_at else None
        if out is None or weight is None or any(d is None for d in out[1:]) or any(d is None for d in weight):
            return None
        if node.op_type in ("Gemm", "MatMul", "QLinearMatMul", "MatMulInteger"):
            # (..., K) x (K, M): each output value takes K multiply-accumulates.
            depth = weight[0] if node.op_type != "Gemm" else _gemm_depth(node, weight)
            macs[i] = int(np.prod(out[1:], dtype=np.int64)) * int(depth)
        else:
            # Each output value of a convolution takes C_in/group x kh x kw multiply-accumulates.
            per_output = int(np.prod(weight[1:], dtype=np.int64))
            if node.op_type == "ConvTranspose":
                per_output = int(np.prod(weight[2:], dtype=np.int64)) * weight[0]
            macs[i] = int(np.prod(out[1:], dtype=np.int64)) * per_output
    return macs


def _gemm_depth(node: onnx.NodeProto, weight: tuple[int, ...]) -> int:
    trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
    return int(weight[1] if trans_b else weight[0])


def share_before(proto: onnx.ModelProto, tensor: str) -> float | None:
    """The share of the model's multiply-accumulates in nodes that ``tensor`` depends on (None if unknown)."""
    macs = node_macs(proto)
    if not macs:
        return None
    index = GraphIndex.build(proto.graph)
    ancestors: set[int] = set()
    stack = [tensor]
    seen: set[str] = set()
    while stack:
        name = stack.pop()
        if name in seen or name not in index.producer:
            continue
        seen.add(name)
        producer = index.producer[name]
        ancestors.add(producer)
        stack.extend(n for n in index.node(producer).input if n)
    total = sum(macs.values())
    return sum(m for i, m in macs.items() if i in ancestors) / total if total else None
