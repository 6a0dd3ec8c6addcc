"""The shipped example: the README's audit works, and its scores equal a direct computation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from kernelscope.audit import InspectConfig, inspect_model
from kernelscope.cli.app import main
from kernelscope.data import load_dataset
from kernelscope.data.preprocessing import select_examples

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "cifar10_cnn.onnx"
TORCHSCRIPT = ROOT / "examples" / "models" / "cifar10_cnn.pt"
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"


def _direct_accuracy(proto: onnx.ModelProto, weight: str, bias: str, kernel: int | None, x, y) -> float:
    """Zero W[k] and b[k] in the initializers and run the edited model: the literal definition."""
    edited = onnx.ModelProto()
    edited.CopyFrom(proto)
    if kernel is not None:
        for tensor in edited.graph.initializer:
            if tensor.name in (weight, bias):
                values = numpy_helper.to_array(tensor).copy()
                values[kernel] = 0
                tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    session = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
    return float(np.mean(session.run(None, {"input": x})[0].argmax(1) == y))


def test_example_scores_equal_direct_computation():
    report = inspect_model(MODEL, InspectConfig(data=str(SAMPLE), limit=300, seed=1, bootstrap=50))
    assert report.model.num_classes == 10 and report.layer.out_channels == 32
    assert report.data.preprocessing.sources["mean"] == "model metadata"
    proto = onnx.load(str(MODEL))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    dataset = select_examples(load_dataset(str(SAMPLE)), 300, 1)
    x = report.data.preprocessing.to_model_input(dataset.images)
    direct = [_direct_accuracy(proto, conv.input[1], conv.input[2], k, x, dataset.labels) for k in [None, *range(32)]]
    assert report.scoring.baseline_accuracy == pytest.approx(direct[0])
    assert [k.accuracy for k in report.scoring.kernels] == pytest.approx(direct[1:])
    assert report.scoring.baseline_accuracy > 0.6  # a real model on real images, not chance


def test_torchscript_twin_gives_the_same_scores(tmp_path):
    config = InspectConfig(data=str(SAMPLE), limit=120, bootstrap=0)
    onnx_report = inspect_model(MODEL, config)
    ts_report = inspect_model(TORCHSCRIPT, config)
    assert ts_report.model.format == "torchscript"
    assert [k.accuracy for k in ts_report.scoring.kernels] == pytest.approx(
        [k.accuracy for k in onnx_report.scoring.kernels]
    )


def test_readme_command_writes_json(tmp_path, capsys):
    target = tmp_path / "r.json"
    assert main(["inspect", str(MODEL), "--data", str(SAMPLE), "--limit", "100", "--json", str(target), "-q"]) == 0
    doc = json.loads(target.read_text())
    assert doc["data"]["name"] == "cifar10-sample" and doc["data"]["n"] == 100
    assert doc["layer"]["out_channels"] == 32


def test_fgsm_equals_native_torch_on_the_torchscript_twin():
    """The mirror-driven sweep on the ONNX file vs plain torch FGSM on the TorchScript twin."""
    import torch

    eps = (0.003, 0.01)
    report = inspect_model(MODEL, InspectConfig(data=str(SAMPLE), limit=200, seed=2, bootstrap=0, epsilons=eps))
    pre = report.data.preprocessing
    dataset = select_examples(load_dataset(str(SAMPLE)), 200, 2)
    twin = torch.jit.load(str(TORCHSCRIPT), map_location="cpu").eval()
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    x01 = torch.tensor(dataset.images.transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32, requires_grad=True)
    labels = torch.tensor(dataset.labels)
    loss = torch.nn.functional.cross_entropy(twin((x01 - mean) / std), labels, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x01)
    with torch.no_grad():
        for entry in report.attack.sweep.fgsm:
            adversarial = (x01 + entry.epsilon * grad.sign()).clamp(0, 1)
            expected = int((twin((adversarial - mean) / std).argmax(1) == labels).sum())
            assert abs(entry.correct - expected) <= 1, (entry.epsilon, entry.correct, expected)
    assert report.attack.mirror.ok and report.attack.mirror.relative_diff < 1e-5
    assert report.attack.sweep.fgsm[-1].accuracy < report.attack.sweep.fgsm[0].accuracy
