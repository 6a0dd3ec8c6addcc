"""Neuron sensitivity (closed form, guards), the final-linear-layer search, the single-neuron attack, the command."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernelscope.attacks.pgd import PgdSettings
from kernelscope.audit import InspectConfig, load_model_and_data
from kernelscope.cli.app import main
from kernelscope.errors import ModelError, UsageError
from kernelscope.mirror import OnnxMirror
from kernelscope.model.linear_head import find_linear_head
from kernelscope.neurons.analysis import DeployedHead, NeuronsConfig, analyse_neurons
from kernelscope.neurons.attack import AttackSettings, HeadTwin, _attack_pairs
from kernelscope.neurons.sensitivity import neuron_deltas, neuron_sensitivity, scaled_sensitivity

import zoo
from builders import conv_classifier, random_npz, save

# ----------------------------------------------------------------------------------------------- Δ


def test_delta_on_a_hand_built_head():
    """z = W f + b with ŷ = 0; neuron 0 ties class 1 at δ = −1 and class 2 at −3; neuron 1 ties class 1 at +1."""
    w = np.array([[2.0, 1.0], [0.0, 3.0], [1.0, -1.0]])
    b = np.array([0.0, 0.0, 1.0])
    f = np.array([[2.0, 1.0]])  # z = (5, 3, 2)
    deltas, predicted = neuron_deltas(f, w, b, relu=False)
    assert predicted.tolist() == [0]
    # neuron 0: (5−3)/(0−2) = −1, (5−2)/(1−2) = −3; neuron 1: (5−3)/(3−1) = 1, (5−2)/(−1−1) = −1.5
    np.testing.assert_allclose(deltas, [[-1.0, 1.0]])


def test_adding_delta_ties_the_prediction_and_nothing_smaller_flips_it():
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(6, 9)), rng.normal(size=6)
    f = np.abs(rng.normal(size=(40, 9)))
    for relu in (False, True):
        deltas, predicted = neuron_deltas(f, w, b, relu=relu)
        # Unconstrained, any neuron with unequal weights can flip; the ReLU range rules some changes out.
        assert np.isfinite(deltas).mean() == 1.0 if not relu else 0.5 < np.isfinite(deltas).mean() < 1.0
        for n, i in zip(*np.nonzero(np.isfinite(deltas)), strict=True):
            moved = f[n].copy()
            moved[i] += deltas[n, i]
            z = w @ moved + b
            top = z[predicted[n]]
            others = np.delete(z, predicted[n])
            assert np.isclose(others.max(), top, rtol=0, atol=1e-9)  # a tie: the prediction is about to change
            if relu:
                assert moved[i] >= -1e-12
            nearly = f[n].copy()
            nearly[i] += 0.999 * deltas[n, i]
            assert int(np.argmax(w @ nearly + b)) == predicted[n]
        # Brute force over a fine grid of changes agrees on the smallest flipping magnitude (within the grid step).
        n, i = 3, 4
        grid = np.linspace(-20, 20, 400_001)
        moved = np.repeat(f[n][None, :], len(grid), axis=0)
        moved[:, i] += grid
        flips = (moved @ w.T + b).argmax(axis=1) != predicted[n]
        if relu:
            flips &= moved[:, i] >= 0
        smallest = np.abs(grid[flips]).min() if flips.any() else np.inf
        assert smallest == pytest.approx(abs(deltas[n, i]), abs=2e-4)


def test_relu_range_changes_delta():
    """Unconstrained, neuron 0 flips at −0.7 (f would go to −0.2); a ReLU feature must rise by 2 instead."""
    w = np.array([[2.0], [0.0], [2.5]])
    b = np.array([0.0, -0.4, -1.25])
    f = np.array([[0.5]])  # z = (1, −0.4, 0)
    free, _ = neuron_deltas(f, w, b, relu=False)
    relu, _ = neuron_deltas(f, w, b, relu=True)
    np.testing.assert_allclose(free, [[-0.7]])
    np.testing.assert_allclose(relu, [[2.0]])
    # A ReLU neuron at 0 that can only flip the prediction by going negative cannot flip it at all.
    w2 = np.array([[3.0], [1.0]])  # z = (1, 0) at f = 0: the gap only closes at f = −0.5
    deltas, _ = neuron_deltas(np.array([[0.0]]), w2, np.array([1.0, 0.0]), relu=True)
    assert np.isinf(deltas).all()
    np.testing.assert_allclose(neuron_deltas(np.array([[0.0]]), w2, np.array([1.0, 0.0]), relu=False)[0], [[-0.5]])


def test_equal_weights_are_guarded_not_divided():
    """W[1,0] = W[0,0]: f_0 cannot close the gap to class 1 (no δ), and no division by zero happens."""
    w = np.array([[1.0, 2.0], [1.0, 0.0]])
    f = np.array([[1.0, 1.0]])  # z = (3, 1)
    with np.errstate(all="raise"):
        deltas, _ = neuron_deltas(f, w, np.zeros(2), relu=False)
    assert np.isinf(deltas[0, 0]) and deltas[0, 1] == pytest.approx(-1.0)


def test_scaled_ranking_and_statistics():
    deltas = np.array([[1.0, -2.0, np.inf, 0.5], [3.0, 0.1, 1.0, np.inf]])
    mean, std = np.array([1.0, 0.0, 2.0, 1.0]), np.array([2.0, 1.0, 0.0, 0.5])
    scaled = scaled_sensitivity(deltas, mean, std)
    # (|Δ| − μ)/σ; σ = 0 (a constant neuron) and Δ = ∞ are unrankable (+∞)
    np.testing.assert_allclose(scaled, [[0.0, 2.0, np.inf, -1.0], [1.0, 0.1, np.inf, np.inf]])

    rng = np.random.default_rng(1)
    w, b = rng.normal(size=(4, 5)), rng.normal(size=4)
    f = np.abs(rng.normal(size=(30, 5)))
    f[:, 2] = 0.7  # a constant neuron: σ = 0, never ranked first
    sens = neuron_sensitivity(f, w, b, relu=True)
    assert sens.neurons[2].feature_std == 0 and sens.neurons[2].times_most_sensitive == 0
    assert sum(s.times_most_sensitive for s in sens.neurons) == 30 - sens.unflippable_images
    for s in sens.neurons:
        assert s.median_abs_delta == pytest.approx(np.median(np.abs(sens.deltas[:, s.index])))
    first = sens.ranking[:, 0]
    assert np.all(sens.scaled[np.arange(30), first] == sens.scaled.min(axis=1))
    assert sens.order[0] == int(np.argmax([s.times_most_sensitive for s in sens.neurons]))


# ----------------------------------------------------------------------------------------------- the layer


def _gemm_head(**attrs) -> onnx.ModelProto:
    model = conv_classifier(out_channels=4, seed=1)
    fc = next(n for n in model.graph.node if n.op_type == "Gemm")
    fc.ClearField("attribute")
    fc.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return model


def test_find_the_gemm_of_the_builders_model():
    model = conv_classifier(out_channels=4, seed=1)
    head = find_linear_head(model, "logits")
    fc = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "fc"))
    assert (head.name, head.op_type, head.feature_tensor, head.logits_tensor) == ("fc", "Gemm", "flat", "logits")
    np.testing.assert_allclose(head.weight, fc)  # transB = 1: W is stored (classes, features)
    assert head.relu_features and [s.split(":")[0] for s in head.feature_source] == [
        "Flatten",
        "GlobalAveragePool",
        "Relu",
    ]


def test_gemm_alpha_beta_and_transpose_are_folded_in():
    model = _gemm_head(alpha=2.0, beta=0.5, transB=1)
    fc_b = next(t for t in model.graph.initializer if t.name == "fc_b")
    fc_b.CopyFrom(numpy_helper.from_array(np.arange(4, dtype=np.float32), "fc_b"))
    head = find_linear_head(model, "logits")
    fc = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "fc"))
    np.testing.assert_allclose(head.weight, 2.0 * fc)
    np.testing.assert_allclose(head.bias, 0.5 * np.arange(4))
    # Checked against onnxruntime: W f + b is the Gemm's output.
    x = np.random.default_rng(0).uniform(size=(3, 3, 8, 8)).astype(np.float32)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output.append(helper.make_tensor_value_info("flat", TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    logits, flat = session.run(["logits", "flat"], {"image": x})
    np.testing.assert_allclose(flat @ head.weight.T + head.bias, logits, rtol=1e-5, atol=1e-5)


def _matmul_head(softmax: bool = False, relu: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "w1"], ["hidden"], name="hidden_mm"),
        helper.make_node("Relu" if relu else "LeakyRelu", ["hidden"], ["act"], name="act"),
        helper.make_node("MatMul", ["act", "w2"], ["mm"], name="head_mm"),
        helper.make_node("Add", ["b2", "mm"], ["scores" if softmax else "logits"], name="head_bias"),
    ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["logits"], name="softmax", axis=-1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 2, 2])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [
            numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "w1"),
            numpy_helper.from_array(w, "w2"),
            numpy_helper.from_array(b, "b2"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_matmul_add_head_through_a_softmax():
    model = _matmul_head(softmax=True)
    head = find_linear_head(model, "logits")
    w2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w2"))
    b2 = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b2"))
    assert head.op_type == "MatMul+Add" and head.name == "head_mm" and head.logits_tensor == "scores"
    assert head.after == ("Softmax:softmax",) and head.connected
    np.testing.assert_allclose(head.weight, w2.T)
    np.testing.assert_allclose(head.bias, b2)
    assert head.relu_features and head.feature_tensor == "act"
    assert not find_linear_head(_matmul_head(relu=False), "logits").relu_features  # LeakyRelu can be negative


def test_layers_that_are_not_a_linear_head_are_refused():
    model = conv_classifier(out_channels=4, seed=1)
    fc = next(n for n in model.graph.node if n.op_type == "Gemm")
    fc.output[0] = "raw"
    scale = numpy_helper.from_array(np.array([1.0, -1.0, 2.0, 1.0], dtype=np.float32), "per_class")
    model.graph.initializer.append(scale)
    model.graph.node.append(helper.make_node("Mul", ["raw", "per_class"], ["logits"], name="calibrate"))
    with pytest.raises(ModelError, match=r"Mul node 'calibrate'.*linear layers \(fc\)"):
        find_linear_head(model, "logits")
    # --layer picks the Gemm anyway, marked as not feeding the scores through order-keeping ops.
    head = find_linear_head(model, "logits", layer="fc")
    assert head.name == "fc" and not head.connected
    with pytest.raises(UsageError, match="Conv node"):
        find_linear_head(model, "logits", layer="first_conv")
    with pytest.raises(UsageError, match="linear layers are: fc"):
        find_linear_head(model, "logits", layer="nope")
    # A positive scalar temperature keeps the order: the walk passes it.
    plain = conv_classifier(out_channels=4, seed=1)
    gemm = next(n for n in plain.graph.node if n.op_type == "Gemm")
    gemm.output[0] = "raw"
    plain.graph.initializer.append(numpy_helper.from_array(np.array(2.0, dtype=np.float32), "temperature"))
    plain.graph.node.append(helper.make_node("Div", ["raw", "temperature"], ["logits"], name="temp"))
    assert find_linear_head(plain, "logits").after == ("Div:temp",)


# ----------------------------------------------------------------------------------------------- end to end


@pytest.fixture
def trained_model(built_zoo, tmp_path):
    """The zoo's trained classifier (conv, BN, ReLU, conv, ReLU, average pool, linear) and 64 images."""
    model = built_zoo["opset13"]
    images, labels = zoo.tiny_dataset(64, size=model.image_size, channels=3, num_classes=4, seed=41)
    data = tmp_path / "data.npz"
    np.savez(data, x=images, y=labels)
    return model.path, data


