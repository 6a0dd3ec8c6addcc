"""Fine-tuning hardening: the trainable mirror, write-back, the three methods' losses, the paired statistics,
and ``harden --method ...`` end to end (the written file differs only in the tuned initializers and runs in
onnxruntime with the accuracy the report claims)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from kernelscope.cli.app import main
from kernelscope.harden.finetune import TrainingView, trainable_copy
from kernelscope.harden.jacobian import JacobianRegularization
from kernelscope.harden.sensitivity import HeadWeight, SensitivityRegularization
from kernelscope.harden.writeback import changed_initializers, write_back
from kernelscope.mirror import OnnxMirror
from kernelscope.mirror.trainable import find_tunable
from kernelscope.stats import mcnemar_exact, paired_comparison

import zoo


class _Net(torch.nn.Module):
    """Conv -> BN -> ReLU -> global pool -> Linear: the shape of a small deployed classifier."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(6)
        self.head = torch.nn.Linear(6, classes)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        return self.head(y.mean(dim=(2, 3)))


def _export(net: torch.nn.Module, path: Path, opset: int = 17) -> onnx.ModelProto:
    torch.manual_seed(0)
    net.eval()
    with torch.no_grad():  # non-trivial BN statistics, so inference mode matters
        net.bn.running_mean.uniform_(-0.2, 0.2)
        net.bn.running_var.uniform_(0.5, 1.5)
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=opset, do_constant_folding=False,
        input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.save(proto, str(path))
    return proto


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    directory = tmp_path_factory.mktemp("finetune")
    torch.manual_seed(0)
    net = _Net()
    proto = _export(net, directory / "net.onnx")
    return net, proto, directory / "net.onnx"


def _x(n: int = 5, seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(seed).uniform(0, 1, size=(n, 3, 8, 8)), dtype=torch.float32)


def test_tunable_selection_is_the_linear_weights_and_biases(tiny):
    _, proto, _ = tiny
    selection = find_tunable(proto, "all")
    roles = {t.name: t.role for t in selection.tensors}
    assert roles == {"conv.weight": "weight", "conv.bias": "bias", "head.weight": "weight", "head.bias": "bias"}
    assert selection.parameters == 6 * 27 + 6 + 4 * 6 + 4
    with_bn = find_tunable(proto, "all", batchnorm=True)
    assert {"bn.weight", "bn.bias"} <= set(with_bn.names)
    assert "bn.running_mean" not in with_bn.names and "bn.running_var" not in with_bn.names
    first = find_tunable(proto, "first-conv", first_conv="/conv/Conv")
    assert first.names == ["conv.weight", "conv.bias"]


def test_mirror_parameter_gradients_equal_native_torch(tiny):
    net, proto, _ = tiny
    mirror = OnnxMirror(proto)
    parameters = mirror.make_trainable(find_tunable(proto, "all").names)
    x, y = _x(), torch.tensor([0, 1, 2, 3, 0])
    loss = torch.nn.functional.cross_entropy(mirror(x), y)
    loss.backward()
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()  # eval mode: BN uses running statistics
    native = dict(net.named_parameters())
    for name, parameter in parameters.items():
        np.testing.assert_allclose(parameter.grad.numpy(), native[name].grad.numpy(), rtol=1e-4, atol=1e-6)


def test_write_back_changes_only_the_tuned_initializers_and_keeps_parity(tiny, tmp_path):
    _, proto, _ = tiny
    names = find_tunable(proto, "all").names
    mirror, parameters = trainable_copy(OnnxMirror(proto), names)
    with torch.no_grad():
        for p in parameters.values():
            p.add_(torch.randn_like(p) * 0.1)
    view = TrainingView(mirror, None, "logits", "cross_entropy", parameters)
    written = write_back(proto, view.state())
    assert sorted(changed_initializers(proto, written)) == sorted(names)
    old = {t.name: t.SerializeToString() for t in proto.graph.initializer}
    for tensor in written.graph.initializer:
        if tensor.name not in names:
            assert tensor.SerializeToString() == old[tensor.name]  # byte-identical
    assert [n.SerializeToString() for n in written.graph.node] == [n.SerializeToString() for n in proto.graph.node]
    path = tmp_path / "w.onnx"
    onnx.save(written, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    x = _x(7, seed=3)
    ours = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(mirror(x).numpy(), ours, rtol=1e-5, atol=1e-5)


def test_write_back_keeps_float16(built_zoo):
    model = onnx.load(str(built_zoo["float16"].path))
    names = find_tunable(model, "all").names
    assert names
    values = {
        t.name: numpy_helper.to_array(t).astype(np.float32) * 1.5 for t in model.graph.initializer if t.name in names
    }
    written = write_back(model, values)
    for tensor in written.graph.initializer:
        if tensor.name in names:
            assert tensor.data_type == onnx.TensorProto.FLOAT16
            np.testing.assert_array_equal(numpy_helper.to_array(tensor), values[tensor.name].astype(np.float16))


def test_quantized_weights_are_not_tuned(built_zoo):
    selection = find_tunable(onnx.load(str(built_zoo["qdq"].path)), "all")
    assert selection.quantized  # the QDQ conv weight is named as left alone
    assert all(t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16) for t in selection.tensors)


