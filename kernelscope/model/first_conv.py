"""Finding the convolution kernelscope audits: the first one in data flow from the image input."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from kernelscope.errors import ModelError, UsageError, some_of
from kernelscope.model.graph import ConstantSource, GraphIndex, NotConstant, attribute, constant_value, node_label

#: Op types that count as a convolution layer, with the input positions of their weight and bias.
CONV_OPS: dict[str, tuple[int, int | None]] = {
    "Conv": (1, 2),
    "QLinearConv": (3, 8),
    "ConvInteger": (1, None),
}


@dataclass(frozen=True)
class ConvLayer:
    """The audited convolution: where it is in the graph and what its kernels look like.

    ``weight`` is the float value the convolution effectively applies (dequantized for QDQ, QLinearConv
    and ConvInteger weights), shape (C_out, C_in/group, kh, kw).
    """

    name: str
    op_type: str
    node_index: int
    output: str
    input: str
    weight: np.ndarray
    weight_source: ConstantSource
    weight_dtype: str
    has_bias: bool
    group: int
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    distance: int  # nodes on the shortest path from the image input (1 = fed directly)

    @property
    def out_channels(self) -> int:
        """Number of output kernels (C_out)."""
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        """Number of input channels (C_in), accounting for groups."""
        return int(self.weight.shape[1]) * self.group

    @property
    def kernel_shape(self) -> tuple[int, ...]:
        """Spatial size of each kernel, e.g. (3, 3)."""
        return tuple(int(d) for d in self.weight.shape[2:])

    @property
    def quantized(self) -> bool:
        """Whether the layer runs in the integer domain (QLinearConv, ConvInteger) or on QDQ weights."""
        return self.op_type != "Conv" or self.weight_source.dequantize_node is not None

    def kernel_norms(self) -> np.ndarray:
        """L2 norm of each flattened kernel of the effective float weight."""
        flat = self.weight.reshape(self.out_channels, -1).astype(np.float64)
        return np.linalg.norm(flat, axis=1)


def find_conv(proto: onnx.ModelProto, image_input: str, layer: str | None = None) -> ConvLayer:
    """The convolution to audit: ``layer`` by node (or output) name, else the first in data-flow order.

    "First" is the convolution with the fewest nodes between it and ``image_input``; ties go to the one
    earlier in a topological sort. Raises :class:`ModelError` for a model without a convolution fed by the
    image, and for a weight computed at run time.
    """
    if layer == "":  # unnamed nodes have the name "": an empty --layer would pick the first of them
        raise UsageError("--layer needs a node name or output name, not an empty string")
    index = GraphIndex.build(proto.graph)
    distances = index.distances_from(image_input)
    if layer is not None:
        candidates = [
            i
            for i, node in enumerate(proto.graph.node)
            if layer in (node.name, node.output[0] if node.output else None)
        ]
        if not candidates:
            convs = [node_label(n) for n in proto.graph.node if n.op_type in CONV_OPS]
            listing = some_of(convs, 12)
            raise UsageError(f"no node named {layer!r} in the model; its convolutions are: {listing or 'none'}")
        chosen = candidates[0]
        node = index.node(chosen)
        if node.op_type not in CONV_OPS:
            raise UsageError(f"--layer {layer!r} is a {node.op_type} node; choose a Conv, QLinearConv or ConvInteger")
        if chosen not in distances:
            raise UsageError(f"--layer {layer!r} is not fed by the image input {image_input!r}")
    else:
        topo_rank = {node_index: rank for rank, node_index in enumerate(index.topological_order())}
        convs = [i for i in distances if index.node(i).op_type in CONV_OPS]
        if not convs:
            present = sorted({n.op_type for n in proto.graph.node if n.op_type in CONV_OPS})
            if present:
                raise ModelError(
                    f"no convolution is fed by the image input {image_input!r} (the model has {', '.join(present)} "
                    "nodes elsewhere); use --layer NAME"
                )
            raise ModelError(
                "the model has no Conv layer (nor QLinearConv or ConvInteger); kernelscope audits convolutional "
                "classifiers"
            )
        chosen = min(convs, key=lambda i: (distances[i], topo_rank[i]))
    return _describe_conv(index, chosen, distances[chosen])


def _describe_conv(index: GraphIndex, node_index: int, distance: int) -> ConvLayer:
    node = index.node(node_index)
    label = node_label(node)
    weight_pos, bias_pos = CONV_OPS[node.op_type]
    if not node.output or not node.output[0] or not node.input or not node.input[0]:
        raise ModelError(f"{node.op_type} node {label!r} has no data input or no output; the graph is malformed")
    if len(node.input) <= weight_pos or not node.input[weight_pos]:
        raise ModelError(f"{node.op_type} node {label!r} has no weight input")
    try:
        weight, source = constant_value(index, node.input[weight_pos])
    except NotConstant as exc:
        raise ModelError(
            f"the weight of {node.op_type} node {label!r} is not a constant ({exc.reason}); kernelscope needs "
            "a constant first-layer weight"
        ) from None
    stored_dtype = str(weight.dtype)
    if node.op_type == "QLinearConv":
        weight = _dequantize_input(index, node, weight, scale_pos=4, zero_pos=5)
        stored_dtype = _stored_dtype(index, source)
    elif node.op_type == "ConvInteger":
        weight = _dequantize_input(index, node, weight, scale_pos=None, zero_pos=3)
        stored_dtype = _stored_dtype(index, source)
    elif source.dequantize_node is not None:
        stored_dtype = _stored_dtype(index, source)
    if weight.ndim != 4:
        raise ModelError(
            f"{node.op_type} node {label!r} has a {weight.ndim}-D weight {list(weight.shape)}; kernelscope audits "
            "2-D convolutions (a 4-D weight)"
        )
    if weight.shape[0] == 0 or weight.size == 0:
        raise ModelError(f"{node.op_type} node {label!r} has 0 output channels; there is nothing to audit")
    if not np.all(np.isfinite(weight)):
        bad = int(np.count_nonzero(~np.isfinite(weight)))
        raise ModelError(f"the weight of {node.op_type} node {label!r} contains {bad} NaN or Inf values; fix the model")
    has_bias = bias_pos is not None and len(node.input) > bias_pos and bool(node.input[bias_pos])
    group = _positive_ints(node, "group", 1)[0]
    strides = _positive_ints(node, "strides", [1, 1])
    dilations = _positive_ints(node, "dilations", [1, 1])
    return ConvLayer(
        name=label,
        op_type=node.op_type,
        node_index=node_index,
        output=node.output[0],
        input=node.input[0],
        weight=np.asarray(weight, dtype=np.float32),
        weight_source=source,
        weight_dtype=stored_dtype,
        has_bias=has_bias,
        group=group,
        strides=strides,
        dilations=dilations,
        distance=distance,
    )


def _positive_ints(node: onnx.NodeProto, name: str, default: int | list[int]) -> tuple[int, ...]:
    """Attribute ``name`` as a tuple of positive ints (an INT attribute gives one), or a one-line ModelError."""
    value = attribute(node, name, default)
    values = value if isinstance(value, (list, tuple)) else [value]
    if not values or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ModelError(
            f"attribute {name!r} of {node.op_type} node {node_label(node)!r} is {repr(value)[:60]}; it must be "
            "positive integers"
        )
    return tuple(int(v) for v in values)


def _stored_dtype(index: GraphIndex, source: ConstantSource) -> str:
    if source.kind == "initializer":
        tensor = index.initializers[source.stored_name]
        return str(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type))
    node = index.node(index.producer[source.stored_name])
    for attr in node.attribute:
        if attr.name == "value":
            return str(onnx.helper.tensor_dtype_to_np_dtype(attr.t.data_type))
    return "unknown"


def _dequantize_input(
    index: GraphIndex, node: onnx.NodeProto, quantized: np.ndarray, scale_pos: int | None, zero_pos: int
) -> np.ndarray:
    """Float value of an integer-domain weight: (w - zero_point) * scale, per tensor or per output channel."""
    try:
        zero = None
        if len(node.input) > zero_pos and node.input[zero_pos]:
            zero = constant_value(index, node.input[zero_pos])[0]
        scale = None
        if scale_pos is not None and len(node.input) > scale_pos and node.input[scale_pos]:
            scale = constant_value(index, node.input[scale_pos])[0]
    except NotConstant as exc:
        raise ModelError(
            f"the weight quantization parameters of {node.op_type} node {node_label(node)!r} are not constant "
            f"({exc.reason})"
        ) from None
    values = quantized.astype(np.float32)
    per_channel = (-1,) + (1,) * (values.ndim - 1)  # per-channel parameters run along output kernels
    if zero is not None:
        zero = np.asarray(zero, dtype=np.float32)
        values = values - (zero.reshape(per_channel) if zero.size > 1 else zero.reshape(()))
    if scale is not None:
        scale = np.asarray(scale, dtype=np.float32)
        values = values * (scale.reshape(per_channel) if scale.size > 1 else scale.reshape(()))
    return values


@dataclass(frozen=True)
class LayerSelection:
    """The convolutions ``--layers`` picked, in data-flow order, and those it had to leave out (and why)."""

    layers: list[ConvLayer]
    skipped: list[tuple[str, str]]  # (node label, reason)
    named: bool = False  # the layers were named one by one (each must be auditable), not 'all' or a pattern


def select_convs(proto: onnx.ModelProto, image_input: str, spec: str) -> LayerSelection:
    """The convolutions to audit for ``--layers SPEC``, in data-flow order (as :func:`find_conv` orders them).

    ``spec`` is ``all``, a comma-separated list of node (or output) names, or a shell-style pattern
    (``*``, ``?``, ``[...]``) matched against node names. Named layers must all be auditable (a one-line
    error otherwise); with ``all`` or a pattern, a convolution that is not (a weight computed at run time, a
    1-D convolution, not fed by the image) is left out and named in ``skipped``.
    """
    import fnmatch

    spec = spec.strip()
    if not spec:
        raise UsageError("--layers needs 'all', a comma-separated list of layer names, or a pattern")
    index = GraphIndex.build(proto.graph)
    distances = index.distances_from(image_input)
    topo_rank = {node_index: rank for rank, node_index in enumerate(index.topological_order())}
    convs = [i for i, node in enumerate(proto.graph.node) if node.op_type in CONV_OPS]
    if not convs:
        raise ModelError(
            "the model has no Conv layer (nor QLinearConv or ConvInteger); kernelscope audits convolutional classifiers"
        )
    listing = some_of([node_label(index.node(i)) for i in convs], 12)
    named = spec != "all" and not any(ch in spec for ch in "*?[")
    if spec == "all":
        chosen = convs
    elif named:
        chosen = []
        for name in (part.strip() for part in spec.split(",")):
            hits = [i for i in convs if name in (index.node(i).name, index.node(i).output[0])]
            if not hits:
                raise UsageError(f"--layers: no convolution named {name!r}; the model's convolutions are: {listing}")
            chosen.extend(h for h in hits[:1] if h not in chosen)
    else:
        chosen = [i for i in convs if fnmatch.fnmatchcase(node_label(index.node(i)), spec)]
        if not chosen:
            raise UsageError(f"--layers {spec!r} matches no convolution; the model's convolutions are: {listing}")
    layers: list[ConvLayer] = []
    skipped: list[tuple[str, str]] = []
    for i in sorted(chosen, key=lambda i: (distances.get(i, float("inf")), topo_rank[i])):
        label = node_label(index.node(i))
        try:
            if i not in distances:
                raise ModelError(f"{label!r} is not fed by the image input {image_input!r}")
            layers.append(_describe_conv(index, i, distances[i]))
        except ModelError as exc:
            if named:
                raise
            skipped.append((label, str(exc)))
    if not layers:
        raise ModelError(
            f"none of the {len(chosen)} convolution(s) --layers selects can be audited; the first: {skipped[0][1]}"
        )
    return LayerSelection(layers, skipped, named)
