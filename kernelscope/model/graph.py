"""Read-only views of an ONNX graph: producers, consumers, data-flow order, constant values.

Nothing here trusts the order in which the file lists its nodes: some exporters write them backwards.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from kernelscope.errors import ModelError


def tensor_array(tensor: onnx.TensorProto, what: str = "tensor") -> np.ndarray:
    """``numpy_helper.to_array(tensor)``, with a one-line :class:`ModelError` when the stored data is malformed
    (data that does not match the dims, an undefined element type, a bad string)."""
    try:
        return numpy_helper.to_array(tensor)
    except Exception as exc:  # onnx raises ValueError, TypeError, KeyError... on damaged tensors
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise ModelError(f"{what} {tensor.name!r} cannot be read ({reason}); the model file is damaged") from None


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or its first output's name for the many exporters that leave names empty."""
    return node.name or (node.output[0] if node.output else node.op_type)


@dataclass
class GraphIndex:
    """Lookup tables over one graph, built once."""

    graph: onnx.GraphProto
    producer: dict[str, int]  # tensor name -> index of the node that produces it
    consumers: dict[str, list[int]]  # tensor name -> indices of nodes that read it
    initializers: dict[str, onnx.TensorProto]

    @classmethod
    def build(cls, graph: onnx.GraphProto) -> GraphIndex:
        """Index ``graph``."""
        producer: dict[str, int] = {}
        consumers: dict[str, list[int]] = {}
        for i, node in enumerate(graph.node):
            for name in node.output:
                if name:
                    producer[name] = i
            for name in node.input:
                if name:
                    consumers.setdefault(name, []).append(i)
        initializers = {t.name: t for t in graph.initializer}
        return cls(graph, producer, consumers, initializers)

    def node(self, index: int) -> onnx.NodeProto:
        """The node at ``index`` of the file's node list."""
        return self.graph.node[index]

    def topological_order(self) -> list[int]:
        """Node indices in data-flow order; ties keep file order, so sorted files are left as they are."""
        pending = []
        waiting: dict[int, int] = {}
        for i, node in enumerate(self.graph.node):
            deps = {self.producer[n] for n in node.input if n and n in self.producer}
            deps.discard(i)
            waiting[i] = len(deps)
            if not deps:
                heapq.heappush(pending, i)
        dependants: dict[int, set[int]] = {}
        for i, node in enumerate(self.graph.node):
            for name in node.input:
                if name in self.producer and self.producer[name] != i:
                    dependants.setdefault(self.producer[name], set()).add(i)
        order: list[int] = []
        while pending:
            i = heapq.heappop(pending)
            order.append(i)
            for j in sorted(dependants.get(i, ())):
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(pending, j)
        # Nodes on a cycle (invalid ONNX) never become ready; keep them at the end rather than lose them.
        seen = set(order)
        order.extend(i for i in range(len(self.graph.node)) if i not in seen)
        return order

    def distances_from(self, tensor: str) -> dict[int, int]:
        """For every node fed (directly or not) by ``tensor``: the fewest nodes on a path to it (1 = direct)."""
        distance: dict[int, int] = {}
        queue = deque((i, 1) for i in self.consumers.get(tensor, []))
        while queue:
            index, hops = queue.popleft()
            if index in distance:
                continue
            distance[index] = hops
            for out in self.node(index).output:
                for nxt in self.consumers.get(out, []):
                    if nxt not in distance:
                        queue.append((nxt, hops + 1))
        return distance

    def downstream_tensors(self, tensor: str) -> set[str]:
        """Every tensor whose value depends on ``tensor`` (including itself)."""
        reached = {tensor}
        for index in self.distances_from(tensor):
            reached.update(o for o in self.node(index).output if o)
        return reached


class NotConstant(Exception):
    """Raised by :func:`constant_value` when a tensor is computed at run time; carries the culprit."""

    def __init__(self, tensor: str, reason: str) -> None:
        super().__init__(reason)
        self.tensor = tensor
        self.reason = reason


#: Ops through which a constant stays a constant; their data input is input 0.
_FOLDABLE = ("Identity", "Cast", "DequantizeLinear", "Reshape", "Unsqueeze", "Squeeze")


@dataclass(frozen=True)
class ConstantSource:
    """Where a constant tensor's values live: an initializer or a ``Constant`` node, plus the chain of
    ``Identity`` / ``Cast`` / ``DequantizeLinear`` / reshaping nodes between it and the consumer."""

    stored_name: str  # initializer name, or output name of the Constant node
    kind: str  # "initializer" or "constant_node"
    chain: tuple[str, ...]  # op types traversed from the consumer back to the store, e.g. ("DequantizeLinear",)
    dequantize_node: str | None = None  # label of the DequantizeLinear in the chain, if any


