"""``neurons`` through export patterns of the final layer (issue 12 item 6).

tf2onnx / keras2onnx / CNTK add the bias in a separate ``Add`` (sometimes behind a ``Reshape``); int8 QDQ
models put ``QuantizeLinear`` → ``DequantizeLinear`` after the layer and ``DequantizeLinear`` in front of its
weight; some models end in a ``Relu``. Each graph is built with onnx.helper; the sensitivities of the command
are compared with a direct numpy computation from the float weights and the onnxruntime features.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernelscope.cli.app import main
from kernelscope.errors import ModelError
from kernelscope.model.linear_head import find_linear_head

from builders import conv_classifier, random_npz, save

CLASSES, FEATURES = 4, 6


def _base(seed: int = 5) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """conv_classifier without its Gemm: the graph ends at ``flat`` (N, 6); plus a (K, d) weight and a bias."""
    model = conv_classifier(out_channels=FEATURES, classes=CLASSES, seed=seed)
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Gemm"))
    for name in ("fc", "fc_b"):
        model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == name))
    rng = np.random.default_rng(seed)
    return model, rng.normal(size=(CLASSES, FEATURES)).astype(np.float32), rng.normal(size=CLASSES).astype(np.float32)


def _const(model: onnx.ModelProto, name: str, value) -> str:
    model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
    return name


def _add(model: onnx.ModelProto, op: str, inputs: list[str], output: str, **attrs) -> str:
    model.graph.node.append(helper.make_node(op, inputs, [output], name=output + "_node", **attrs))
    return output


def tf2onnx_head(reshape: bool = False, gemm: bool = False) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """MatMul (or a bias-free Gemm), [Reshape to (-1, K), Identity], then Add(bias) as its own node."""
    model, w, b = _base()
    if gemm:
        z = _add(model, "Gemm", ["flat", _const(model, "W", w)], "mm", transB=1)
    else:
        z = _add(model, "MatMul", ["flat", _const(model, "Wt", w.T.copy())], "mm")
    if reshape:
        z = _add(model, "Reshape", [z, _const(model, "shape", np.array([-1, CLASSES], dtype=np.int64))], "mm_r")
        z = _add(model, "Identity", [z], "mm_id")
    _add(model, "Add", [_const(model, "bias", b), z], "logits")  # the bias first, as CNTK writes it
    return model, w, b


def qdq_head(relu_after: bool = False) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Static int8 QDQ as onnxruntime.quantization writes it: DQ(Q(f)), DQ(int8 W, per-channel), DQ(int32 b),
    Gemm, then Q → DQ on the logits (and optionally a Relu after)."""
    model, w, b = _base()
    x_scale, x_zero = np.float32(0.02), np.uint8(0)
    w_scale = (np.abs(w).max(axis=1) / 127).astype(np.float32)
    w_q = np.clip(np.round(w / w_scale[:, None]), -127, 127).astype(np.int8)
    b_scale = (x_scale * w_scale).astype(np.float32)
    b_q = np.round(b / b_scale).astype(np.int32)
    _const(model, "x_scale", x_scale)
    _const(model, "x_zero", x_zero)
    q = _add(model, "QuantizeLinear", ["flat", "x_scale", "x_zero"], "flat_q")
    f = _add(model, "DequantizeLinear", [q, "x_scale", "x_zero"], "flat_dq")
    w_zero = _const(model, "w_zero", np.zeros(CLASSES, np.int8))
    inputs = [_const(model, "w_q", w_q), _const(model, "w_scale", w_scale), w_zero]
    wq = _add(model, "DequantizeLinear", inputs, "w_dq", axis=0)
    bq = _add(model, "DequantizeLinear", [_const(model, "b_q", b_q), _const(model, "b_scale", b_scale)], "b_dq", axis=0)
    z = _add(model, "Gemm", [f, wq, bq], "z", transB=1)
    _const(model, "z_scale", np.float32(0.05))
    _const(model, "z_zero", np.int8(0))
    zq = _add(model, "QuantizeLinear", [z, "z_scale", "z_zero"], "z_q")
    _add(model, "DequantizeLinear", [zq, "z_scale", "z_zero"], "z_dq" if relu_after else "logits")
    if relu_after:
        _add(model, "Relu", ["z_dq"], "logits")
    dequantized = (w_q.astype(np.float32) * w_scale[:, None]).astype(np.float32)
    return model, dequantized, b_q.astype(np.float32) * b_scale


def relu_head(softmax: bool = False) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Gemm → Relu (→ Softmax): a Relu after the last linear layer."""
    model, w, b = _base()
    z = _add(model, "Gemm", ["flat", _const(model, "W", w), _const(model, "bias", b)], "z", transB=1)
    _add(model, "Relu", [z], "relu_out" if softmax else "logits")
    if softmax:
        _add(model, "Softmax", ["relu_out"], "logits", axis=-1)
    return model, w, b


def monotone_head(*ops: str) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Gemm, then element-wise increasing ops (e.g. Softmax → Log, as some exporters write log-probabilities)."""
    model, w, b = _base()
    tensor = _add(model, "Gemm", ["flat", _const(model, "W", w), _const(model, "bias", b)], "z", transB=1)
    for i, op in enumerate(ops):
        attrs = {"axis": -1} if op == "Softmax" else {}
        tensor = _add(model, op, [tensor], "logits" if i == len(ops) - 1 else f"{op.lower()}_out", **attrs)
    return model, w, b