def _independent_median_abs_delta(model_path, data_path) -> tuple[np.ndarray, str]:
    """From the ONNX weights and onnxruntime feature values, with plain loops (no kernelscope code)."""
    model = onnx.load(str(model_path))
    gemm = next(n for n in model.graph.node if n.op_type == "Gemm")
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in gemm.attribute}
    w = init[gemm.input[1]].astype(np.float64)
    w = w if attrs.get("transB", 0) else w.T
    b = init[gemm.input[2]].astype(np.float64)
    feature = gemm.input[0]
    model.graph.output.append(helper.make_tensor_value_info(feature, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    stored = np.load(data_path)
    x = (stored["x"].astype(np.float32) / 255.0).transpose(0, 3, 1, 2)
    (f,) = session.run([feature], {"input": x})
    f = f.reshape(len(x), -1).astype(np.float64)
    result = np.empty((len(f), f.shape[1]))
    for n in range(len(f)):
        z = w @ f[n] + b
        y = int(np.argmax(z))
        for i in range(f.shape[1]):
            best = np.inf
            for j in range(len(z)):
                if j == y or w[j, i] == w[y, i]:
                    continue
                delta = (z[y] - z[j]) / (w[j, i] - w[y, i])
                if f[n, i] + delta >= 0 and abs(delta) < abs(best):  # the features are pooled ReLU outputs
                    best = delta
            result[n, i] = abs(best)
    return np.median(result, axis=0), feature


def test_median_abs_delta_matches_an_independent_computation(trained_model):
    model_path, data = trained_model
    config = NeuronsConfig(InspectConfig(data=str(data)), attack=False)
    report = analyse_neurons(model_path, config)
    expected, feature = _independent_median_abs_delta(model_path, data)
    assert report.head.feature_tensor == feature and report.head.relu_features
    got = np.array([s.median_abs_delta for s in report.sensitivity.neurons])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert report.single_neuron is None and report.pgd is None and report.mirror is None
    assert report.check.weights_relative_diff < 1e-5 and report.check.prediction_agreement == 1.0


def test_the_single_neuron_attack_moves_the_feature_toward_its_target(trained_model):
    model_path, data = trained_model
    settings = AttackSettings(epsilon=0.5, pgd=PgdSettings(norm="l2", steps=20, random_start=False), ks=(1, 2, 4))
    report = analyse_neurons(model_path, NeuronsConfig(InspectConfig(data=str(data)), settings=settings))
    single, pgd = report.single_neuron, report.pgd
    assert single is not None and pgd is not None
    assert single.attacks >= 64 - single.skipped_infinite
    # The feature loss is what PGD descends: most attacks leave the neuron closer to its target (the others:
    # mostly ReLU neurons at 0 on that image, which no gradient moves). Ascending the loss by mistake gives ~0.
    assert single.moved_toward_target >= 0.8 * single.attacks
    rates = [r.rate for r in single.rates]
    assert [r.k for r in single.rates] == [1, 2, 4] and rates == sorted(rates)  # any of more neurons: no fewer
    assert rates[0] > 0  # attacking a single neuron does change predictions
    assert report.mirror is not None and report.check.mirror_feature_relative_diff < 1e-4


def test_the_attack_objective_pulls_active_neurons_to_their_targets(trained_model):
    """The attack's own loop on the most sensitive, active (f_i > 0) neuron of each image, read by onnxruntime."""
    model_path, data = trained_model
    inputs = load_model_and_data(model_path, InspectConfig(data=str(data)))
    head = find_linear_head(inputs.model.proto, inputs.output.name)
    deployed = DeployedHead(inputs.batching, inputs.image_input, inputs.output.name, head, inputs.data.preprocessing)
    x01 = inputs.data.dataset.images.astype(np.float32) / 255.0
    scores, features = deployed(x01)
    sens = neuron_sensitivity(features, head.weight, head.bias, relu=head.relu_features)
    rows = np.arange(len(x01))
    # per image, the most sensitive neuron that is active on it
    active = np.where(np.take_along_axis(features, sens.ranking, axis=1) > 0, np.arange(sens.ranking.shape[1]), 10**6)
    pick = sens.ranking[rows, active.argmin(axis=1)]
    keep = np.isfinite(sens.deltas[rows, pick]) & (features[rows, pick] > 0)
    rows, pick = rows[keep], pick[keep]
    delta = sens.deltas[rows, pick]
    twin = HeadTwin(OnnxMirror(inputs.batching.proto), inputs.data.preprocessing, inputs.image_input,
                    head.feature_tensor, head.logits_tensor)  # fmt: skip
    settings = AttackSettings(pgd=PgdSettings(norm="l2", steps=20, random_start=False))
    _, closer = _attack_pairs(
        twin, deployed, x01[rows], features[rows], pick, delta, scores.argmax(axis=1)[rows], settings, (0.0, 1.0),
        np.random.default_rng(0),
    )  # fmt: skip
    assert len(rows) >= 40
    assert closer >= 0.95 * len(rows), (closer, len(rows))


def test_a_fixed_batch_model_gives_the_same_sensitivities(built_zoo, tmp_path):
    """x.view(1, -1) pins the batch to 1: features are read, and attacks run, one image at a time."""
    images, labels = zoo.tiny_dataset(6, size=(8, 8), channels=3, num_classes=4, seed=43)
    data = tmp_path / "d.npz"
    np.savez(data, x=images, y=labels)
    settings = AttackSettings(pgd=PgdSettings(norm="l2", steps=2, random_start=False), ks=(1, 2))
    config = NeuronsConfig(InspectConfig(data=str(data)), settings=settings)
    fixed = analyse_neurons(built_zoo["fixed_batch1"].path, config)
    dynamic = analyse_neurons(built_zoo["opset13"].path, config)
    assert fixed.head.relu_features and fixed.head.feature_source[0].startswith("Reshape")
    np.testing.assert_allclose(
        [s.median_abs_delta for s in fixed.sensitivity.neurons],
        [s.median_abs_delta for s in dynamic.sensitivity.neurons],
        rtol=1e-4,
    )
    assert fixed.single_neuron.attacks > 0
    assert [r.successes for r in fixed.single_neuron.rates] == [r.successes for r in dynamic.single_neuron.rates]


def test_a_model_without_a_linear_head_is_refused(capsys, tmp_path):
    model = conv_classifier(out_channels=4, seed=1)
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Gemm"))
    model.graph.node[-1].output[0] = "logits"  # Flatten(GlobalAveragePool(...)) is the output: 4 "classes"
    path = save(model, tmp_path / "nohead.onnx")
    data = random_npz(tmp_path / "d.npz", n=10)
    code = main([str(a) for a in ["neurons", path, "-d", data]])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "comes from GlobalAveragePool node 'pool', not from a final linear layer" in err  # Flatten passed
    assert "the model has no Gemm or MatMul" in err


def test_a_model_without_a_linear_head_fails_before_the_data_is_read(capsys, tmp_path):
    model = conv_classifier(out_channels=4, seed=1)
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "Gemm"))
    model.graph.node[-1].output[0] = "logits"
    path = save(model, tmp_path / "nohead.onnx")
    code = main(["neurons", str(path), "-d", str(tmp_path / "not-there.npz")])  # the data would fail too
    err = capsys.readouterr().err
    assert code == 2 and "not from a final linear layer" in err


