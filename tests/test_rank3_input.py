"""3-D one-channel inputs (N, H, W), as tf2onnx MNIST exports take: layout NHW, audited like any other."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from kernelscope.cli.app import main

from builders import conv_classifier, random_npz, save


def rank3_model() -> onnx.ModelProto:
    """``pixels`` (N, 8, 8) -> Unsqueeze(axis 1) -> the one-channel conv_classifier."""
    model = conv_classifier(out_channels=5, in_channels=1, seed=3)
    graph = model.graph
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 8, 8]))
    graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axis1"))
    graph.node.insert(0, helper.make_node("Unsqueeze", ["pixels", "axis1"], ["image"], name="add_channel"))
    onnx.checker.check_model(model)
    return model


def test_rank3_model_is_audited_with_the_nhw_layout(tmp_path, capsys):
    path = save(rank3_model(), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=40, channels=1)
    report = tmp_path / "r.json"
    code = main(["inspect", str(path), "--data", str(data), "--eps", "0.05,0.1", "--bootstrap", "0",
                 "--json", str(report), "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads(report.read_text())
    assert doc["data"]["preprocessing"]["layout"] == "NHW"
    assert doc["data"]["preprocessing"]["sources"]["layout"] == "model input shape"
    stored = np.load(data)
    x = stored["x"][..., 0].astype(np.float32) / 255.0  # an independent run: (N, 8, 8) in [0, 1]
    session = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    (scores,) = session.run(None, {"pixels": x})
    assert doc["baseline_accuracy"] == np.mean(scores.argmax(1) == stored["y"])
    assert doc["mirror"]["ok"] and len(doc["kernels"]) == 5
    assert doc["fgsm"][-1]["accuracy"] <= doc["fgsm"][0]["accuracy"]


def test_nhw_layout_must_fit_the_input_rank(tmp_path, capsys):
    four_d = save(conv_classifier(out_channels=5, in_channels=1, seed=3), tmp_path / "m4.onnx")
    data = random_npz(tmp_path / "d.npz", n=10, channels=1)
    assert main(["inspect", str(four_d), "--data", str(data), "--layout", "NHW", "--no-attack"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "NHW is for 3-D" in err
