"""Architectures in the style of real exports (tests/export_zoo.py) through the mirror, the scorer and the CLI:
the ``x.view(x.size(0), -1)`` flatten at opsets 9-13, a static int8 model whose MaxPool runs on the uint8
tensor, and a TorchScript module with a dynamically quantized Linear (refused in one line naming the op)."""

from __future__ import annotations

import export_zoo as ez
import numpy as np
import onnx
import pytest

from kernelscope.cli.app import main
from kernelscope.data.dataset import ImageDataset
from kernelscope.data.preprocessing import PreparedData, resolve_preprocessing
from kernelscope.mirror import OnnxMirror, check_parity
from kernelscope.model.first_conv import find_conv
from kernelscope.model.loading import load_model
from kernelscope.scoring import KernelDropRunner, score_kernels

import zoo


@pytest.mark.parametrize("opset", [9, 11, 13, 17])
@pytest.mark.parametrize("arch", ["resnet", "vit"])
def test_view_flatten_and_class_token_exports_match_onnxruntime(tmp_path, arch, opset):
    path = ez.export_onnx(arch, tmp_path / f"{arch}{opset}.onnx", opset)
    proto = onnx.load(str(path))
    if arch == "resnet" and opset <= 13:  # the pattern that broke the mirror: Shape -> Gather(0-d index)
        gathers = [n for n in proto.graph.node if n.op_type == "Gather"]
        assert gathers, [n.op_type for n in proto.graph.node]
    x = ez.as_input(ez.images(8, seed=3))
    result = check_parity(proto, OnnxMirror(proto, ["logits"]), {"input": x}, "logits", tolerance=1e-4)
    assert result.ok, result.summary()


def _scores(path, data_images, labels, drop="weights"):
    loaded = load_model(path)
    layer = find_conv(loaded.proto, loaded.image_input.name)
    dataset = ImageDataset("zoo", data_images, labels, "zoo", ez.CLASSES)
    pre = resolve_preprocessing(
        input_shape=loaded.image_input.shape, input_dtype=str(loaded.image_input.dtype), metadata=None, dataset=dataset
    )
    runner = KernelDropRunner(loaded.proto, layer, loaded.image_input.name, "logits", drop=drop)
    return layer, runner, score_kernels(runner, PreparedData(dataset, pre), batch_size=16, run_size=64, bootstrap=10)


def test_static_int8_maxpool_on_uint8_scores_equal_the_integer_domain_drop(tmp_path):
    path = ez.quantize_static("poolcnn", tmp_path, "QOperator")
    proto = onnx.load(str(path))
    conv = zoo.first_conv_node(proto)
    assert conv.op_type == "QLinearConv"
    consumers = [n.op_type for n in proto.graph.node if conv.output[0] in n.input]
    assert consumers == ["MaxPool"], consumers  # MaxPool on the uint8 tensor
    images = ez.images(48, seed=5)
    x = ez.as_input(images)
    session = zoo._session(path)
    labels = session.run(None, {"input": x})[0].argmax(axis=1)
    _, runner, result = _scores(path, images, labels)
    assert runner.site.tensor == conv.output[0]  # never moved onto the MaxPool's 8-bit output
    reference = [zoo.reference_drop_accuracy(path, conv.name, k, x, labels, 0) for k in [None, *range(6)]]
    assert result.baseline_accuracy == pytest.approx(reference[0], abs=1e-9)
    assert [s.accuracy for s in result.kernels] == pytest.approx(reference[1:], abs=1e-9)


def test_quantize_dynamic_torchscript_is_refused_in_one_line_naming_the_op(tmp_path, capsys):
    path = ez.export_torchscript("resnet", tmp_path / "dq.pt", "dynamic_quant")
    data = tmp_path / "d.npz"
    np.savez(data, x=ez.images(8), y=np.zeros(8, dtype=np.int64))
    code = main(["inspect", str(path), "--data", str(data)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("kernelscope: error:"), err
    assert "quantized::linear_dynamic" in lines[0] and "inspect, harden and neurons" in lines[0]
    assert "Traceback" not in err


def test_traced_and_scripted_torchscript_load(tmp_path):
    for mode in ("trace", "script"):
        loaded = load_model(ez.export_torchscript("resnet", tmp_path / f"{mode}.pt", mode))
        assert find_conv(loaded.proto, loaded.image_input.name).out_channels == 8


def test_neurons_names_a_quantized_head(tmp_path, capsys):
    path = ez.quantize_static("poolcnn", tmp_path, "QOperator")
    data = ez.labelled_npz(path, tmp_path / "d.npz", n=8)
    code = main(["neurons", str(path), "--data", str(data), "--no-attack"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert "QGemm node '" in lines[0] and "no Gemm or MatMul" not in lines[0]