def test_neurons_command_json_contract(capsys, tmp_path):
    model = save(conv_classifier(out_channels=6, seed=3), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=30)
    report = tmp_path / "r.json"
    args = ["neurons", model, "-d", data, "--steps", "3", "--k", "1,2,16", "--json", report]
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Most sensitive neurons" in out and "untargeted PGD" in out
    doc = json.loads(report.read_text())
    assert doc["command"] == "neurons" and doc["schema_version"] == 1
    n = doc["neurons"]
    assert (n["layer"], n["feature_tensor"], n["count"], n["relu_features"]) == ("fc", "flat", 6, True)
    assert [s["index"] for s in n["sensitivity"]] == list(range(6))
    assert set(n["sensitivity"][0]) >= {"index", "median_abs_delta", "mean_scaled_delta", "times_most_sensitive"}
    assert sum(s["times_most_sensitive"] for s in n["sensitivity"]) == 30 - n["unflippable_images"]
    attack = n["single_neuron_attack"]
    assert attack["k"] == [1, 2, 6]  # 16 is capped at the 6 features
    assert (attack["epsilon"], attack["norm"], attack["steps"], attack["lambda"]) == (0.5, "l2", 3, 10.0)
    assert len(attack["success_rate"]) == 3 and all(0 <= r <= 1 for r in attack["success_rate"])
    assert set(n["pgd"]) >= {"success_rate", "epsilon", "norm", "steps"} and n["pgd"]["images"] == 30
    assert doc["devices"] == {"onnxruntime": "cpu", "torch": "cpu"}
    assert "devices: onnxruntime cpu, torch cpu" in out
    code = main([str(a) for a in ["neurons", model, "-d", data, "--no-attack", "--json", report, "--force", "-q"]])
    assert code == 0
    doc = json.loads(report.read_text())
    assert doc["neurons"]["single_neuron_attack"] is None and doc["neurons"]["pgd"] is None
    assert doc["devices"] == {"onnxruntime": "cpu", "torch": None}  # no attack: torch never ran


