"""Finding the final linear layer of a classifier: the ``Gemm`` (or ``MatMul`` + ``Add``) that makes the logits.

Neuron sensitivity (:mod:`kernelscope.neurons`) needs z = W f + b for the scored output: W and b as
constants, and f, the layer's input tensor (the "features", one vector per image). The layer is found by
walking back from the scored output through ops that keep every image's order of classes (and so its
argmax and its ties): Identity, Flatten, Reshape, Squeeze, Unsqueeze, Dropout, a float Cast, Softmax and
LogSoftmax over the class axis, and Add/Sub of a scalar constant or Mul/Div by a positive scalar constant.

It also passes increasing ops that can *tie* logits the layer keeps apart (listed in ``LinearHead.ties``):
``Relu`` (every negative logit becomes 0), ``Log`` (the ``Log(Softmax)`` head some exporters write; a
probability that underflows to 0 becomes -inf), ``Sigmoid`` / ``Tanh`` (saturate), ``Exp``, ``Softplus``, and a
per-tensor ``QuantizeLinear`` → ``DequantizeLinear`` pair (logits within one quantization step, or beyond its
range, become equal). The layer's output z is then taken
as the logits: Δ is about argmax z, and the command reports how often that is the deployed prediction.
A fully connected layer written as a ``Conv`` whose kernel covers its whole input (a 1x1 Conv on a pooled
1x1 map, or a kh x kw Conv on a kh x kw map; group 1, no padding) is read as W f + b with f the flattened
input (checked on the data: a Conv that covers less is refused by name).
The layer ends at a ``Gemm`` or ``MatMul``, possibly followed by a separate constant bias ``Add`` (tf2onnx,
keras2onnx, CNTK), with shape-only ops (Identity, Reshape, Flatten, Squeeze, Unsqueeze) between them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from kernelscope.errors import ModelError, UsageError, some_of
from kernelscope.model.graph import GraphIndex, NotConstant, attribute, constant_value, node_label

#: Ops that keep each row's order of classes whatever their settings.
_ORDER_KEEPING = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Dropout")
#: Element-wise increasing ops that float rounding or their range can make tie distinct logits: Log after a
#: Softmax (a probability that underflows to 0 gives -inf), Sigmoid / Tanh (saturate to 1), Exp (overflows),
#: Softplus, and Relu (every negative value becomes 0).
_MONOTONE_TYING = ("Relu", "Log", "Exp", "Sigmoid", "Tanh", "Softplus")
#: Ops that only change the layout of a tensor: allowed between a MatMul / Gemm and its separate bias Add.
_SHAPE_ONLY = ("Identity", "Flatten", "Reshape", "Squeeze", "Unsqueeze")
#: Lowest value of each quantized type: a DequantizeLinear with this zero point gives values >= 0.
_QUANT_MIN = {np.dtype(np.uint8): 0, np.dtype(np.int8): -128, np.dtype(np.uint16): 0, np.dtype(np.int16): -32768}
#: Ops after which a non-negative tensor stays non-negative (pooling and reshaping of ReLU outputs).
_NON_NEGATIVE_KEEPING = (
    "Identity",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Dropout",
    "GlobalAveragePool",
    "AveragePool",
    "GlobalMaxPool",
    "MaxPool",
    "ReduceMean",
    "ReduceMax",
)
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)

#: Integer-domain linear layers (static and dynamic quantization) that neurons names but does not analyse.
QUANTIZED_LINEAR = ("QLinearMatMul", "MatMulInteger", "QGemm")


@dataclass(frozen=True)
class LinearHead:
    """The final linear layer: z = W f + b with f the ``feature_tensor`` of one image."""

    name: str  # node name (or output name) of the Gemm / MatMul
    op_type: str  # "Gemm", "MatMul", "MatMul+Add" or "Gemm+Add"
    feature_tensor: str  # ONNX tensor name of f (the layer's input)
    logits_tensor: str  # ONNX tensor name of z (the layer's output, before any order-keeping op)
    weight: np.ndarray  # (K, d) float64, alpha and transB folded in
    bias: np.ndarray  # (K,) float64, beta folded in (zeros without a bias)
    after: tuple[str, ...]  # "Op:name" of the order-keeping nodes between z and the scored output
    connected: bool  # z reaches the scored output through order-keeping ops only
    relu_features: bool  # f is a ReLU output, possibly pooled / reshaped: f >= 0 by construction
    feature_source: tuple[str, ...]  # "Op:name" from f back to the op that decides its range (e.g. the Relu)
    ties: tuple[str, ...] = ()  # "Op:name" of the ops in ``after`` that can tie distinct logits (Relu, Q/DQ)

    @property
    def features(self) -> int:
        """d, the number of input features (neurons)."""
        return int(self.weight.shape[1])

    @property
    def classes(self) -> int:
        """K, the number of classes."""
        return int(self.weight.shape[0])


def find_linear_head(proto: onnx.ModelProto, output: str, layer: str | None = None) -> LinearHead:
    """The final linear layer for ``output``, or the ``Gemm`` / ``MatMul`` named ``layer``.

    Raises :class:`ModelError` when no such layer produces the output (naming the op where the walk stopped)
    or when its weight is not a constant, and :class:`UsageError` for a ``layer`` that is not a linear layer.
    """
    if layer == "":  # unnamed nodes have the name "": an empty --layer would pick the first of them
        raise UsageError("--layer needs a node name or output name, not an empty string")
    index = GraphIndex.build(proto.graph)
    walked, after, ties = _walk_back(index, output)
    if layer is None:
        node_index = index.producer.get(walked)
        if node_index is None:
            raise ModelError(f"the output {output!r} is not computed by any node; there is no linear layer to analyse")
        head = _head_from(index, node_index)
        if head is None:
            node = index.node(node_index)
            linear = [node_label(n) for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
            quantized = [f"{n.op_type} {node_label(n)!r}" for n in proto.graph.node if n.op_type in QUANTIZED_LINEAR]
            if node.op_type == "DequantizeLinear":
                hint = _dequantize_hint(index, node)
            elif linear:
                hint = f"pass --layer NAME to pick one of its linear layers ({some_of(linear, 6)})"
            elif quantized:
                hint = (
                    f"its linear layers are quantized ({some_of(quantized, 4)}), and neurons reads the weights "
                    "of a float Gemm or MatMul only: run it on the float model before quantization"
                )
            else:
                hint = "the model has no Gemm or MatMul"
            raise ModelError(
                f"the output {output!r} comes from {node.op_type} node {node_label(node)!r}, not from a final linear "
                f"layer (Gemm, MatMul or a Conv covering its whole input, with or without a bias Add, through "
                f"Flatten/Reshape/Softmax-like ops, "
                f"Relu or QuantizeLinear/DequantizeLinear); {hint}"
            )
        return _describe(index, *head, after=after, connected=True, ties=ties)
    candidates = [
        i for i, node in enumerate(proto.graph.node) if layer in (node.name, node.output[0] if node.output else None)
    ]
    if not candidates:
        linear = [node_label(n) for n in proto.graph.node if n.op_type in ("Gemm", "MatMul")]
        listing = some_of(linear, 12)
        raise UsageError(f"no node named {layer!r} in the model; its linear layers are: {listing or 'none'}")
    node = index.node(candidates[0])
    if node.op_type not in ("Gemm", "MatMul"):
        raise UsageError(f"--layer {layer!r} is a {node.op_type} node; choose a Gemm or MatMul")
    head = _head_from(index, candidates[0], accept_bias_add=True)
    if head is None:
        raise ModelError(f"--layer {layer!r}: its weight is not a constant matrix; it cannot be analysed")
    matmul, add, out = head
    connected = out == walked
    return _describe(
        index, matmul, add, out, after=after if connected else (), connected=connected, ties=ties if connected else ()
    )


def _walk_back(index: GraphIndex, output: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """Follow ``output`` back through order-keeping nodes (and the tie-making Relu and Q/DQ pairs).

    Returns the tensor reached, the nodes passed (first to last in graph order) and those of them that can
    tie distinct logits.
    """
    tensor, passed, ties = output, [], []
    for _ in range(64):  # heads are short; the bound protects against cycles in malformed files
        node_index = index.producer.get(tensor)
        if node_index is None:
            break
        node = index.node(node_index)
        data = _order_keeping_input(index, node)
        if data is not None:
            passed.append(f"{node.op_type}:{node_label(node)}")
            tensor = data
            continue
        if node.op_type in _MONOTONE_TYING and node.input and node.input[0]:
            label = f"{node.op_type}:{node_label(node)}"
            passed.append(label)
            ties.append(label)
            tensor = node.input[0]
            continue
        pair = _quantize_pair(index, node)
        if pair is None:
            break
        quantize, data = pair
        for label in (f"DequantizeLinear:{node_label(node)}", f"QuantizeLinear:{node_label(quantize)}"):
            passed.append(label)
            ties.append(label)
        tensor = data
    return tensor, tuple(reversed(passed)), tuple(reversed(ties))


def _positive_scalar(index: GraphIndex, node: onnx.NodeProto, position: int) -> float | None:
    """The value of input ``position`` of ``node`` when it is a finite positive scalar constant."""
    if len(node.input) <= position or not node.input[position]:
        return None
    try:
        value = np.asarray(constant_value(index, node.input[position])[0])
    except NotConstant:
        return None
    if value.size != 1 or not np.isfinite(value).all() or not float(value.reshape(())) > 0:
        return None
    return float(value.reshape(()))


def _zero_point(index: GraphIndex, node: onnx.NodeProto) -> np.ndarray | None:
    """The zero point of a (De)QuantizeLinear: its constant, an int64 0 when absent, ``None`` when run-time."""
    if len(node.input) <= 2 or not node.input[2]:
        return np.zeros((), dtype=np.int64)
    try:
        return np.asarray(constant_value(index, node.input[2])[0])
    except NotConstant:
        return None


def _quantize_pair(index: GraphIndex, node: onnx.NodeProto) -> tuple[onnx.NodeProto, str] | None:
    """(the QuantizeLinear, its float input) when ``node`` is a DequantizeLinear of a QuantizeLinear, both
    per-tensor with positive scales and the same zero point: x -> DQ(Q(x)) is then monotone non-decreasing
    (it keeps every order but can tie values within one step or beyond the range)."""
    if node.op_type != "DequantizeLinear" or not node.input or not node.input[0]:
        return None
    producer = index.producer.get(node.input[0])
    if producer is None:
        return None
    quantize = index.node(producer)
    if quantize.op_type != "QuantizeLinear" or not quantize.input or not quantize.input[0]:
        return None
    if _positive_scalar(index, node, 1) is None or _positive_scalar(index, quantize, 1) is None:
        return None
    zq, zd = _zero_point(index, quantize), _zero_point(index, node)
    if zq is None or zd is None or zq.size != 1 or zd.size != 1 or int(zq.reshape(())) != int(zd.reshape(())):
        return None
    return quantize, quantize.input[0]


def _dequantize_hint(index: GraphIndex, node: onnx.NodeProto) -> str:
    """Why the walk stopped at a DequantizeLinear: what its input comes from."""
    producer = index.producer.get(node.input[0]) if node.input and node.input[0] else None
    source = index.node(producer) if producer is not None else None
    if source is not None and source.op_type in QUANTIZED_LINEAR:
        return (
            f"it dequantizes the output of {source.op_type} node {node_label(source)!r}, an integer-domain layer "
            "whose weights neurons does not read: run it on the float or QDQ model"
        )
    if source is not None and source.op_type == "QuantizeLinear":
        return (
            "its QuantizeLinear/DequantizeLinear pair is not per-tensor with a positive constant scale and one zero "
            "point, so it may reorder the classes: pass --layer NAME to pick the linear layer"
        )
    what = f"{source.op_type} node {node_label(source)!r}" if source is not None else "a graph input"
    return f"its input comes from {what}; pass --layer NAME to pick a Gemm or MatMul"


def _order_keeping_input(index: GraphIndex, node: onnx.NodeProto) -> str | None:
    """The data input of ``node`` when it keeps each row's class order, else ``None``."""
    op = node.op_type
    if not node.input or not node.input[0]:
        return None
    if op in _ORDER_KEEPING:
        return node.input[0]
    if op == "Cast":
        return node.input[0] if attribute(node, "to") in _FLOAT_TYPES else None
    if op in ("Softmax", "LogSoftmax"):
        # The class axis is the last one of the (N, K) scores: -1, or 1 (the default before opset 13).
        return node.input[0] if attribute(node, "axis", -1) in (-1, 1) else None
    if op in ("Add", "Sub", "Mul", "Div") and len(node.input) == 2:
        for data_pos, const_pos in ((0, 1), (1, 0)):
            if op in ("Sub", "Div") and data_pos == 1:
                continue  # c - x and c / x reverse the order
            try:
                value = constant_value(index, node.input[const_pos])[0]
            except NotConstant:
                continue
            if np.size(value) != 1 or not np.isfinite(value).all():
                continue
            if op in ("Mul", "Div") and not float(np.asarray(value).reshape(())) > 0:
                continue
            return node.input[data_pos]
    return None


