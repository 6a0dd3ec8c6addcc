"""uint8 x int8 products: the mirror follows the ONNX spec; where onnxruntime saturates, kernelscope says so.

On x86-64 CPUs with AVX2 but without AVX-VNNI, onnxruntime adds two adjacent uint8 x int8 products in
saturating 16-bit arithmetic (VPMADDUBSW), so full-range int8 weights compute differently there than on a
VNNI CPU or by the spec. These tests hold on both kinds of CPU.
"""

from __future__ import annotations

import export_zoo as ez
import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from kernelscope.cli.app import main
from kernelscope.mirror import OnnxMirror
from kernelscope.runtime import int8_weight_layers, u8s8_saturates


def _qlinear_conv(weight: np.ndarray) -> onnx.ModelProto:
    """One QLinearConv: uint8 input (zero point 0), int8 weight (zero point 0), uint8 output."""

    def s(value, dtype, name):
        return numpy_helper.from_array(np.array(value, dtype), name)

    inits = [
        s(0.01, np.float32, "xs"),
        s(0, np.uint8, "xz"),
        numpy_helper.from_array(weight, "w"),
        s(0.01, np.float32, "ws"),
        s(0, np.int8, "wz"),
        s(40.0, np.float32, "ys"),
        s(0, np.uint8, "yz"),
    ]
    node = helper.make_node("QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"], ["y"], pads=[1, 1, 1, 1])
    graph = helper.make_graph(
        [node],
        "qconv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 4, 5, 5])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _full_range_case() -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(5)
    weight = rng.choice(np.array([-128, 127], np.int8), size=(3, 4, 3, 3)).astype(np.int8)
    weight[0] = 127  # all-positive kernel on an all-255 patch: every adjacent pair sums to 64770 > 32767
    x = np.full((1, 4, 5, 5), 255, np.uint8)
    x[0, 1, ::2] = rng.integers(0, 256, size=(3, 5))
    return _qlinear_conv(weight), x


def test_mirror_follows_the_spec_on_full_range_int8_weights():
    model, x = _full_range_case()
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    got = OnnxMirror(model, ["y"]).run({"x": torch.from_numpy(x)}, ["y"])["y"].detach().numpy()
    np.testing.assert_array_equal(got.astype(np.int64), expected.astype(np.int64))


def test_probe_predicts_whether_onnxruntime_conv_departs_from_the_spec():
    model, x = _full_range_case()
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    actual = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert u8s8_saturates(["CPUExecutionProvider"]) == (not np.array_equal(actual, expected))


def test_int8_weight_layers_names_integer_and_fused_qdq_layers(tmp_path):
    model, _ = _full_range_case()
    assert [layer.split()[0] for layer in int8_weight_layers(model)] == ["QLinearConv"]
    qdq = onnx.load(str(ez.quantize_static("poolcnn", tmp_path, "QDQ")))
    layers = int8_weight_layers(qdq)
    assert layers and all(layer.split()[0] in ("Conv", "Gemm", "MatMul") for layer in layers)
    float_model = onnx.load(str(ez.export_onnx("poolcnn", tmp_path / "f.onnx", 13)))
    assert int8_weight_layers(float_model) == []


def test_inspect_on_full_range_qdq_model_names_the_saturation_or_passes_parity(tmp_path, capsys):
    path = ez.quantize_static("poolcnn", tmp_path, "QDQ", reduce_range=False)
    data = ez.labelled_npz(path, tmp_path / "d.npz", n=16)
    code = main(["inspect", str(path), "--data", str(data), "--eps", "0.01"])
    err = capsys.readouterr().err
    if u8s8_saturates():
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1, err
        assert "AVX-VNNI" in lines[0] and "reduce_range=True" in lines[0] and "Conv '" in lines[0]
    else:  # exact int8 products: the spec-following mirror agrees with onnxruntime
        assert code == 0, err
