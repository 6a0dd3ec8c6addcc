"""Saturated softmax: a model that takes 0-255 pixels (scale 1, no normalization) has logits in the hundreds, the
float32 cross-entropy gradient is exactly zero for most images, and FGSM / PGD must fall back (float64
log-softmax, then the logit margin) instead of silently doing nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from kernelscope.attacks.gradients import ATTACK_LOSSES, attack_objective, margin_objective
from kernelscope.audit import InspectConfig, inspect_model
from kernelscope.cli.app import main
from kernelscope.report.json_report import inspect_to_dict


def _pixel_model(path, *, softmax: bool = False, seed: int = 0):
    """image (N,1,8,8) in 0..255 -> Conv(3x3) -> Relu -> GAP -> Flatten -> Gemm: the class is the band of the mean
    brightness m (k for 64k - 32 < m < 64k + 32), with logits 50 (k m - 32 k^2): margins in the hundreds to
    thousands, so the float32 softmax is one-hot for all but the images within a pixel of a band edge."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((4, 1, 3, 3)) * 0.1).astype(np.float32)
    w[0] = 1.0 / 9.0  # kernel 0: the local mean
    b = np.zeros(4, np.float32)
    fc = np.zeros((4, 4), np.float32)
    fc[:, 0] = 50.0 * np.arange(4)
    fc_b = (-50.0 * 32.0 * np.arange(4) ** 2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["conv"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits" if not softmax else "z"], transB=1),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["z"], ["logits"], axis=1))
    initializers = [numpy_helper.from_array(v, k) for k, v in {"w": w, "b": b, "fc": fc, "fc_b": fc_b}.items()]
    graph = helper.make_graph(
        nodes,
        "pixels",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    entry = model.metadata_props.add()
    entry.key, entry.value = "kernelscope.preprocessing", json.dumps({"scale": 1.0, "mean": [0.0], "std": [1.0]})
    onnx.save(model, str(path))
    return path


def _data(model_path, path, n: int = 60):
    """Images of uniform random brightness plus noise, labelled with the model's own predictions (100 %)."""
    rng = np.random.default_rng(1)
    m = rng.uniform(20, 235, (n, 1, 1, 1))
    x = np.clip(m + rng.uniform(-15, 15, (n, 8, 8, 1)), 0, 255).astype(np.uint8)
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    out = session.run(None, {"image": x.transpose(0, 3, 1, 2).astype(np.float32)})[0]
    np.savez(path, x=x, y=out.argmax(axis=1))
    return path, out


def test_float32_cross_entropy_gradient_vanishes_and_the_fallbacks_do_not():
    z = torch.tensor([[0.0, 300.0, -50.0], [5.0, 0.0, 1.0], [0.0, 2000.0, 1.0]], requires_grad=True)
    y = torch.tensor([1, 0, 1])
    (g32,) = torch.autograd.grad(F.cross_entropy(z, y, reduction="sum"), z)
    assert not g32[0].any() and g32[1].any() and not g32[2].any()  # rows 0 and 2 saturate in float32
    value, kind = attack_objective(z, y)
    assert [ATTACK_LOSSES[k] for k in kind] == ["cross_entropy_float64", "cross_entropy", "logit_margin"]
    (g,) = torch.autograd.grad(value.sum(), z)
    # row 0: the float64 CE gradient's direction (p_j for j != y, minus their sum for y), reference in float64
    z64 = z.detach()[0].double()
    p = torch.softmax(z64, 0)
    expected = torch.stack([p[0], -(p[0] + p[2]), p[2]])
    np.testing.assert_allclose(g[0].numpy(), (expected / expected.abs().max()).numpy(), rtol=1e-5)
    np.testing.assert_allclose(g[1].numpy(), g32[1].numpy(), rtol=1e-6)  # unsaturated: unchanged
    np.testing.assert_allclose(g[2].numpy(), [0.0, -1.0, 1.0])  # margin: z_2 - z_1 (the runner-up)
    np.testing.assert_allclose(margin_objective(z.detach(), y).numpy(), [-300.0, -4.0, -1999.0])


def test_fgsm_on_a_0_255_model_now_lowers_accuracy(tmp_path):
    model = _pixel_model(tmp_path / "pixels.onnx")
    data, logits = _data(model, tmp_path / "d.npz")
    top2 = np.sort(logits, axis=1)[:, -2:]
    assert np.mean(top2[:, 1] - top2[:, 0] > 110) > 0.5  # most images saturate the float32 softmax
    config = InspectConfig(data=str(data), epsilons=(0.1,), bootstrap=10, threads=1)
    report = inspect_model(model, config)
    sweep = report.attack.sweep
    assert sweep.accuracy[0].accuracy == 1.0
    usage = sweep.loss_usage
    assert sum(usage.values()) == 60 and usage["cross_entropy_float64"] + usage["logit_margin"] > 30
    assert usage["none"] == sweep.zero_gradient_images == 0
    assert sweep.accuracy[1].accuracy < 0.7, sweep.accuracy  # was 100 %: FGSM did nothing on saturated images
    doc = inspect_to_dict(report)
    assert doc["attack"]["loss_usage"] == usage
    assert any("float64" in w and "saturated softmax" in w for w in doc["warnings"])
    assert not any("all-zero input gradient" in w for w in doc["warnings"])


def test_pgd_and_probability_outputs_fall_back_too(tmp_path, capsys):
    model = _pixel_model(tmp_path / "probs.onnx", softmax=True)
    data, _ = _data(model, tmp_path / "d.npz", n=40)
    out = tmp_path / "r.json"
    code = main(
        ["inspect", str(model), "--data", str(data), "--eps", "0.1", "--attack", "pgd", "--pgd-steps", "5",
         "--bootstrap", "10", "--json", str(out), "--quiet"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["attack"]["loss"] == "nll_of_probabilities"
    usage = doc["attack"]["loss_usage"]
    assert usage["cross_entropy_float64"] + usage["logit_margin"] > 20 and usage["none"] == 0
    assert doc["pgd"][1]["accuracy"] < 0.7, doc["pgd"]