def constant_value(index: GraphIndex, tensor: str, _depth: int = 0) -> tuple[np.ndarray, ConstantSource]:
    """The value of ``tensor`` if it is a constant (initializer, ``Constant``, or a foldable op of one).

    Follows ``Identity``, ``Cast``, ``DequantizeLinear``, ``Reshape``, ``Unsqueeze`` and ``Squeeze`` whose
    other inputs are constant too. Raises :class:`NotConstant` naming the node or graph input that makes
    it a run-time value.
    """
    if _depth > 64:  # chains are short; the bound protects against cycles in malformed files
        raise NotConstant(tensor, "its producer chain is too long or cyclic")
    if tensor in index.initializers:
        return tensor_array(index.initializers[tensor], "initializer"), ConstantSource(tensor, "initializer", ())
    if tensor not in index.producer:
        raise NotConstant(tensor, f"it is the graph input {tensor!r}")
    node = index.node(index.producer[tensor])
    if node.op_type == "Constant":
        return _constant_node_value(node), ConstantSource(tensor, "constant_node", ())
    if node.op_type not in _FOLDABLE:
        raise NotConstant(tensor, f"it is computed at run time by {node.op_type} node {node_label(node)!r}")
    value, inner = constant_value(index, node.input[0], _depth + 1)
    dq_node = inner.dequantize_node
    try:
        value = _fold(index, node, value, _depth)
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        # A malformed node (a Reshape to a shape of another size, a Squeeze of an axis that is not 1, a Cast
        # to an unknown type): onnxruntime would refuse it too; say which node instead of crashing.
        raise ModelError(
            f"{node.op_type} node {node_label(node)!r} cannot be applied to its constant input of shape "
            f"{list(np.shape(value))} ({exc}); the model is malformed"
        ) from None
    if node.op_type == "DequantizeLinear":
        dq_node = node_label(node)
    source = ConstantSource(inner.stored_name, inner.kind, (node.op_type, *inner.chain), dq_node)
    return value, source


def _fold(index: GraphIndex, node: onnx.NodeProto, value: np.ndarray, depth: int) -> np.ndarray:
    """``node`` (one of :data:`_FOLDABLE`) applied to the constant ``value`` of its data input."""
    if node.op_type == "Cast":
        return value.astype(onnx.helper.tensor_dtype_to_np_dtype(int(attribute(node, "to"))))
    if node.op_type == "DequantizeLinear":
        return dequantize(index, node, value)
    if node.op_type == "Reshape":
        shape = [int(d) for d in constant_value(index, node.input[1], depth + 1)[0].reshape(-1)]
        shape = [value.shape[i] if d == 0 and not attribute(node, "allowzero", 0) else d for i, d in enumerate(shape)]
        return value.reshape(shape)
    if node.op_type in ("Unsqueeze", "Squeeze"):
        axes = attribute(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = constant_value(index, node.input[1], depth + 1)[0].reshape(-1).tolist()
        if node.op_type == "Unsqueeze":
            for axis in sorted(int(a) % (value.ndim + len(axes)) for a in axes):
                value = np.expand_dims(value, axis)
            return value
        return np.squeeze(value, axis=None if axes is None else tuple(int(a) for a in axes))
    return value  # Identity


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray:
    for attr in node.attribute:
        if attr.name == "value":
            return tensor_array(attr.t, f"the value of Constant node {node_label(node)!r}, tensor")
        if attr.name == "value_float":
            return np.array(attr.f, dtype=np.float32)
        if attr.name == "value_floats":
            return np.array(list(attr.floats), dtype=np.float32)
        if attr.name == "value_int":
            return np.array(attr.i, dtype=np.int64)
        if attr.name == "value_ints":
            return np.array(list(attr.ints), dtype=np.int64)
    raise NotConstant(node.output[0], f"Constant node {node_label(node)!r} holds no numeric tensor")


def attribute(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """The value of attribute ``name`` of ``node`` (``default`` when absent)."""
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def optional_constant(index: GraphIndex, node: onnx.NodeProto, position: int) -> np.ndarray | None:
    """The constant value of input ``position`` of ``node``, or ``None`` when that input is absent."""
    if len(node.input) <= position or not node.input[position]:
        return None
    return constant_value(index, node.input[position])[0]


def dequantize(index: GraphIndex, node: onnx.NodeProto, quantized: np.ndarray) -> np.ndarray:
    """Apply ``DequantizeLinear`` (per-tensor, per-axis or blocked along ``axis``) to a constant."""
    scale = optional_constant(index, node, 1)
    zero = optional_constant(index, node, 2)
    axis = int(attribute(node, "axis", 1))
    scale = np.asarray(scale, dtype=np.float32)
    zero_f = np.zeros_like(scale) if zero is None else np.asarray(zero).astype(np.float32)
    values = quantized.astype(np.float32)
    if scale.ndim == 1 and scale.size > 1 and values.ndim > 0:
        shape = [1] * values.ndim
        shape[axis % values.ndim] = scale.size
        scale = scale.reshape(shape)
        zero_f = zero_f.reshape(shape)
    return (values - zero_f) * scale