def conv_head() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """A fully connected layer written as a 1x1 Conv on the pooled (N, d, 1, 1) map, then Flatten."""
    model, w, b = _base()
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Flatten"))
    kernel = w.reshape(CLASSES, FEATURES, 1, 1)
    z = _add(model, "Conv", ["pool", _const(model, "K", kernel), _const(model, "bias", b)], "z")
    _add(model, "Flatten", [z], "logits")
    return model, w, b


def _finish(model: onnx.ModelProto) -> onnx.ModelProto:
    onnx.checker.check_model(model)
    return model


def _direct_median_abs_delta(model: onnx.ModelProto, feature: str, w, b, data) -> tuple[np.ndarray, np.ndarray]:
    """Median |Δ| per neuron with plain loops from onnxruntime features and the float weights (ReLU range)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info(feature, TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    stored = np.load(data)
    x = (stored["x"].astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    scores, f = session.run(["logits", feature], {"image": x})
    f = f.reshape(len(x), -1).astype(np.float64)
    w, b = np.asarray(w, np.float64), np.asarray(b, np.float64)
    result = np.empty_like(f)
    for n in range(len(f)):
        z = w @ f[n] + b
        y = int(np.argmax(z))
        for i in range(f.shape[1]):
            best = np.inf
            for j in range(len(z)):
                if j != y and w[j, i] != w[y, i]:
                    delta = (z[y] - z[j]) / (w[j, i] - w[y, i])
                    if f[n, i] + delta >= 0 and abs(delta) < abs(best):
                        best = delta
            result[n, i] = abs(best)
    return np.median(result, axis=0), scores


def _run_neurons(model: onnx.ModelProto, tmp_path, capsys, *extra: str) -> tuple[int, dict | None, str]:
    path = save(_finish(model), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=30)
    report = tmp_path / "r.json"
    code = main([str(a) for a in ["neurons", path, "-d", data, "--json", report, *extra]])
    err = capsys.readouterr().err
    return code, (json.loads(report.read_text()) if code == 0 else None), err


PATTERNS = {
    "matmul_add": (lambda: tf2onnx_head(), "MatMul+Add", "logits", ()),
    "matmul_reshape_add": (lambda: tf2onnx_head(reshape=True), "MatMul+Add", "logits", ()),
    "gemm_add": (lambda: tf2onnx_head(gemm=True), "Gemm+Add", "logits", ()),
    "qdq": (lambda: qdq_head(), "Gemm", "z", ("QuantizeLinear:z_q_node", "DequantizeLinear:logits_node")),
    "qdq_relu": (
        lambda: qdq_head(relu_after=True),
        "Gemm",
        "z",
        ("QuantizeLinear:z_q_node", "DequantizeLinear:z_dq_node", "Relu:logits_node"),
    ),
    "relu": (lambda: relu_head(), "Gemm", "z", ("Relu:logits_node",)),
    "relu_softmax": (lambda: relu_head(softmax=True), "Gemm", "z", ("Relu:relu_out_node",)),
    "conv_head": (lambda: conv_head(), "Conv", "z", ()),
    "log_softmax": (lambda: monotone_head("Softmax", "Log"), "Gemm", "z", ("Log:logits_node",)),
    "sigmoid": (lambda: monotone_head("Sigmoid"), "Gemm", "z", ("Sigmoid:logits_node",)),
}


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_the_head_is_found_and_read(pattern):
    build, op_type, logits, ties = PATTERNS[pattern]
    model, w, b = build()
    head = find_linear_head(model, "logits")
    assert (head.op_type, head.logits_tensor, head.ties, head.connected) == (op_type, logits, ties, True)
    np.testing.assert_allclose(head.weight, w, rtol=1e-6)
    np.testing.assert_allclose(head.bias, b, rtol=1e-6, atol=1e-7)
    assert head.relu_features  # Relu → pool → Flatten (→ Q/DQ with a zero point of 0): f >= 0


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_neurons_command_matches_a_direct_computation(pattern, tmp_path, capsys):
    build, _, _, ties = PATTERNS[pattern]
    model, w, b = build()
    code, doc, err = _run_neurons(model, tmp_path, capsys, "--no-attack")
    assert code == 0, err
    n = doc["neurons"]
    expected, _ = _direct_median_abs_delta(model, n["feature_tensor"], w, b, tmp_path / "d.npz")
    got = np.array([np.inf if s["median_abs_delta"] is None else s["median_abs_delta"] for s in n["sensitivity"]])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    warnings = " ".join(doc.get("warnings", []))
    if ties:  # the note says which ops can tie the logits and how often argmax z is the deployed prediction
        assert "can tie them" in warnings and ties[-1] in warnings


def test_qdq_head_with_the_attack(tmp_path, capsys):
    """The mirror differentiates through the Q/DQ pairs (straight-through rounding): the attacks run."""
    model, _, _ = qdq_head()
    code, doc, err = _run_neurons(model, tmp_path, capsys, "--steps", "2", "--k", "1,2", "--limit", "8")
    assert code == 0, err
    assert doc["neurons"]["single_neuron_attack"] is not None and doc["neurons"]["pgd"] is not None


def test_a_relu_on_negative_logits_is_reported_not_hidden(tmp_path, capsys):
    """Every logit < 0: the deployed scores all tie at 0 (prediction: class 0) while argmax z differs."""
    model, _, _ = relu_head()
    bias = next(t for t in model.graph.initializer if t.name == "bias")
    bias.CopyFrom(numpy_helper.from_array(np.array([-50.0, -40.0, -45.0, -48.0], dtype=np.float32), "bias"))
    code, doc, err = _run_neurons(model, tmp_path, capsys, "--no-attack")
    assert code == 0, err
    warning = next(w for w in doc["warnings"] if "can tie them" in w)
    assert "Relu:logits_node" in warning and "0.0% of images" in warning  # argmax z = 1, deployed = 0


def test_dequantize_of_an_integer_layer_fails_in_one_line(tmp_path, capsys):
    """QOperator format: DequantizeLinear(QLinearMatMul(...)): named, with what to do."""
    model, w, _ = _base()
    _const(model, "s", np.float32(0.02))
    _const(model, "zp", np.uint8(0))
    q = _add(model, "QuantizeLinear", ["flat", "s", "zp"], "flat_q")
    _const(model, "w_q", np.clip(np.round(w.T / 0.02), -127, 127).astype(np.int8))
    _const(model, "ws", np.float32(0.02))
    _const(model, "wz", np.int8(0))
    _const(model, "ys", np.float32(0.1))
    _const(model, "yz", np.int8(0))
    y = _add(model, "QLinearMatMul", [q, "s", "zp", "w_q", "ws", "wz", "ys", "yz"], "mm_q")
    _add(model, "DequantizeLinear", [y, "ys", "yz"], "logits")
    code, _, err = _run_neurons(model, tmp_path, capsys, "--no-attack")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "DequantizeLinear node 'logits_node'" in err and "QLinearMatMul node 'mm_q_node'" in err


def test_a_per_class_quantization_of_the_logits_is_not_passed():
    """Per-axis scales on the class axis can reorder the classes: the walk stops, naming the pair."""
    model, _, _ = qdq_head()
    dq = next(n for n in model.graph.node if n.output[0] == "logits")
    model.graph.initializer.append(numpy_helper.from_array(np.full(CLASSES, 0.05, np.float32), "per_class"))
    dq.input[1] = "per_class"
    dq.attribute.extend([helper.make_attribute("axis", 1)])
    with pytest.raises(ModelError, match="not per-tensor with a positive constant scale"):
        find_linear_head(model, "logits")
    assert find_linear_head(model, "logits", layer="z").name == "z_node"  # --layer still picks it


def test_a_dequantize_with_the_lowest_zero_point_is_non_negative():
    """A ReLU folded into the quantization range (zero point = the type's minimum): f >= 0 without a Relu."""
    model, w, b = _base()
    relu = next(n for n in model.graph.node if n.op_type == "Relu")
    relu.op_type = "Identity"  # the Relu removed, as the quantizer does
    _const(model, "s", np.float32(0.02))
    _const(model, "zp", np.int8(-128))
    q = _add(model, "QuantizeLinear", ["flat", "s", "zp"], "flat_q")
    f = _add(model, "DequantizeLinear", [q, "s", "zp"], "flat_dq")
    _add(model, "Gemm", [f, _const(model, "W", w), _const(model, "bias", b)], "logits", transB=1)
    head = find_linear_head(model, "logits")
    assert head.relu_features and head.feature_source == ("DequantizeLinear:flat_dq_node",)
    model.graph.initializer.remove(next(t for t in model.graph.initializer if t.name == "zp"))
    _const(model, "zp", np.int8(0))  # a zero point inside the range: DQ(Q(x)) can be negative again
    assert not find_linear_head(model, "logits").relu_features


def test_layer_pick_takes_the_separate_bias_add_behind_a_reshape():
    model, _, b = tf2onnx_head(reshape=True)
    head = find_linear_head(model, "logits", layer="mm_node")
    assert head.op_type == "MatMul+Add" and head.logits_tensor == "logits" and head.connected
    np.testing.assert_allclose(head.bias, b)


def test_a_conv_that_does_not_cover_its_input_is_refused_by_name(tmp_path, capsys):
    model, w, b = _base()
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Flatten"))
    z = _add(
        model, "Conv", ["relu", _const(model, "K", w.reshape(CLASSES, FEATURES, 1, 1)), _const(model, "b2", b)], "z"
    )
    _add(model, "Flatten", [z], "logits")  # a 1x1 Conv over the 8x8 map: not a fully connected layer
    code, _, err = _run_neurons(model, tmp_path, capsys, "--no-attack")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "is not a fully connected layer" in lines[0], err
