"""Graph-surgery pass: a kernel-mask input that lets ONE session evaluate every dropped-kernel variant.

The audited convolution's output channel k is ``W[k] * x + b[k]``; dropping kernel k (``W[k] = 0``,
``b[k] = 0``, or the zero points for integer convolutions) makes that channel exactly zero and leaves the
others untouched. So instead of editing weights per kernel, we multiply the channel tensor by a mask fed at
run time. The mask has shape (V, 1, C, 1, 1): broadcasting against the (N, C, H, W) activations gives
(V, N, C, H, W), which is reshaped to a batch of V*N. The convolution itself therefore runs once per image
batch for all V variants, and the rest of the network sees V variants of each image side by side.

Where the mask sits depends on the drop mode (see :func:`find_mask_site`):

- ``weights``: right after the convolution (for ``ConvInteger``, after the Cast/Mul/Add tail that
  ``onnxruntime.quantization`` emits to rescale and add the original bias, so "bias = 0" holds there too);
- ``channel``: after the bias ``Add``, ``BatchNormalization`` and activation that directly follow it
  (true nodal dropout: the channel's value is 0 whatever those ops would make of a zero input).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto

from kernelscope.errors import ModelError
from kernelscope.model.first_conv import ConvLayer
from kernelscope.model.graph import GraphIndex, NotConstant, attribute, constant_value, node_label
from kernelscope.model.surgery import graph_edit

#: Name of the run-time input added by :func:`insert_kernel_mask`.
MASK_INPUT = "kernelscope_kernel_mask"

DROP_MODES = ("weights", "channel")

_EIGHT_BIT = (TensorProto.UINT8, TensorProto.INT8)

#: Element-wise activations that may directly follow a convolution (``--drop channel`` passes them).
ACTIVATIONS = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Softplus", "Softsign", "Clip", "Gelu", "Mish", "ThresholdedRelu",
}  # fmt: skip


@dataclass(frozen=True)
class MaskSite:
    """The tensor whose channels the mask multiplies, and the nodes between the convolution and it."""

    tensor: str
    passed: tuple[str, ...]  # "OpType:name" of each node passed after the convolution
    elem_type: int
    quant_params: tuple[str, str] | None = None  # (scale, zero point) tensor names for an 8-bit tensor


def _single_consumer(index: GraphIndex, tensor: str, graph_outputs: set[str]) -> onnx.NodeProto | None:
    users = index.consumers.get(tensor, [])
    if len(users) != 1 or tensor in graph_outputs:
        return None
    return index.node(users[0])


def _is_constant(index: GraphIndex, tensor: str) -> bool:
    try:
        constant_value(index, tensor)
    except NotConstant:
        return False
    return True


def _is_channel_bias(index: GraphIndex, node: onnx.NodeProto, current: str) -> bool:
    """An Add/Sub/Mul/Div of ``current`` with a constant that broadcasts per channel (or per tensor)."""
    if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.input) != 2 or node.input[0] != current:
        return False
    if not _is_constant(index, node.input[1]):
        return False
    value = constant_value(index, node.input[1])[0]
    if value.size == 1:
        return True
    # (C,1,1) or (1,C,1,1): one value per channel, the same for every position and batch entry.
    return 3 <= value.ndim <= 4 and value.shape[-2:] == (1, 1) and (value.ndim == 3 or value.shape[0] == 1)


#: Per-channel ops that map an all-zero channel to an all-zero channel (and leave others alone when the mask
#: is 1): masking before or after them gives identical results, so the mask may move past them.
ZERO_PRESERVING = {
    "Relu", "LeakyRelu", "PRelu", "Elu", "Selu", "Celu", "Tanh", "Softsign", "HardSwish", "Gelu", "Mish",
    "ThresholdedRelu", "Identity", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool",
    "GlobalLpPool",
}  # fmt: skip


def _commutes(index: GraphIndex, node: onnx.NodeProto, current: str) -> bool:
    if not node.input or node.input[0] != current or len([o for o in node.output if o]) != 1:
        return False  # e.g. MaxPool with an Indices output, Dropout with a mask output
    if node.op_type == "Clip":
        bounds = [constant_value(index, n)[0] if n and _is_constant(index, n) else None for n in node.input[1:3]]
        low = attribute(node, "min", None) if len(node.input) < 2 else bounds[0]
        high = attribute(node, "max", None) if len(node.input) < 2 else (bounds[1] if len(bounds) > 1 else None)
        return (low is None or float(np.min(low)) <= 0.0) and (high is None or float(np.max(high)) >= 0.0)
    return node.op_type in ZERO_PRESERVING or node.op_type == "Dropout"


def find_mask_site(
    proto: onnx.ModelProto, layer: ConvLayer, mode: str, elem_types: dict[str, int], *, commute: bool = False
) -> MaskSite:
    """Where to apply the kernel mask for ``mode`` (``weights`` or ``channel``); see the module docstring.

    With ``commute``, the site then moves on past ops that map a zero channel to zero per channel (ReLU-like
    activations, pooling): the result is identical, and the part of the network that runs once per image
    batch, before the V variants fan out, grows (the Conv can also keep its fused activation).
    """
    if mode not in DROP_MODES:
        raise ValueError(f"unknown drop mode {mode!r}")
    index = GraphIndex.build(proto.graph)
    outputs = {o.name for o in proto.graph.output}
    current = layer.output
    passed: list[str] = []

    def step(node: onnx.NodeProto) -> None:
        nonlocal current
        passed.append(f"{node.op_type}:{node_label(node)}")
        current = node.output[0]

    if layer.op_type == "ConvInteger":
        # Re-assemble the original convolution: Cast(int32 -> float) -> Mul(scale) -> Add(bias).
        node = _single_consumer(index, current, outputs)
        if node is not None and node.op_type == "Cast":
            step(node)
            node = _single_consumer(index, current, outputs)
            if node is not None and node.op_type == "Mul" and node.input[0] == current:
                step(node)
                node = _single_consumer(index, current, outputs)
                if node is not None and _is_channel_bias(index, node, current) and node.op_type == "Add":
                    step(node)
    if mode == "channel":
        for _ in range(8):
            node = _single_consumer(index, current, outputs)
            if node is None:
                break
            is_bn = node.op_type == "BatchNormalization" and node.input[0] == current
            if is_bn or _is_channel_bias(index, node, current):
                step(node)
            elif node.op_type == "QuantizeLinear":
                after = _single_consumer(index, node.output[0], outputs)
                if after is None or after.op_type != "DequantizeLinear":
                    break
                step(node)
                step(after)
            elif node.op_type in ACTIVATIONS and node.input[0] == current:
                step(node)
                break
            else:
                break
    if commute:
        for _ in range(16):
            # Never move the mask onto an 8-bit tensor: past QLinearConv's output (whose scale and zero point
            # make the dequantize-mask-quantize exact) an 8-bit MaxPool or Relu output has no quantization
            # parameters of its own to mask it with.
            if elem_types.get(current) in _EIGHT_BIT or (current == layer.output and layer.op_type == "QLinearConv"):
                break
            node = _single_consumer(index, current, outputs)
            if node is None or not _commutes(index, node, current):
                break
            step(node)
    elem_type = elem_types.get(current, TensorProto.UNDEFINED)
    if elem_type == TensorProto.UNDEFINED:
        elem_type = (
            TensorProto.INT32 if current == layer.output and layer.op_type == "ConvInteger" else TensorProto.FLOAT
        )
    quant = None
    if elem_type in _EIGHT_BIT:
        producer = index.node(index.producer[current])
        if producer.op_type == "QLinearConv":
            quant = (producer.input[6], producer.input[7])
        elif producer.op_type == "QuantizeLinear" and len(producer.input) >= 3:
            quant = (producer.input[1], producer.input[2])
        else:
            raise ModelError(
                f"cannot mask the 8-bit tensor {current!r} produced by {producer.op_type} (it has no scale and "
                "zero point of its own); --drop channel needs a float tensor or a QuantizeLinear / QLinearConv "
                "output after the convolution"
            )
    return MaskSite(current, tuple(passed), elem_type, quant)


def infer_elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor onnx shape inference can type (empty on failure)."""
    types: dict[str, int] = {}
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # inference is best effort: custom ops and odd models may defeat it
        inferred = proto
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.elem_type:
            types[value.name] = value.type.tensor_type.elem_type
    for tensor in proto.graph.initializer:
        types[tensor.name] = tensor.data_type
    return types


