"""The PyTorch mirror on whole models: parity with onnxruntime on every zoo model, gradients equal to the
native torch nets', one error listing every unsupported op, and the generated op table kept fresh."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

from kernelscope.errors import ModelError
from kernelscope.mirror import (
    OnnxMirror,
    UnsupportedOpsError,
    check_parity,
    default_tolerance,
    supported_ops_markdown,
)
from kernelscope.model.loading import load_model

import zoo

REPO = Path(__file__).resolve().parents[1]

#: Zoo models that are exports of a plain torch net, with the net's config and input mode.
NATIVE = {
    "opset9": (zoo.BASE, "nchw"),
    "opset13": (zoo.BASE, "nchw"),
    "opset17": (zoo.BASE, "nchw"),
    "opset_latest": (zoo.BASE, "nchw"),
    "bn_unfused": (zoo.BASE, "nchw"),
    "conv_bias_add": (zoo.BASE, "nchw"),
    "constant_weight": (zoo.BASE, "nchw"),
    "identity_weight": (zoo.BASE, "nchw"),
    "external_data": (zoo.BASE, "nchw"),
    "fixed_batch1": (zoo.BASE, "nchw"),
    "fixed_batch1_flatten": (zoo.BASE, "nchw"),
    "multi_output": (zoo.BASE, "nchw"),
    "unsorted": (zoo.BASE, "nchw"),
    "initializers_as_inputs": (zoo.BASE, "nchw"),
    "torchscript": (zoo.BASE, "nchw"),
    "nhwc_transpose": (dataclasses.replace(zoo.BASE, size=16, out_channels=8), "nhwc"),
    "norm_in_graph": (dataclasses.replace(zoo.BASE, norm=True), "nchw"),
}


def _batch(model: zoo.ZooModel, n: int = 32, seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    images, labels = zoo.tiny_dataset(n, size=model.image_size, channels=model.channels, seed=seed)
    x = zoo.preprocess_for(model, images)
    if model.fixed_batch == 1:
        x, labels = x[:1], labels[:1]
    return x, labels


@pytest.mark.parametrize("name", list(zoo.BUILDERS))
def test_parity_on_every_zoo_model(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    model = built_zoo[name]
    loaded = load_model(model.reference_path)
    mirror = OnnxMirror(loaded.proto, [model.logits_output])
    x, _ = _batch(model)
    result = check_parity(
        loaded.proto,
        mirror,
        {loaded.image_input.name: x},
        model.logits_output,
        tolerance=default_tolerance(loaded.proto),
        providers=["CPUExecutionProvider"],
    )
    assert result.ok, result.summary()
    assert result.first_divergence is None
    assert "Conv" in result.op_types or model.conv_op in result.op_types
    assert list(result.op_types) == sorted(result.op_types)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.reshape(-1).double(), b.reshape(-1).double()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.mark.parametrize("name", list(NATIVE))
def test_input_gradient_equals_native_torch(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    model = built_zoo[name]
    cfg, mode = NATIVE[name]
    net = zoo.trained_net(cfg)
    net.input_mode = mode
    loaded = load_model(model.reference_path)
    mirror = OnnxMirror(loaded.proto, [model.logits_output])
    x_np, labels_np = _batch(model, 16)
    labels = torch.from_numpy(labels_np)

    def gradient(fn) -> torch.Tensor:
        x = torch.from_numpy(x_np.copy()).requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(fn(x), labels)
        (grad,) = torch.autograd.grad(loss, x)
        return grad

    mirrored, native = gradient(mirror), gradient(net)
    assert native.abs().sum() > 0
    assert _cosine(mirrored, native) >= 0.9999
    torch.testing.assert_close(mirrored, native, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["qdq", "qlinear", "conv_integer", "float16", "cast_input"])
def test_gradients_flow_through_quantized_and_float16_models(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    model = built_zoo[name]
    loaded = load_model(model.reference_path)
    mirror = OnnxMirror(loaded.proto, [model.logits_output])
    x_np, labels_np = _batch(model, 16)
    x = torch.from_numpy(x_np.copy())
    if name == "cast_input":  # uint8 pixels: no gradient to take, but the forward pass must match
        assert mirror(x).shape == (16, model.num_classes)
        return
    x = x.float().requires_grad_(True)  # float16 inputs compute (and differentiate) in float32
    loss = torch.nn.functional.cross_entropy(mirror(x), torch.from_numpy(labels_np))
    (grad,) = torch.autograd.grad(loss, x)
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0, "the straight-through estimator must let gradients through"
    if name == "float16":  # the float32 net's gradient, up to float16 rounding of weights and input
        leaf = x.detach().clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(zoo.trained_net(zoo.BASE)(leaf), torch.from_numpy(labels_np))
        (native,) = torch.autograd.grad(loss, leaf)
        assert _cosine(grad, native) > 0.99


def test_intermediate_tensors_and_dynamic_batch(built_zoo: dict[str, zoo.ZooModel]) -> None:
    import onnxruntime as ort

    model = built_zoo["opset13"]
    proto = load_model(model.path).proto
    conv = next(n for n in proto.graph.node if n.name == model.conv_name)
    mirror = OnnxMirror(proto)
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    probe.graph.output.append(helper.make_tensor_value_info(conv.output[0], TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    for n in (1, 3, 7):  # any batch size, one mirror
        x, _ = _batch(model, n)
        expected_logits, expected_conv = session.run(["logits", conv.output[0]], {"input": x})
        got = mirror.run({"input": torch.from_numpy(x)}, [conv.output[0], "logits"])
        np.testing.assert_allclose(got[conv.output[0]].numpy(), expected_conv, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mirror(torch.from_numpy(x)).detach().numpy(), expected_logits, atol=1e-5)


def test_parity_failure_names_the_first_divergent_tensor(built_zoo: dict[str, zoo.ZooModel]) -> None:
    model = built_zoo["opset13"]
    proto = load_model(model.path).proto
    conv = next(n for n in proto.graph.node if n.name == model.conv_name)
    mirror = OnnxMirror(proto)
    with torch.no_grad():  # sabotage the mirror's copy of the first conv's weight
        mirror._buffers[mirror._buffer_of[conv.input[1]]].mul_(1.5)
    x, _ = _batch(model, 8)
    result = check_parity(proto, mirror, {"input": x}, "logits", providers=["CPUExecutionProvider"])
    assert not result.ok
    assert result.relative_diff > 1e-4
    assert result.first_divergence == conv.output[0]
    assert result.first_divergence_op == "Conv"
    assert conv.output[0] in result.summary()


def test_unsupported_ops_are_listed_all_at_once() -> None:
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["values", "indices"]),
        helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"]),
        helper.make_node("Relu", ["values"], ["y"]),
        helper.make_node("TopK", ["y", "k"], ["v2", "i2"]),
    ]
    graph = helper.make_graph(
        nodes,
        "unsupported",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 4, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 4]),
        ],
        [helper.make_tensor_value_info("v2", TensorProto.FLOAT, None)],
        [helper.make_tensor("k", TensorProto.INT64, [1], [2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    with pytest.raises(UnsupportedOpsError) as info:
        OnnxMirror(proto)
    message = str(info.value)
    assert isinstance(info.value, ModelError)
    assert "\n" not in message
    assert "TopK (opset 13)" in message and "NonMaxSuppression (opset 13)" in message
    assert message.count("TopK") == 1  # each op once
    assert "docs/supported-ops.md" in message


def test_unsupported_settings_and_foreign_domains_are_listed() -> None:
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="cubic"),
        helper.make_node("Gelu", ["r"], ["y"], domain="com.example"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 2, 2])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpsError, match=r"Resize \(opset 19: mode=cubic\), com\.example\.Gelu"):
        OnnxMirror(proto)


def test_supported_ops_doc_is_fresh() -> None:
    doc = REPO / "docs" / "supported-ops.md"
    assert doc.exists(), "run: python -m kernelscope.mirror.optable --write"
    assert doc.read_text(encoding="utf-8") == supported_ops_markdown(), (
        "docs/supported-ops.md is stale; run: python -m kernelscope.mirror.optable --write"
    )


def test_parity_failure_skips_constants_the_mirror_folds_away(tmp_path: Path) -> None:
    import export_zoo as ez

    proto = onnx.load(str(ez.export_onnx("poolcnn", tmp_path / "poolcnn.onnx", 13)))
    mirror = OnnxMirror(proto)
    constants = [n.output[0] for n in proto.graph.node if n.op_type == "Constant"]
    assert constants and not any(mirror.computes(name) for name in constants)  # the case this test is about
    head = next(n for n in proto.graph.node if n.op_type == "Gemm")  # after the flatten's Constants in data flow
    with torch.no_grad():
        mirror._buffers[mirror._buffer_of[head.input[1]]].mul_(1.5)
    x = ez.as_input(ez.images(4))
    result = check_parity(proto, mirror, {"input": x}, proto.graph.output[0].name, providers=["CPUExecutionProvider"])
    assert not result.ok
    assert (result.first_divergence, result.first_divergence_op) == (head.output[0], "Gemm")