def test_jacobian_projection_estimates_the_frobenius_norm(tiny):
    _, proto, _ = tiny
    mirror = OnnxMirror(proto)
    view = TrainingView(mirror, _unit_preprocessing(), "logits", "cross_entropy", {})
    x01 = torch.as_tensor(np.random.default_rng(1).uniform(0, 1, size=(1, 8, 8, 3)), dtype=torch.float32)
    labels = torch.tensor([1])
    exact = torch.autograd.functional.jacobian(lambda z: view.scores(z)[0], x01)  # (K, 1, 8, 8, 3)
    frobenius = float(exact.pow(2).sum())
    with torch.no_grad():
        ce = float(view.classification_loss(view.scores(x01), labels))
    method = JacobianRegularization(lambda_j=1.0, lambda_s=0.0, epsilon=0.01)
    generator = np.random.default_rng(0)
    estimates = [float(method.loss(view, x01, labels, generator).detach()) - ce for _ in range(3000)]
    # E[½·K·‖vᵀJ‖²] = ½‖J‖²_F; 3000 projections put the mean within a few percent.
    assert np.mean(estimates) == pytest.approx(0.5 * frobenius, rel=0.06)


def test_sensitivity_regularizer_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 20))
    f = np.abs(rng.normal(size=(3, 20)))
    y = np.array([0, 2, 3])
    k = 5
    r1 = max(np.sort(np.abs(w[a] - w[b]))[-k:].mean() for a in range(4) for b in range(a + 1, 4))
    r2 = np.mean(
        [np.mean([np.sort(np.abs(f[i] * (w[y[i]] - w[c])))[-k:].mean() / f[i].sum() for c in range(4) if c != y[i]])
         for i in range(3)]
    )  # fmt: skip
    method = SensitivityRegularization(HeadWeight("w", False, 1.0, "f"), k=k)
    weight = torch.as_tensor(w)
    assert float(method.r1(weight)) == pytest.approx(r1)
    assert float(method.r2(weight, torch.as_tensor(f), torch.as_tensor(y))) == pytest.approx(r2)


def test_paired_comparison():
    before = np.array([1, 1, 1, 0, 0, 0, 1, 0] * 25, dtype=bool)
    after = before.copy()
    after[[3, 4, 5, 11, 12, 13, 19, 20]] = True  # 8 gained
    after[[0]] = False  # 1 lost
    c = paired_comparison(before, after)
    assert (c.gained, c.lost, c.n) == (8, 1, 200)
    assert c.difference == pytest.approx(7 / 200)
    assert c.p_value == pytest.approx(mcnemar_exact(1, 8)) and c.p_value < 0.05 and c.significant
    assert c.ci95[0] < c.difference < c.ci95[1]
    same = paired_comparison(before, before)
    assert same.p_value == 1.0 and not same.significant and same.ci95[0] < 0 < same.ci95[1]
    assert "not significant" in same.describe()


