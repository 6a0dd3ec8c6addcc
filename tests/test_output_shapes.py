"""Scores in a (N, C, 1, 1) tensor, as Caffe-style exports end (SqueezeNet 1.1 from onnx-caffe2): C classes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from kernelscope.audit import InspectConfig, _num_classes, inspect_model
from kernelscope.model.loading import TensorInfo

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "cifar10_cnn.onnx"
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"


def test_class_count_of_score_shapes():
    def classes(*shape):
        return _num_classes(TensorInfo("y", 1, shape))

    assert classes("N", 1000, 1, 1) == 1000
    assert classes(1, 1, 10) == 10
    assert classes("N", 10) == 10
    assert classes(1, 1) == 1  # a single score: one class, as the shape says
    assert classes("N", 10, "H") is None  # two axes that are not 1: not a class vector


def test_a_model_whose_scores_end_in_two_unit_axes_is_audited_like_the_flat_one(tmp_path):
    proto = onnx.load(MODEL)
    out = proto.graph.output[0]
    proto.graph.initializer.append(numpy_helper.from_array(np.array([-1, 10, 1, 1], dtype=np.int64), "nchw_shape"))
    proto.graph.node.append(helper.make_node("Reshape", [out.name, "nchw_shape"], ["scores4d"]))
    del proto.graph.output[:]
    proto.graph.output.append(helper.make_tensor_value_info("scores4d", onnx.TensorProto.FLOAT, ["N", 10, 1, 1]))
    onnx.save(proto, tmp_path / "nchw.onnx")
    config = InspectConfig(data=str(SAMPLE), limit=64, attack=False, bootstrap=0)
    flat = inspect_model(MODEL, config)
    four = inspect_model(tmp_path / "nchw.onnx", config)
    assert four.model.num_classes == 10
    assert [k.accuracy for k in four.scoring.kernels] == [k.accuracy for k in flat.scoring.kernels]
    assert four.scoring.baseline_accuracy == flat.scoring.baseline_accuracy
