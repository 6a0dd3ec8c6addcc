"""The trainable mirror: the float weights and biases of Conv / Gemm / MatMul become ``nn.Parameter``.

Fine-tuning the deployed file needs a differentiable copy of it whose weights can move under a loss and be
written back into the original graph. :class:`~kernelscope.mirror.OnnxMirror` already runs the graph op by
op from its initializers; here the initializers that are the weights or biases of the linear ops are
turned into parameters, everything else stays a constant. BatchNormalization keeps running with its
running statistics (inference mode, as deployed); its scale and shift are tuned only when asked.

What is tuned is always an initializer of the file (reached from the op directly or through ``Identity``
/ ``Cast``), so :mod:`kernelscope.harden.writeback` can write the new values back in place. Weights that
reach their op through ``DequantizeLinear`` (QDQ), and the integer weights of ``QLinearConv`` /
``ConvInteger`` / ``QLinearMatMul`` / ``MatMulInteger``, are quantized: they are not tuned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from kernelscope.model.graph import GraphIndex, node_label

#: Tuning scopes of ``harden --tune``.
TUNE_SCOPES = ("first-conv", "all")

#: op type -> inputs that hold weights or biases (by position).
_LINEAR_INPUTS = {"Conv": (1, 2), "ConvTranspose": (1, 2), "Gemm": (0, 1, 2), "MatMul": (0, 1)}
_BN_INPUTS = (1, 2)  # scale, shift (mean and variance, inputs 3 and 4, stay as deployed)
_QUANTIZED_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger")
_PASS_THROUGH = ("Identity", "Cast")
_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE, onnx.TensorProto.BFLOAT16)


@dataclass(frozen=True)
class TunableTensor:
    """One initializer that fine-tuning may change."""

    name: str  # the initializer's name in the file
    node: str  # the consuming node's label
    op_type: str
    role: str  # "weight", "bias", "batchnorm scale" or "batchnorm shift"
    shape: tuple[int, ...]
    data_type: int  # onnx.TensorProto element type, kept on write-back

    @property
    def size(self) -> int:
        """Number of values."""
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class TunableSelection:
    """What ``--tune`` selected, and what it had to leave alone (and why)."""

    tensors: list[TunableTensor]
    quantized: list[str]  # labels of nodes whose weights are quantized (not tuned)

    @property
    def names(self) -> list[str]:
        """Initializer names, in graph order."""
        return [t.name for t in self.tensors]

    @property
    def parameters(self) -> int:
        """Number of tuned values."""
        return sum(t.size for t in self.tensors)


def find_tunable(
    proto: onnx.ModelProto,
    scope: str = "all",
    *,
    first_conv: str | None = None,
    batchnorm: bool = False,
    head: str | None = None,
) -> TunableSelection:
    """The float initializers fine-tuning may change.

    ``scope`` is ``"all"`` (every Conv / Gemm / MatMul weight and bias, and the bias ``Add`` that directly
    follows a MatMul) or ``"first-conv"`` (only the node labelled ``first_conv``). ``batchnorm`` adds the
    scale and shift of BatchNormalization nodes (of the first Conv's BatchNormalization only, for
    ``"first-conv"``). ``head``, a node label, is always included (the sensitivity regularizer moves it).
    """
    if scope not in TUNE_SCOPES:
        raise ValueError(f"scope must be one of {TUNE_SCOPES}, not {scope!r}")
    index = GraphIndex.build(proto.graph)
    chosen: dict[str, TunableTensor] = {}
    quantized: list[str] = []
    for i in index.topological_order():
        node = index.node(i)
        label = node_label(node)
        if node.op_type in _QUANTIZED_OPS:
            quantized.append(label)
            continue
        wanted = scope == "all" or label in (first_conv, head)
        bn_wanted = scope == "all" or _follows(index, node, first_conv)
        if node.op_type in _LINEAR_INPUTS and wanted:
            positions = _LINEAR_INPUTS[node.op_type]
        elif node.op_type == "BatchNormalization" and batchnorm and bn_wanted:
            positions = _BN_INPUTS
        elif node.op_type == "Add" and scope == "all" and _after_matmul(index, node):
            positions = (0, 1)
        else:
            continue
        for position in positions:
            if position >= len(node.input) or not node.input[position]:
                continue
            source, through_dequantize = _initializer_behind(index, node.input[position])
            if through_dequantize:
                if label not in quantized:
                    quantized.append(label)
                continue
            if source is None or source.data_type not in _FLOAT_TYPES or source.name in chosen:
                continue
            chosen[source.name] = TunableTensor(
                name=source.name,
                node=label,
                op_type=node.op_type,
                role=_role(node.op_type, position),
                shape=tuple(int(d) for d in source.dims),
                data_type=int(source.data_type),
            )
    return TunableSelection(list(chosen.values()), quantized)


def _role(op_type: str, position: int) -> str:
    if op_type == "BatchNormalization":
        return "batchnorm scale" if position == 1 else "batchnorm shift"
    if op_type == "Add" or (op_type == "Gemm" and position == 2) or (op_type.startswith("Conv") and position == 2):
        return "bias"
    return "weight"


def _initializer_behind(index: GraphIndex, name: str) -> tuple[onnx.TensorProto | None, bool]:
    """The initializer a tensor is (through Identity / Cast), and whether a DequantizeLinear was in the way."""
    for _ in range(16):  # chains are short; the bound guards against odd cycles
        if name in index.initializers:
            return index.initializers[name], False
        if name not in index.producer:
            return None, False
        producer = index.node(index.producer[name])
        if producer.op_type == "DequantizeLinear":
            return None, True
        if producer.op_type not in _PASS_THROUGH or not producer.input:
            return None, False
        name = producer.input[0]
    return None, False


def _after_matmul(index: GraphIndex, node: onnx.NodeProto) -> bool:
    """An ``Add`` of a MatMul's output and a constant: the MatMul's bias (as exporters write Linear)."""
    produced = [index.node(index.producer[n]).op_type for n in node.input if n in index.producer]
    constants = [n for n in node.input if _initializer_behind(index, n)[0] is not None]
    return "MatMul" in produced and len(constants) == 1


def _follows(index: GraphIndex, node: onnx.NodeProto, conv: str | None) -> bool:
    """Whether ``node`` reads the output of the Conv labelled ``conv`` directly."""
    if conv is None or not node.input or node.input[0] not in index.producer:
        return False
    return node_label(index.node(index.producer[node.input[0]])) == conv
