"""Graph-surgery pass: the model with chosen kernels of one convolution dropped in its stored weights.

This is the paper's own way of dropping a kernel (``W[k] = 0``, ``b[k] = 0``; for quantized weights the value
that dequantizes to zero, i.e. the zero point), and the other scoring mechanism next to the kernel mask of
:mod:`kernelscope.model.surgery.kernel_mask`: each variant is the unmodified graph with other numbers in two
tensors, so onnxruntime optimizes it exactly as the deployed model (fusions, layouts, pre-packed weights) and
a variant's forward pass costs what the model's does. Its price is one session per variant.

Building each variant's file must not cost a model copy per kernel: the model is serialized once, and a
variant is that byte string with the dropped rows of the stored weight (and bias) tensors overwritten by the
rows of an all-dropped copy. The offsets are found once and checked: the patched model's tensors must equal
those of a model rewritten the slow way (:func:`~kernelscope.model.surgery.replace_weight.replace_conv_weight`).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from kernelscope.errors import ModelError
from kernelscope.model.first_conv import CONV_OPS, ConvLayer
from kernelscope.model.graph import GraphIndex, NotConstant, constant_value
from kernelscope.model.surgery.replace_weight import replace_conv_weight, set_tensor

#: Largest model whose variants are built in memory (protobuf's 2 GB limit, with a margin).
MAX_BYTES = 1_900_000_000


def _stored_tensors(proto: onnx.ModelProto) -> dict[str, onnx.TensorProto]:
    tensors = {t.name: t for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    tensors[node.output[0]] = attr.t
    return tensors


def _zero_bias(proto: onnx.ModelProto, layer: ConvLayer) -> None:
    """Set every bias entry of ``layer`` in ``proto`` to the value that makes it zero (in place)."""
    index = GraphIndex.build(proto.graph)
    node = index.node(layer.node_index)
    position = CONV_OPS[node.op_type][1]
    if position is None or len(node.input) <= position or not node.input[position]:
        return
    try:
        _, source = constant_value(index, node.input[position])
    except NotConstant:
        raise ModelError(f"the bias of {layer.name!r} is computed at run time") from None
    stored = constant_value(index, source.stored_name)[0]
    set_tensor(proto, index, source.stored_name, np.zeros_like(stored))
    # A dequantized bias is zero only where its stored integer equals the zero point (0 for int32 biases).
    if source.dequantize_node is not None and np.any(
        constant_value(GraphIndex.build(proto.graph), node.input[position])[0]
    ):
        raise ModelError(f"the bias of {layer.name!r} has a non-zero zero point")


class WeightDropper:
    """Serialized variants of ``proto`` with rows of ``layer``'s stored weight and bias dropped.

    Raises :class:`ModelError` naming the reason when this layer's kernels cannot be dropped in its weights
    (an ``ConvInteger``, whose bias is added after it; a weight or bias computed at run time; a model too
    large to serialize in memory; a stored tensor whose rows are not the kernels).
    """

    def __init__(self, proto: onnx.ModelProto, layer: ConvLayer) -> None:
        if layer.op_type == "ConvInteger":
            raise ModelError("a ConvInteger's bias is added by later nodes: its kernels are dropped by the mask")
        if proto.ByteSize() > MAX_BYTES:
            raise ModelError("the model is too large to build its variants in memory")
        self.channels = layer.out_channels
        self._layer = layer
        self._proto = proto
        self._blob = proto.SerializeToString()
        dropped = replace_conv_weight(proto, layer, np.zeros_like(layer.weight))
        _zero_bias(dropped, layer)
        before, after = _stored_tensors(proto), _stored_tensors(dropped)
        self._patches: list[tuple[int, int, bytes]] = []  # (offset in the blob, bytes per row, all-dropped bytes)
        for name, tensor in after.items():
            original = before.get(name)
            if original is None or original.SerializeToString() == tensor.SerializeToString():
                continue
            if not original.HasField("raw_data") or not tensor.HasField("raw_data"):
                raise ModelError(f"the stored tensor {name!r} keeps its values outside raw_data")
            raw = original.raw_data
            if len(raw) != len(tensor.raw_data) or len(raw) % self.channels:
                raise ModelError(f"the stored tensor {name!r} does not hold one row per kernel")
            offset = self._blob.find(raw)
            if offset < 0 or self._blob.find(raw, offset + 1) >= 0:
                raise ModelError(f"the stored tensor {name!r} cannot be located in the serialized model")
            self._patches.append((offset, len(raw) // self.channels, tensor.raw_data))
        if not self._patches:
            raise ModelError(f"dropping the kernels of {layer.name!r} changes no stored tensor")
        # The fast path must build exactly what the slow path builds: check it on one kernel.
        keep = np.ones(self.channels, dtype=bool)
        keep[0] = False
        patched, slow = onnx.load_from_string(self.model_bytes(keep)), self.slow_model(keep)
        ours, theirs = _stored_tensors(patched), _stored_tensors(slow)
        same = ours.keys() == theirs.keys() and all(
            np.array_equal(numpy_helper.to_array(ours[n]), numpy_helper.to_array(theirs[n])) for n in ours
        )
        if not same or len(patched.graph.node) != len(slow.graph.node):
            raise ModelError("patching the serialized model does not reproduce the rewritten model")

    def model_bytes(self, keep: np.ndarray) -> bytes:
        """The serialized model with the kernels where ``keep`` is false dropped."""
        keep = np.asarray(keep).astype(bool).reshape(-1)
        blob = bytearray(self._blob)
        for offset, row, dropped in self._patches:
            for k in np.flatnonzero(~keep):
                start = offset + int(k) * row
                blob[start : start + row] = dropped[int(k) * row : (int(k) + 1) * row]
        return bytes(blob)

    def slow_model(self, keep: np.ndarray) -> onnx.ModelProto:
        """The same variant rewritten tensor by tensor (the reference :meth:`model_bytes` is checked against)."""
        keep = np.asarray(keep).astype(bool).reshape(-1)
        weight = np.where(keep.reshape(-1, *([1] * (self._layer.weight.ndim - 1))), self._layer.weight, 0)
        model = replace_conv_weight(self._proto, self._layer, weight.astype(self._layer.weight.dtype))
        if not keep.all():
            # Only the dropped entries of the bias: take the all-zero bias and restore the kept ones.
            zeroed = onnx.ModelProto()
            zeroed.CopyFrom(model)
            _zero_bias(zeroed, self._layer)
            kept, dropped = _stored_tensors(model), _stored_tensors(zeroed)
            index = GraphIndex.build(model.graph)
            for name, tensor in dropped.items():
                if kept[name].SerializeToString() == tensor.SerializeToString():
                    continue
                old, new = numpy_helper.to_array(kept[name]), numpy_helper.to_array(tensor)
                rows = old.reshape(self.channels, -1).copy()
                rows[~keep] = new.reshape(self.channels, -1)[~keep]
                set_tensor(model, index, name, rows.reshape(old.shape))
        return model