@dataclass(frozen=True)
class BatchExpansion:
    """Where the V variants fork when the mask site cannot fork them itself: the tensor tiled V times."""

    tensor: str
    rank: int


def batch_expansion_point(proto: onnx.ModelProto, site: str, image_input: str) -> BatchExpansion | None:
    """The tensor at which the batch must become V·N so that every op after the mask sees V·N images.

    The mask turns the batch into V·N at ``site``. When some op after it also reads an image-dependent tensor
    that does not depend on ``site`` (a residual shortcut around the audited Conv, a concatenation with an
    earlier feature map), the two batches would not match. Then the variants fork earlier, at the latest
    tensor before the site through which every such tensor passes (a block's input): it is tiled V times, and
    the mask multiplies each of the V copies. ``None``: the site can fork them itself (nothing is recomputed).
    The image input always qualifies; a tensor whose rank shape inference cannot tell does not.
    """
    index = GraphIndex.build(proto.graph)
    live = index.downstream_tensors(image_input)  # tensors that depend on the images

    def closed(tensor: str) -> bool:
        after = index.downstream_tensors(tensor)
        return all(
            not name or name not in live or name in after
            for i in index.distances_from(tensor)
            for name in index.node(i).input
        )

    if closed(site):
        return None
    ranks = _ranks(proto)
    # Ancestors of the site that depend on the images, the latest (in data-flow order) first.
    position = {i: rank for rank, i in enumerate(index.topological_order())}
    ancestors, stack = set(), [site]
    while stack:
        name = stack.pop()
        if name in ancestors or name not in live:
            continue
        ancestors.add(name)
        if name in index.producer:
            stack.extend(n for n in index.node(index.producer[name]).input if n)
    ordered = sorted(ancestors - {site}, key=lambda n: position.get(index.producer.get(n, -1), -1), reverse=True)
    for tensor in ordered:
        if tensor in ranks and closed(tensor):
            return BatchExpansion(tensor, ranks[tensor])
    return None


