"""Pre-flight checks and the parity guard of the attack stage."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from kernelscope.audit import InspectConfig, inspect_model
from kernelscope.errors import ModelError

from builders import conv_classifier, random_npz, save


def _softmax_model():
    model = conv_classifier(out_channels=4, seed=3)
    fc = next(n for n in model.graph.node if n.op_type == "Gemm")
    fc.output[0] = "scores"
    model.graph.node.append(helper.make_node("Softmax", ["scores"], ["logits"], axis=1))
    return model


def test_probability_outputs_switch_the_loss(tmp_path):
    path = save(_softmax_model(), tmp_path / "softmax.onnx")
    data = random_npz(tmp_path / "d.npz", n=40)
    report = inspect_model(path, InspectConfig(data=str(data), epsilons=(0.05, 0.2), bootstrap=0))
    assert report.attack.preflight.output_kind == "probabilities"
    assert report.attack.preflight.loss == "nll_of_probabilities"
    assert any("probabilities" in w for w in report.warnings)
    # With -log p as the loss the attack still works: a large step cannot raise accuracy.
    fgsm = report.attack.sweep.fgsm
    assert fgsm[-1].accuracy <= fgsm[0].accuracy


def test_parity_failure_refuses_to_attack(tmp_path):
    """An absurdly tight tolerance on a float16 graph: the mirror (float32) cannot match to 1e-12."""
    model = conv_classifier(out_channels=4, seed=5)
    from onnx import TensorProto, numpy_helper

    for tensor in model.graph.initializer:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name))
    for value in list(model.graph.input) + list(model.graph.output):
        value.type.tensor_type.elem_type = TensorProto.FLOAT16
    path = save(model, tmp_path / "fp16.onnx")
    data = random_npz(tmp_path / "d.npz", n=40)
    report = inspect_model(path, InspectConfig(data=str(data), epsilons=(0.01,), bootstrap=0))
    assert report.attack.mirror.ok and report.attack.mirror.tolerance == pytest.approx(1e-2)
    with pytest.raises(ModelError, match="refusing to attack") as info:
        inspect_model(path, InspectConfig(data=str(data), epsilons=(0.01,), bootstrap=0, atol=1e-12))
    assert "first part at tensor" in str(info.value)