def _unit_preprocessing():
    from kernelscope.data.preprocessing import Preprocessing

    return Preprocessing(1 / 255, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "NCHW", (8, 8), 3, "float32")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small CNN briefly trained on the tiny task, with its train and test data as .npz files."""
    directory = tmp_path_factory.mktemp("trained")
    images, labels = zoo.tiny_dataset(600, size=(8, 8), channels=3, num_classes=4, seed=11)
    torch.manual_seed(0)
    net = _Net()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.02)
    x = torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    y = torch.as_tensor(labels)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x[:400]), y[:400]).backward()
        optimizer.step()
    net.eval()
    path = directory / "net.onnx"
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=17, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key = "kernelscope.preprocessing"
    entry.value = json.dumps({"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NCHW"})
    onnx.save(proto, str(path))
    np.savez(directory / "train.npz", x=images[:400], y=labels[:400])
    np.savez(directory / "test.npz", x=images[400:], y=labels[400:])
    # The same network as a TorchScript archive (its export fuses the BatchNormalization into the Conv).
    extra = {"input_shape": [1, 3, 8, 8], "preprocessing": json.loads(entry.value)}
    scripted = torch.jit.script(net)
    torch.jit.save(scripted, str(directory / "net.pt"), _extra_files={"kernelscope.json": json.dumps(extra)})
    return path, directory / "train.npz", directory / "test.npz"


def _harden_args(trained, out, report, *extra):
    path, train, test = trained
    return [
        "harden", str(path), "--data", str(test), "--train-data", str(train), "-o", str(out), "--json", str(report),
        "--eps", "0.05", "--sweep", "0.05", "--epochs", "2", "--strengths", "1", "--pgd-steps", "3",
        "--pgd-restarts", "1", "--clean-budget", "100", "-q", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize("method", ["adversarial", "jacobian", "sensitivity"])
def test_harden_finetuning_writes_only_tuned_weights_with_the_claimed_accuracy(
    trained, tmp_path, monkeypatch, capsys, method
):
    import kernelscope.harden.pipeline as pipeline

    # The search is tested on its own; here the last fine-tuning checkpoint is taken whatever it measured,
    # so that the write-back and the held-out claims are checked on every method.
    monkeypatch.setattr(pipeline, "choose", lambda candidates, worst: candidates[-1])
    out, report = tmp_path / "h.onnx", tmp_path / "h.json"
    code = main(_harden_args(trained, out, report, "--method", method, "--force-write"))
    assert code == 0, capsys.readouterr().err
    doc = json.loads(report.read_text())
    h = doc["harden"]
    assert h["method"] == method and h["chosen"]["method"] == method
    original = onnx.load(str(trained[0]))
    hardened = onnx.load(str(out))
    onnx.checker.check_model(str(out), full_check=True)
    changed = changed_initializers(original, hardened)
    tuned = {t["name"] for t in h["tuned"]["tensors"]}
    assert changed and set(changed) <= tuned and sorted(changed) == sorted(h["changed_initializers"])
    old = {t.name: t.SerializeToString() for t in original.graph.initializer}
    for tensor in hardened.graph.initializer:
        if tensor.name not in changed:
            assert tensor.SerializeToString() == old[tensor.name]
    assert [n.SerializeToString() for n in hardened.graph.node] == [n.SerializeToString() for n in original.graph.node]
    # The held-out clean accuracy the report claims is what onnxruntime gives on the held-out images.
    from kernelscope.harden import split_indices

    data = np.load(trained[2])
    _, held_out = split_indices(len(data["y"]), 0.5, 0)
    x = data["x"][held_out].astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    accuracy = float(np.mean(session.run(None, {"input": x})[0].argmax(axis=1) == data["y"][held_out]))
    assert h["after"]["clean_accuracy"] == pytest.approx(accuracy)
    assert h["after"]["robustness"]["clean"]["accuracy"] == pytest.approx(accuracy)
    worst = h["change"]["worst"]
    assert set(worst) >= {"difference", "ci95", "p_value", "significant"}


def test_held_out_loss_after_a_validation_pick_exits_1_and_writes_nothing(trained, tmp_path, monkeypatch, capsys):
    import kernelscope.harden.pipeline as pipeline

    # Pick the candidate that is worst on validation: the held-out images cannot confirm it.
    monkeypatch.setattr(pipeline, "choose", lambda candidates, worst: min(candidates, key=lambda c: c.key))
    out, report = tmp_path / "h.onnx", tmp_path / "h.json"
    args = _harden_args(trained, out, report, "--method", "adversarial", "--lr", "0.5", "--clean-budget", "1")
    code = main(args)
    captured = capsys.readouterr()
    doc = json.loads(report.read_text())["harden"]
    assert doc["confirmed"] is False
    assert code == 1 and "do not confirm" in captured.err.strip().splitlines()[-1]
    assert "do not confirm" in json.loads(report.read_text())["verdict"]
    assert not out.exists()
    assert main([*args, "--force-write", "--force"]) == 0 and out.exists()


def test_train_data_that_is_the_evaluation_data_is_refused(trained, tmp_path, capsys):
    path, _, test = trained
    code = main(
        ["harden", str(path), "--data", str(test), "--train-data", str(test), "--train-split", "test", "--method",
         "adversarial", "-o", str(tmp_path / "h.onnx")]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "is the evaluation data itself" in err and len(err.strip().splitlines()) == 1


def test_finetuning_a_path_without_train_data_says_what_to_pass(trained, tmp_path, capsys):
    path, _, test = trained
    code = main(["harden", str(path), "--data", str(test), "--method", "jacobian", "-o", str(tmp_path / "h.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and "--train-data" in err and len(err.strip().splitlines()) == 1


def test_bad_method_and_tune_are_usage_errors(trained, tmp_path, capsys):
    path, _, test = trained
    for option, value in (("--method", "magic"), ("--tune", "half")):
        code = main(["harden", str(path), "--data", str(test), option, value, "-o", str(tmp_path / "h.onnx")])
        err = capsys.readouterr().err
        assert code == 2 and option in err and len(err.strip().splitlines()) == 1


def _held_out(trained):
    from kernelscope.harden import split_indices

    data = np.load(trained[2])
    _, held_out = split_indices(len(data["y"]), 0.5, 0)
    return data["x"][held_out].astype(np.float32).transpose(0, 3, 1, 2) / 255.0, data["y"][held_out]


@pytest.mark.parametrize("method", ["adversarial", "sensitivity"])
def test_torchscript_input_is_written_back_as_torchscript(trained, tmp_path, monkeypatch, capsys, method):
    import kernelscope.harden.pipeline as pipeline

    monkeypatch.setattr(pipeline, "choose", lambda candidates, worst: candidates[-1])
    source = trained[0].with_suffix(".pt")
    out, report = tmp_path / "h.pt", tmp_path / "h.json"
    args = _harden_args(trained, out, report, "--method", method, "--force-write")
    args[1] = str(source)
    code = main(args)
    assert code == 0, capsys.readouterr().err
    h = json.loads(report.read_text())["harden"]
    original, written = torch.jit.load(str(source)), torch.jit.load(str(out))
    assert written.code == original.code  # the module's own code, not a re-traced one
    before, after = original.state_dict(), written.state_dict()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    # The fused Conv weight lands in conv.weight, the fused bias's change in the BatchNormalization's shift;
    # the running statistics and the Conv's own bias stay as deployed.
    assert set(changed) <= {"conv.weight", "bn.bias", "head.weight", "head.bias"} and "conv.weight" in changed
    assert h["torchscript"]["parity_relative_diff"] <= 1e-4
    assert {u["initializer"] for u in h["torchscript"]["updates"]} == set(h["changed_initializers"])
    # The archive runs in torch with the held-out accuracy the report claims.
    x, y = _held_out(trained)
    with torch.no_grad():
        accuracy = float(np.mean(written(torch.as_tensor(x)).argmax(dim=1).numpy() == y))
    assert h["after"]["clean_accuracy"] == pytest.approx(accuracy)
    extra = {"kernelscope.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    stored = json.loads(extra["kernelscope.json"])
    assert stored["input_shape"] == [1, 3, 8, 8] and stored["harden"]["method"] == method
    # kernelscope reads the written archive like any other input.
    assert main(["inspect", str(out), "--data", str(trained[2]), "--no-attack", "-q"]) == 0


def test_torchscript_input_with_an_onnx_name_is_written_as_onnx(trained, tmp_path, monkeypatch, capsys):
    import kernelscope.harden.pipeline as pipeline

    monkeypatch.setattr(pipeline, "choose", lambda candidates, worst: candidates[-1])
    out, report = tmp_path / "h.onnx", tmp_path / "h.json"
    args = _harden_args(trained, out, report, "--method", "adversarial", "--force-write")
    args[1] = str(trained[0].with_suffix(".pt"))
    assert main(args) == 0, capsys.readouterr().err
    onnx.checker.check_model(str(out), full_check=True)
    x, y = _held_out(trained)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    accuracy = float(np.mean(session.run(None, {"input": x})[0].argmax(axis=1) == y))
    assert json.loads(report.read_text())["harden"]["after"]["clean_accuracy"] == pytest.approx(accuracy)


def test_an_onnx_input_cannot_be_written_as_torchscript(trained, tmp_path, capsys):
    path, _, test = trained
    code = main(["harden", str(path), "--data", str(test), "-o", str(tmp_path / "h.pt")])
    err = capsys.readouterr().err
    assert code == 2 and "written back as ONNX" not in err and ".onnx name" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "h.pt").exists()


def test_an_export_change_that_is_not_a_parameter_is_refused_by_name(trained):
    from kernelscope.errors import ModelError
    from kernelscope.harden.torchscript import _module_values
    from kernelscope.model.loading import load_model

    source = load_model(trained[0].with_suffix(".pt"))
    state = {k: v.numpy() for k, v in torch.jit.load(str(trained[0].with_suffix(".pt"))).state_dict().items()}
    values, updates = _module_values(source.proto, source.proto, state)
    assert values == {} and updates == []
    first = source.proto.graph.initializer[0].name
    random = np.random.default_rng(0).normal(size=tuple(source.proto.graph.initializer[0].dims))
    hardened = write_back(source.proto, {first: random.astype(np.float32)})
    if first in state:  # a named parameter maps by name; make the file's name and values unknown to the module
        state = {k: (v + 1 if v.dtype.kind == "f" else v) for k, v in state.items()}
    with pytest.raises(ModelError, match=first.replace(".", r"\.")):
        _module_values(source.proto, hardened, state)


class _CrossEntropy:
    """The classification loss alone: deterministic, a batch mean like every method's loss."""

    name, label, memory_factor = "ce", "ce", 1.0

    def loss(self, view, x01, labels, generator):
        return view.classification_loss(view.scores(x01), labels)