def test_neurons_html_page(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    model = save(conv_classifier(out_channels=5, seed=4), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=24)
    page, report = tmp_path / "r.html", tmp_path / "r.json"
    args = ["neurons", model, "-d", data, "--steps", "2", "--k", "1,2", "--html", page, "--json", report, "-q"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "kernelscope neurons" in text
    assert text.count("data:image/png;base64,") == 2  # the sensitivity bars and the success-vs-k figure
    assert "untargeted PGD" in text and "Single-neuron attack vs PGD" in text
    # The page is a function of the JSON document: rebuilt from the saved file, it is the same.
    from kernelscope.report.html import report_page

    assert report_page(json.loads(report.read_text())) == text
    # Without attacks, the page says so instead of drawing the second figure.
    args = ["neurons", model, "-d", data, "--no-attack", "--html", page, "--force", "-q"]
    assert main([str(a) for a in args]) == 0
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 1 and "--no-attack" in text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "first_conv"], "is a Conv node; choose a Gemm or MatMul"),
        (["--k", "0"], "--k must be positive"),
        (["--eps", "0"], "--eps must be a positive number"),
        (["--norm", "l1"], "norm must be linf or l2"),
    ],
)
def test_neurons_usage_errors(capsys, tmp_path, args, message):
    model = save(conv_classifier(out_channels=3, seed=2), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=10)
    code = main([str(a) for a in ["neurons", model, "-d", data, *args]])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_neurons_plots_folder(capsys, tmp_path):
    """--plots writes the page's two figures as PNG files PIL opens, with the documented names, and nothing else."""
    pytest.importorskip("matplotlib")
    from PIL import Image

    from kernelscope.report import neurons_page

    model = save(conv_classifier(out_channels=5, seed=4), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=16)
    folder, report = tmp_path / "figs" / "neurons", tmp_path / "r.json"  # the folder and its parent are created
    args = ["neurons", model, "-d", data, "--steps", "2", "--k", "1,2", "--plots", folder, "--json", report]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    assert "wrote 2 figure(s) to" in capsys.readouterr().err
    names = ["neurons_sensitivity.png", "neurons_success_vs_k.png"]
    assert list(neurons_page.FIGURE_FILES.values()) == names
    assert sorted(p.name for p in folder.iterdir()) == names  # no temporary file left
    for name in names:
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width > 600 and image.height > 300
            image.verify()
    # The files are the figures of the report: redrawn from the saved JSON, byte for byte.
    again = neurons_page.save_figures(json.loads(report.read_text()), tmp_path / "again")
    assert [p.name for p in again] == names
    assert all((folder / p.name).read_bytes() == p.read_bytes() for p in again)
    # Existing figures need --force, checked before any work; --no-attack has only the sensitivity bars.
    args = ["neurons", model, "-d", data, "--no-attack", "--plots", folder]
    assert main([str(a) for a in args]) == 2
    assert "neurons_sensitivity.png already exists; pass --force" in capsys.readouterr().err
    other = tmp_path / "no-attack"
    assert main([str(a) for a in [*args[:-1], other]]) == 0
    assert "(no data for neurons_success_vs_k.png)" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == names[:1]