def tensor_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    """Shape of every tensor shape inference can tell (None for a dimension it cannot fix)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:  # best effort, as in infer_elem_types
        inferred = proto
    shapes = {}
    for value in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
    return shapes


def _ranks(proto: onnx.ModelProto) -> dict[str, int]:
    """Rank of every tensor shape inference can tell."""
    return {name: len(shape) for name, shape in tensor_shapes(proto).items()}


def insert_kernel_mask(
    proto: onnx.ModelProto, site: MaskSite, out_channels: int, output: str, expansion: BatchExpansion | None = None
) -> onnx.ModelProto:
    """A copy of ``proto`` whose only output is ``output`` and whose ``site`` tensor is multiplied by
    the run-time input :data:`MASK_INPUT` of shape (V, 1, C, 1, 1); the batch becomes V*N after it (or, with
    an ``expansion`` point, at that tensor, tiled V times, variant-major)."""
    with graph_edit("add the kernel mask to"):
        return _insert_kernel_mask(proto, site, out_channels, output, expansion)


def _insert_kernel_mask(
    proto: onnx.ModelProto, site: MaskSite, out_channels: int, output: str, expansion: BatchExpansion | None
) -> onnx.ModelProto:
    graph = gs.import_onnx(proto)
    tensors = graph.tensors()
    if site.tensor not in tensors:
        raise ModelError(f"internal: mask site {site.tensor!r} not found in the graph")
    target = tensors[site.tensor]
    consumers = list(target.outputs)
    mask = gs.Variable(MASK_INPUT, dtype=np.float32, shape=["variants", 1, out_channels, 1, 1])
    graph.inputs.append(mask)
    nodes: list[gs.Node] = []

    def make(op: str, inputs: list, attrs: dict | None = None, dtype=None) -> gs.Variable:
        out = gs.Variable(f"kernelscope_{op.lower()}_{len(nodes)}", dtype=dtype)
        nodes.append(
            gs.Node(op=op, name=f"kernelscope_{op}_{len(nodes)}", inputs=inputs, outputs=[out], attrs=attrs or {})
        )
        return out

    if expansion is not None:
        # Fork the V variants at the expansion point: Tile(T, [V, 1, ...]) is variant-major (row v·N + i).
        source = tensors[expansion.tensor]
        source_consumers = list(source.outputs)
        variants = make(
            "Gather", [make("Shape", [mask], dtype=np.int64), gs.Constant("kernelscope_zero", np.array([0]))],
            {"axis": 0}, np.int64,
        )  # fmt: skip
        ones = gs.Constant("kernelscope_ones", np.ones(expansion.rank - 1, dtype=np.int64))
        repeats = make("Concat", [variants, ones], {"axis": 0}, np.int64)
        tiled = make("Tile", [source, repeats], dtype=source.dtype)
        for consumer in source_consumers:
            if any(consumer is ours for ours in nodes):
                continue
            for position, tensor in enumerate(consumer.inputs):
                if tensor is source:
                    consumer.inputs[position] = tiled
        # The site now holds V·N rows: view them as (V, N, C, H, W) so the mask's row v multiplies copy v.
        site_shape = make("Shape", [target], dtype=np.int64)
        chw = make(
            "Gather", [site_shape, gs.Constant("kernelscope_site_chw", np.array([1, 2, 3], dtype=np.int64))],
            {"axis": 0}, np.int64,
        )  # fmt: skip
        split = make(
            "Concat", [variants, gs.Constant("kernelscope_minus_one_n", np.array([-1], dtype=np.int64)), chw],
            {"axis": 0}, np.int64,
        )  # fmt: skip
        target_view = make("Reshape", [target, split], dtype=target.dtype)
    else:
        target_view = target

    if site.quant_params is not None:
        scale, zero = (tensors[name] for name in site.quant_params)
        values = make("DequantizeLinear", [target_view, scale, zero], dtype=np.float32)
        masked = make("Mul", [values, mask], dtype=np.float32)
        masked = make(
            "QuantizeLinear", [masked, scale, zero], dtype=onnx.helper.tensor_dtype_to_np_dtype(site.elem_type)
        )
    else:
        np_type = onnx.helper.tensor_dtype_to_np_dtype(site.elem_type)
        factor = mask if site.elem_type == TensorProto.FLOAT else make("Cast", [mask], {"to": site.elem_type}, np_type)
        masked = make("Mul", [target_view, factor], dtype=np_type)
    chw = tensor_shapes(proto).get(site.tensor, ())[1:]
    if len(chw) == 3 and all(d for d in chw):
        # A constant target keeps the site's C, H, W known to onnxruntime after the fork: it can then keep
        # its blocked layout and its fusions (Conv + Add + ReLU) on the V·N batch (measured: 1.32x -> 1.15x
        # the floor on the reference ResNet-8).
        new_shape = gs.Constant("kernelscope_vn_chw", np.array([-1, *chw], dtype=np.int64))
    else:
        shape = make("Shape", [target], dtype=np.int64)
        tail = make(
            "Gather",
            [shape, gs.Constant("kernelscope_chw_axes", np.array([1, 2, 3], dtype=np.int64))],
            {"axis": 0},
            np.int64,
        )
        new_shape = make(
            "Concat", [gs.Constant("kernelscope_minus_one", np.array([-1], dtype=np.int64)), tail], {"axis": 0},
            np.int64,
        )  # fmt: skip
    batched = make("Reshape", [masked, new_shape], dtype=masked.dtype)
    graph.nodes.extend(nodes)
    for consumer in consumers:
        if any(consumer is ours for ours in nodes):
            continue
        for position, tensor in enumerate(consumer.inputs):
            if tensor is target:
                consumer.inputs[position] = batched
    wanted = [t for t in graph.outputs if t.name == output]
    if not wanted:
        raise ModelError(f"internal: output {output!r} not found")
    graph.outputs = wanted
    graph.cleanup(remove_unused_graph_inputs=True).toposort()
    if MASK_INPUT not in {t.name for t in graph.inputs}:
        raise ModelError(f"output {output!r} does not depend on the audited layer; choose another --output")
    masked_model = gs.export_onnx(graph, do_type_check=False)
    masked_model.ir_version = proto.ir_version
    del masked_model.opset_import[:]
    masked_model.opset_import.extend(proto.opset_import)
    # Batch sizes change after the mask: stale intermediate shapes would only mislead the runtime.
    del masked_model.graph.value_info[:]
    for value in masked_model.graph.output:
        if value.type.tensor_type.HasField("shape") and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].dim_param = "variants_x_batch"
    return masked_model