def _head_from(index: GraphIndex, node_index: int, accept_bias_add: bool = False) -> tuple[int, int | None, str] | None:
    """(linear node, bias Add node or None, output tensor of the layer) when ``node_index`` ends a linear layer.

    From the walk: ``node_index`` is a Gemm, a MatMul, or an Add of a constant to the output of one (directly
    or through shape-only ops: tf2onnx, keras2onnx and CNTK add the bias separately). With
    ``accept_bias_add`` (a --layer pick) a MatMul or Gemm whose only consumer (through shape-only ops) adds a
    constant bias includes that Add.
    """
    node = index.node(node_index)
    if node.op_type == "Conv" and _dense_conv(node):
        return node_index, None, node.output[0]
    if node.op_type in ("Gemm", "MatMul"):
        if accept_bias_add:
            tensor = node.output[0]
            for _ in range(8):
                consumers = index.consumers.get(tensor, [])
                if len(consumers) != 1:
                    break
                nxt = index.node(consumers[0])
                if nxt.op_type == "Add" and _constant_other(index, nxt, tensor) is not None:
                    return node_index, consumers[0], nxt.output[0]
                if nxt.op_type not in _SHAPE_ONLY or not nxt.input or nxt.input[0] != tensor:
                    break
                tensor = nxt.output[0]
        return node_index, None, node.output[0]
    if node.op_type == "Add" and len(node.input) == 2:
        for pos in (0, 1):
            if _constant_other(index, node, node.input[pos]) is None:
                continue
            linear = _linear_behind(index, node.input[pos])
            if linear is not None:
                return linear, node_index, node.output[0]
    return None


