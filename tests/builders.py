"""Small ONNX models built directly with onnx.helper (no torch), for fast unit tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def conv_classifier(
    *,
    out_channels: int = 6,
    in_channels: int = 3,
    size: int = 8,
    classes: int = 4,
    batch: int | str = "N",
    opset: int = 13,
    seed: int = 0,
    weight_as: str = "initializer",
    reverse_nodes: bool = False,
    weight_values: np.ndarray | None = None,
) -> onnx.ModelProto:
    """image -> Conv(3x3, pad 1) -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> logits."""
    rng = np.random.default_rng(seed)
    w = (
        weight_values
        if weight_values is not None
        else rng.standard_normal((out_channels, in_channels, 3, 3)).astype(np.float32)
    )
    b = rng.standard_normal(out_channels).astype(np.float32) * 0.1
    fc = rng.standard_normal((classes, out_channels)).astype(np.float32)
    fc_b = np.zeros(classes, dtype=np.float32)
    initializers = [
        numpy_helper.from_array(b, "b"),
        numpy_helper.from_array(fc, "fc"),
        numpy_helper.from_array(fc_b, "fc_b"),
    ]
    nodes = []
    weight_name = "w"
    if weight_as == "initializer":
        initializers.append(numpy_helper.from_array(w, "w"))
    elif weight_as == "constant":
        nodes.append(helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w, "w_value")))
    elif weight_as == "identity":
        initializers.append(numpy_helper.from_array(w, "w_store"))
        nodes.append(helper.make_node("Identity", ["w_store"], ["w"]))
    elif weight_as == "input":
        pass  # the weight becomes a graph input below
    elif weight_as == "computed":
        initializers.append(numpy_helper.from_array(w, "w_half"))
        nodes.append(helper.make_node("Add", ["w_half", "w_half"], ["w"]))
    else:
        raise ValueError(weight_as)
    nodes += [
        helper.make_node("Conv", ["image", weight_name, "b"], ["conv"], name="first_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    if reverse_nodes:
        nodes = nodes[::-1]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, in_channels, size, size])]
    if weight_as == "input":
        inputs.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, list(w.shape)))
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="kernelscope-tests")
    model.ir_version = min(model.ir_version, 8)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Save and return ``path``."""
    onnx.save(model, str(path))
    return path


def random_npz(path: Path, n: int = 40, size: int = 8, channels: int = 3, classes: int = 4, seed: int = 0) -> Path:
    """An .npz of random uint8 images (N,H,W,C) and labels."""
    rng = np.random.default_rng(seed)
    np.savez(path, x=rng.integers(0, 256, (n, size, size, channels), dtype=np.uint8), y=rng.integers(0, classes, n))
    return path
