"""``--targeting-at conv|activation``: where Algorithm 1 reads the first layer, and why it matters for ε.

At the Conv output y − y' = conv_W(x − x'): under FGSM (no clipping) every kernel's distance is ε times a
fixed number, so the S-vs-S' comparison is the same at every ε. After BatchNormalization and ReLU it is not.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kernelscope.attacks.gradients import model_input_from_unit_pixels
from kernelscope.audit import InspectConfig, inspect_model
from kernelscope.cli.app import main
from kernelscope.errors import UsageError
from kernelscope.mirror import OnnxMirror
from kernelscope.model.loading import load_model
from kernelscope.report.json_report import inspect_to_dict
from kernelscope.targeting import attacks_fragile, kernel_distances, kernel_norms

from builders import save

#: No clipping: pixels stay in [0.1, 0.9] and ε <= 0.1.
EPS = (0.01, 0.02, 0.04, 0.06, 0.08, 0.1)


def _bn_relu_model() -> tuple:
    """gray 8x8 -> Conv 1x1 (4 kernels) -> BatchNormalization -> Relu -> GlobalAveragePool -> Gemm (2 classes).

    After BN and ReLU, kernels 0 and 1 (fragile: the classifier reads only them) give relu(2(x - 0.5)),
    active on bright pixels; kernels 2 and 3 (null: unread) give relu(1.9x + 3), always active. At the Conv
    output (before BN's scales 0.5 and 2) the weights are 4 vs 0.95: S always moves more there.
    """
    w = np.array([4.0, 4.0, 0.95, 0.95], np.float32).reshape(4, 1, 1, 1)
    b = np.array([-2.0, -2.0, 1.5, 1.5], np.float32)
    scale = np.array([0.5, 0.5, 2.0, 2.0], np.float32)
    shift = np.zeros(4, np.float32)
    mean, var = np.zeros(4, np.float32), np.ones(4, np.float32)
    fc = np.array([[0, 0, 0, 0], [10, 10, 0, 0]], np.float32)
    fc_b = np.array([0.0, -3.0], np.float32)
    arrays = {"w": w, "b": b, "s": scale, "t": shift, "m": mean, "v": var, "fc": fc, "fc_b": fc_b}
    inits = [numpy_helper.from_array(a, n) for n, a in arrays.items()]
    nodes = [
        helper.make_node("Conv", ["image", "w", "b"], ["conv"], name="first_conv"),
        helper.make_node("BatchNormalization", ["conv", "s", "t", "m", "v"], ["bn"], name="bn", epsilon=0.0),
        helper.make_node("Relu", ["bn"], ["relu"], name="relu"),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"], name="pool"),
        helper.make_node("Flatten", ["pool"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "bn_relu",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="kernelscope-tests")
    model.ir_version = 8
    return model


def _data(path, n: int = 120):
    """Gray images, each uniform around its own mean (pixels in [0.1, 0.9]); labels = the model's clean call."""
    rng = np.random.default_rng(4)
    means = rng.uniform(0.4, 0.6, (n, 1, 1, 1))
    x01 = np.clip(means + rng.uniform(-0.3, 0.3, (n, 8, 8, 1)), 0.1, 0.9)
    pixels = np.round(x01 * 255).astype(np.uint8)
    # The model's own decision: the mean of relu(2(x - 0.5)), summed over two kernels, times 10, minus 3.
    x = pixels.astype(np.float64) / 255
    logit = 20 * np.maximum(2 * (x - 0.5), 0).mean(axis=(1, 2, 3)) - 3
    labels = (logit > 0).astype(np.int64)
    np.savez(path, x=pixels, y=labels)
    return path


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    directory = tmp_path_factory.mktemp("targeting_at")
    model = save(_bn_relu_model(), directory / "bn_relu.onnx")
    data = _data(directory / "gray.npz")
    reports = {
        at: inspect_model(model, InspectConfig(data=str(data), epsilons=EPS, bootstrap=0, targeting_at=at))
        for at in ("conv", "activation")
    }
    return model, data, reports


def test_the_model_has_a_clear_split(case):
    _, _, reports = case
    for report in reports.values():
        assert report.scoring.fragile == [0, 1] and report.scoring.null == [2, 3]
        assert report.scoring.baseline_accuracy == 1.0


def test_conv_is_flat_and_activation_depends_on_epsilon(case):
    _, _, reports = case
    conv = reports["conv"].attack.sweep.targeting
    act = reports["activation"].attack.sweep.targeting
    assert [t.epsilon for t in conv] == list(EPS) == [t.epsilon for t in act]
    assert {t.site for t in conv} == {"conv"} and {t.site for t in act} == {"activation"}
    # Conv output: the same share at every ε, raw and normalized (no pixel reaches the bounds).
    assert len({t.attacking_fragile for t in conv}) == 1
    assert len({t.attacking_fragile_normalized for t in conv}) == 1
    assert conv[0].fraction == 1.0  # 4 > 0.95: every kernel of S moves more than every kernel of S'
    # After BN + ReLU: bright pixels pushed down switch kernels 0/1 off, so S moves less as ε grows.
    raw = [t.fraction for t in act]
    assert raw[0] == 1.0
    assert raw[-1] < 0.85, raw
    assert all(a >= b for a, b in itertools.pairwise(raw)), raw
    assert len(set(raw)) >= 3, raw
    # The accuracy sweep itself does not depend on where targeting reads.
    assert [e.correct for e in reports["conv"].attack.sweep.accuracy] == [
        e.correct for e in reports["activation"].attack.sweep.accuracy
    ]


@pytest.mark.parametrize("at, tensor", [("conv", "conv"), ("activation", "relu")])
def test_counts_match_a_direct_computation_from_the_mirror(case, at, tensor):
    """FGSM by hand in torch through the mirror, the site tensor read from the mirror, Algorithm 1 in numpy."""
    model, data, reports = case
    report = reports[at]
    eps = 0.06
    entry = next(t for t in report.attack.sweep.targeting if t.epsilon == eps)
    proto = load_model(model).proto
    mirror = OnnxMirror(proto, outputs=["logits", tensor])
    npz = np.load(data)
    x01 = torch.tensor(npz["x"] / 255.0, dtype=torch.float32, requires_grad=True)
    pre = report.data.preprocessing
    logits = mirror(model_input_from_unit_pixels(x01, pre))
    torch.nn.functional.cross_entropy(logits, torch.tensor(npz["y"]), reduction="sum").backward()
    adversarial = (x01 + eps * x01.grad.sign()).clamp(0, 1).detach()
    with torch.no_grad():
        clean = mirror.run({"image": model_input_from_unit_pixels(x01, pre)}, [tensor])[tensor].numpy()
        moved = mirror.run({"image": model_input_from_unit_pixels(adversarial, pre)}, [tensor])[tensor].numpy()
    d = np.sqrt(((moved - clean) ** 2).sum(axis=(2, 3)))
    norms = np.sqrt((clean**2).sum(axis=(2, 3)))
    raw = int((d[:, [0, 1]].mean(axis=1) > d[:, [2, 3]].mean(axis=1)).sum())
    relative = np.divide(d, norms, out=np.zeros_like(d), where=norms > 0)
    normalized = int((relative[:, [0, 1]].mean(axis=1) > relative[:, [2, 3]].mean(axis=1)).sum())
    assert (entry.attacking_fragile, entry.attacking_fragile_normalized) == (raw, normalized)
    # The library's own helpers on the same tensors agree too.
    r, z = attacks_fragile(kernel_distances(clean, moved), kernel_norms(clean), [0, 1], [2, 3])
    assert (int(r.sum()), int(z.sum())) == (raw, normalized)
    if at == "conv":
        # The finding itself: at the Conv output each kernel's distance is ε times a fixed number.
        sign = x01.grad.sign()
        twice = (x01 + 2 * eps * sign).clamp(0, 1).detach()
        with torch.no_grad():
            far = mirror.run({"image": model_input_from_unit_pixels(twice, pre)}, [tensor])[tensor].numpy()
        np.testing.assert_allclose(kernel_distances(clean, far), 2 * d, rtol=1e-4, atol=1e-5)


def test_json_records_the_site(case):
    _, _, reports = case
    conv, act = (inspect_to_dict(reports[at]) for at in ("conv", "activation"))
    assert conv["targeting_at"] == {"site": "conv", "tensor": "conv", "after": []}
    assert act["targeting_at"] == {
        "site": "activation",
        "tensor": "relu",
        "after": ["BatchNormalization:bn", "Relu:relu"],
    }
    assert "activations" in reports["activation"].verdict
    no_attack = inspect_model(case[0], InspectConfig(data=str(case[1]), bootstrap=0, attack=False))
    assert inspect_to_dict(no_attack)["targeting_at"] is None


def test_figure_and_page_say_which_site(case):
    pytest.importorskip("matplotlib")
    from kernelscope.report import plots
    from kernelscope.report.html import report_page

    _, _, reports = case
    conv, act = (json.loads(json.dumps(inspect_to_dict(reports[at]))) for at in ("conv", "activation"))
    conv_page, act_page = report_page(conv), report_page(act)
    assert "the bias cancels" in conv_page and "--targeting-at conv" in conv_page
    assert "--targeting-at activation" in act_page and "after BatchNormalization, Relu" in act_page
    figure = plots.targeting_figure(act)
    texts = [figure.get_suptitle(), *(ax.get_title() for ax in figure.axes)]
    assert any("at the activation" in t for t in texts) and any("after BatchNormalization, Relu" in t for t in texts)
    assert "at the Conv output" in plots.targeting_figure(conv).get_suptitle()
    # A report written before the option existed measured at the Conv output.
    old = {k: v for k, v in conv.items() if k != "targeting_at"}
    assert plots.targeting_at(old)["site"] == "conv"


def test_cli_reports_the_site(capsys, case, tmp_path):
    model, data, _ = case
    out_json = tmp_path / "r.json"
    args = ["inspect", model, "--data", data, "--eps", "0.02,0.08", "--bootstrap", 0]
    code = main([str(a) for a in [*args, "--targeting-at", "ACTIVATION", "--json", out_json]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "--targeting-at activation" in " ".join(out.split())
    assert json.loads(out_json.read_text())["targeting_at"]["site"] == "activation"


@pytest.mark.parametrize("value", ["relu", "", "conv,activation"])
def test_cli_refuses_a_bad_site(capsys, case, value):
    model, data, _ = case
    code = main(["inspect", str(model), "--data", str(data), "--targeting-at", value])
    _, err = capsys.readouterr()
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("kernelscope: error:"), err
    assert "--targeting-at must be one of conv, activation" in lines[0]


def test_library_refuses_a_bad_site(case):
    model, data, _ = case
    with pytest.raises(UsageError, match="--targeting-at"):
        inspect_model(model, InspectConfig(data=str(data), targeting_at="pool"))


def test_quantized_conv_still_works(built_zoo, tmp_path):
    """QLinearConv: the activation is folded into its quantized output; targeting reads it and says so."""
    import zoo

    model = built_zoo["qlinear"]
    images, labels = zoo.tiny_dataset(48, size=model.image_size, channels=model.channels, seed=5)
    data = tmp_path / "q.npz"
    np.savez(data, x=images, y=labels)
    config = InspectConfig(data=str(data), epsilons=(0.01, 0.03), bootstrap=0, targeting_at="activation")
    report = inspect_model(model.path, config)
    attack = report.attack
    assert attack.targeting_site.quant_params is not None  # distances in real (dequantized) units
    assert [t.site for t in attack.sweep.targeting] == ["activation", "activation"]
    if not attack.targeting_site.passed:
        assert any("--targeting-at activation reads the output of QLinearConv" in w for w in report.warnings)