def test_finetuning_in_micro_batches_takes_the_steps_of_whole_batches(tiny):
    """Parts of 7 images accumulate each 32-image step: the tuned weights are those of whole batches (to
    float rounding), and the optimizer took as many steps."""
    from kernelscope.data.dataset import ImageDataset
    from kernelscope.data.preprocessing import PreparedData
    from kernelscope.harden.finetune import FinetuneSettings, finetune

    _, proto, _ = tiny
    rng = np.random.default_rng(3)
    dataset = ImageDataset(
        "random", rng.integers(0, 256, (70, 8, 8, 3), dtype=np.uint8), rng.integers(0, 4, 70), "train", 4
    )
    data = PreparedData(dataset, _unit_preprocessing())
    names = find_tunable(proto, "all").names
    states = []
    for micro in (None, 7):
        mirror, parameters = trainable_copy(OnnxMirror(proto), names)
        view = TrainingView(mirror, _unit_preprocessing(), "logits", "cross_entropy", parameters)
        settings = FinetuneSettings(epochs=2, learning_rate=1e-2, batch_size=32, micro_batch=micro)
        run = finetune(view, _CrossEntropy(), 1.0, data, settings)
        states.append(run.checkpoints[-1].state)
    for name, value in states[0].items():
        np.testing.assert_allclose(states[1][name], value, rtol=1e-4, atol=1e-6, err_msg=name)
    original = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert any(not np.allclose(states[0][n], original[n]) for n in names)  # it did tune


def test_only_the_choosable_candidate_keeps_its_tuned_weights():
    """Judged one by one and released after each, the search ends holding exactly the payload `choose` picks
    from all of them (ties keep the first; ineligible candidates never hold one)."""
    from kernelscope.harden.search import Candidate, choose, release_unchosen

    rng = np.random.default_rng(3)
    for trial in range(200):
        original_worst = float(rng.choice([0.1, 0.3]))
        pool: list[Candidate] = []
        for i in range(int(rng.integers(1, 9))):
            worst = float(rng.choice([0.0, 0.1, 0.3, 0.4, 0.5]))  # repeats: ties happen
            candidate = Candidate(
                "jacobian", f"run {i}", float(rng.choice([0.5, 0.6])), worst, worst, worst, worst,
                within_budget=bool(rng.random() < 0.8), epoch=int(rng.integers(1, 3)), payload={"w": i},
            )  # fmt: skip
            pool.append(candidate)
            release_unchosen(pool, choose(pool, original_worst))
        best = choose(pool, original_worst)
        held = [c for c in pool if c.payload is not None]
        assert held == ([best] if best is not None else []), trial
        if best is not None:
            assert best.payload == {"w": pool.index(best)}