def test_neurons_missing_matplotlib_fails_before_the_analysis(capsys, tmp_path, monkeypatch):
    import sys

    import kernelscope.neurons.analysis

    model = save(conv_classifier(out_channels=3, seed=2), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=10)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setattr(kernelscope.neurons.analysis, "analyse_neurons", lambda *a, **k: pytest.fail("it ran"))
    code = main([str(a) for a in ["neurons", model, "-d", data, "--plots", tmp_path / "figs"]])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and 'pip install "kernelscope[plots]"' in err
    assert not (tmp_path / "figs").exists()


def test_an_l2_budget_spread_over_a_224_px_image_is_called_out(capsys, tmp_path):
    """ε = 0.5 L2 over 224 x 224 x 3 values is 7x less per value than on the paper's 32 x 32 x 3 images: the
    report says so and gives the ε with the paper's budget per value; a 32-px model gets no such note."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sample = root / "examples" / "data" / "cifar10-sample"
    base = ["--limit", "4", "--k", "1", "--steps", "1", "--json"]
    stem = ["neurons", root / "examples/models/cifar10_stem224.onnx", "-d", sample, "--resize", "256", "--crop", "224"]
    assert main([str(a) for a in [*stem, *base, tmp_path / "a.json", "-q"]]) == 0, capsys.readouterr().err
    notes = [w for w in json.loads((tmp_path / "a.json").read_text())["warnings"] if "per value" in w]
    assert len(notes) == 1 and "150,528 input values" in notes[0] and "--eps 3.5 " in notes[0]
    small = ["neurons", root / "examples/models/cifar10_cnn.onnx", "-d", sample]
    assert main([str(a) for a in [*small, *base, tmp_path / "b.json", "-q"]]) == 0, capsys.readouterr().err
    assert not [w for w in json.loads((tmp_path / "b.json").read_text())["warnings"] if "per value" in w]