def _dense_conv(node: onnx.NodeProto) -> bool:
    """A Conv that can be a fully connected layer (its kernel covering its whole input): group 1, dilation 1,
    no padding. Whether the kernel really covers the input is checked on the data (the layer's output must be
    W f + b with f the flattened input)."""
    pads = attribute(node, "pads", None)
    return (
        attribute(node, "group", 1) == 1
        and all(d == 1 for d in (attribute(node, "dilations", None) or [1]))
        and all(p == 0 for p in (pads or [0]))
        and attribute(node, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID", "NOTSET", "VALID")
    )


def _linear_behind(index: GraphIndex, tensor: str) -> int | None:
    """The MatMul or Gemm whose output reaches ``tensor`` through shape-only ops (none included), or ``None``."""
    for _ in range(8):
        producer = index.producer.get(tensor)
        if producer is None:
            return None
        node = index.node(producer)
        if node.op_type in ("MatMul", "Gemm"):
            return producer
        if node.op_type not in _SHAPE_ONLY or not node.input or not node.input[0]:
            return None
        tensor = node.input[0]
    return None


def _add_data_input(index: GraphIndex, add: onnx.NodeProto) -> str:
    """The input of a bias ``add`` that is not its constant (the first when both are constant)."""
    for name in add.input:
        try:
            constant_value(index, name)
        except NotConstant:
            return name
    return add.input[0]


def _constant_other(index: GraphIndex, add: onnx.NodeProto, data: str) -> np.ndarray | None:
    """The constant input of a two-input ``add`` whose other input is ``data``, or ``None``."""
    others = [name for name in add.input if name != data]
    if len(others) != 1:
        return None
    try:
        return constant_value(index, others[0])[0]
    except NotConstant:
        return None


def _constant(index: GraphIndex, node: onnx.NodeProto, position: int, what: str) -> np.ndarray:
    try:
        return np.asarray(constant_value(index, node.input[position])[0], dtype=np.float64)
    except NotConstant as exc:
        raise ModelError(
            f"the {what} of {node.op_type} node {node_label(node)!r} is not a constant ({exc.reason}); neuron "
            "sensitivity needs the final layer's weights"
        ) from None


def _bias_vector(value: np.ndarray, classes: int, where: str, *, reshaped: bool = False) -> np.ndarray:
    """A bias broadcast to (K,): a scalar, (K,) or (1, K); anything per-image is refused.

    ``reshaped``: the bias is added after shape-only ops, so any shape of K values with one non-1 axis is
    taken in order (the self-check against onnxruntime then confirms the reading).
    """
    flat = np.asarray(value, dtype=np.float64)
    if flat.size == 1:
        return np.full(classes, float(flat.reshape(())))
    if flat.size == classes and (flat.ndim == 1 or (flat.ndim == 2 and flat.shape[0] == 1)):
        return flat.reshape(classes)
    if reshaped and flat.size == classes and sum(1 for d in flat.shape if d != 1) == 1:
        return flat.reshape(classes)
    raise ModelError(f"the bias of {where} has shape {list(flat.shape)}, not one value per class ({classes})")


def _describe(
    index: GraphIndex,
    linear: int,
    add: int | None,
    out: str,
    *,
    after: tuple[str, ...],
    connected: bool,
    ties: tuple[str, ...] = (),
) -> LinearHead:
    node = index.node(linear)
    label = node_label(node)
    if len(node.input) < 2 or not node.input[0]:
        raise ModelError(f"{node.op_type} node {label!r} has no data or weight input; the graph is malformed")
    if node.op_type == "Conv":
        kernel = _constant(index, node, 1, "weight")
        if kernel.ndim < 3:
            raise ModelError(f"the weight of Conv node {label!r} is {kernel.ndim}-D, not a convolution kernel")
        # Covering its whole (C, kh, kw) input, the Conv is W f + b with f the input flattened in that order.
        weight = kernel.reshape(kernel.shape[0], -1).astype(np.float64)
        bias = np.zeros(weight.shape[0])
        if len(node.input) > 2 and node.input[2]:
            bias = _bias_vector(_constant(index, node, 2, "bias"), weight.shape[0], f"Conv node {label!r}")
        op_type = "Conv"
    elif node.op_type == "Gemm":
        if attribute(node, "transA", 0):
            raise ModelError(
                f"Gemm node {label!r} has transA=1 (one image per column); kernelscope reads features as rows"
            )
        b = _constant(index, node, 1, "weight")
        if b.ndim != 2:
            raise ModelError(f"the weight of Gemm node {label!r} is {b.ndim}-D, not a matrix")
        alpha = float(attribute(node, "alpha", 1.0))
        beta = float(attribute(node, "beta", 1.0))
        # Y = alpha * A B' + beta * C, with B' = B^T when transB: so W = alpha * B'^T is (K, d).
        weight = alpha * (b if attribute(node, "transB", 0) else b.T)
        bias = np.zeros(weight.shape[0])
        if len(node.input) > 2 and node.input[2]:
            bias = beta * _bias_vector(_constant(index, node, 2, "bias"), weight.shape[0], f"Gemm node {label!r}")
        op_type = "Gemm"
    else:
        b = _constant(index, node, 1, "weight")
        if b.ndim != 2:
            raise ModelError(f"the weight of MatMul node {label!r} is {b.ndim}-D, not a (features, classes) matrix")
        weight = b.T
        bias = np.zeros(weight.shape[0])
        op_type = "MatMul"
    if add is not None:
        add_node = index.node(add)
        data = _add_data_input(index, add_node)
        value = _constant_other(index, add_node, data)
        where = f"Add node {node_label(add_node)!r}"
        bias = bias + _bias_vector(value, weight.shape[0], where, reshaped=data != node.output[0])
        op_type = f"{op_type}+Add"
    if not (np.all(np.isfinite(weight)) and np.all(np.isfinite(bias))):
        raise ModelError(f"the weights of {op_type} node {label!r} contain NaN or Inf values")
    if weight.shape[0] < 2:
        raise ModelError(
            f"{op_type} node {label!r} has {weight.shape[0]} output; a classifier needs two classes or more"
        )
    relu, source = _relu_source(index, node.input[0])
    return LinearHead(
        name=label,
        op_type=op_type,
        feature_tensor=node.input[0],
        logits_tensor=out,
        weight=np.ascontiguousarray(weight),
        bias=bias,
        after=after,
        connected=connected,
        relu_features=relu,
        feature_source=source,
        ties=ties,
    )


def _relu_source(index: GraphIndex, tensor: str, _depth: int = 0) -> tuple[bool, tuple[str, ...]]:
    """Whether ``tensor`` is >= 0 because it is a ReLU output, possibly pooled or reshaped; and the ops passed.

    A structural answer: Relu, then only ops that keep a non-negative tensor non-negative (reshaping,
    transposing, average or max pooling, mean or max reduction, a per-tensor QuantizeLinear/DequantizeLinear
    pair; a Concat of such tensors). A per-tensor DequantizeLinear whose zero point is the lowest value of its
    type (what quantizers make of a ReLU they fold into the range) is non-negative by itself.
    """
    passed: list[str] = []
    for _ in range(64):
        node_index = index.producer.get(tensor)
        if node_index is None:
            return False, tuple(passed)
        node = index.node(node_index)
        passed.append(f"{node.op_type}:{node_label(node)}")
        if node.op_type == "Relu":
            return True, tuple(passed)
        if node.op_type == "DequantizeLinear":
            if _non_negative_dequantize(index, node):
                return True, tuple(passed)
            pair = _quantize_pair(index, node)
            if pair is None:
                return False, tuple(passed)
            passed.append(f"QuantizeLinear:{node_label(pair[0])}")
            tensor = pair[1]
            continue
        if node.op_type == "Concat" and _depth < 8:
            branches = [_relu_source(index, name, _depth + 1) for name in node.input if name]
            return all(ok for ok, _ in branches) and bool(branches), tuple(passed)
        if node.op_type not in _NON_NEGATIVE_KEEPING or not node.input or not node.input[0]:
            return False, tuple(passed)
        tensor = node.input[0]
    return False, tuple(passed)


def _non_negative_dequantize(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """A per-tensor DequantizeLinear with a positive scale and the lowest value of its type as zero point:
    (q - zero) * scale >= 0 for every q of that type."""
    if _positive_scalar(index, node, 1) is None or len(node.input) <= 2 or not node.input[2]:
        return False  # without a zero point its type is the input's, which is not known here
    zero = _zero_point(index, node)
    if zero is None or zero.size != 1 or zero.dtype not in _QUANT_MIN:
        return False
    return int(zero.reshape(())) == _QUANT_MIN[zero.dtype]
