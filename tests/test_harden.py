"""``harden``: the weight rewrite touches nothing else, the transform is exact, and the command is honest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from kernelscope.cli.app import main
from kernelscope.model.first_conv import find_conv
from kernelscope.model.loading import load_model
from kernelscope.model.surgery.replace_weight import replace_conv_weight

import zoo

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "cifar10_cnn.onnx"
TORCHSCRIPT = ROOT / "examples" / "models" / "cifar10_cnn.pt"
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"


def _tensors(proto: onnx.ModelProto) -> dict[str, bytes]:
    found = {t.name: t.SerializeToString() for t in proto.graph.initializer}
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                found[f"{node.output[0]}:{attr.name}"] = attr.t.SerializeToString()
    return found


def _without_tensors(proto: onnx.ModelProto) -> bytes:
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    del copy.graph.initializer[:]
    for node in copy.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.Clear()
    return copy.SerializeToString()


@pytest.mark.parametrize(
    "name",
    ["opset13", "opset9", "bn_unfused", "constant_weight", "identity_weight", "float16", "qdq", "qlinear",
     "conv_integer", "external_data", "initializers_as_inputs"],
)  # fmt: skip
def test_weight_rewrite_changes_only_the_conv_weight(built_zoo, name):
    model = built_zoo[name]
    loaded = load_model(model.path)
    layer = find_conv(loaded.proto, loaded.image_input.name)
    rng = np.random.default_rng(0)
    # Shrinking factors keep quantized weights inside their integer range (growth could saturate them).
    wanted = (layer.weight * rng.uniform(0.5, 1.0, layer.weight.shape)).astype(np.float32)
    rewritten = replace_conv_weight(loaded.proto, layer, wanted)
    assert _without_tensors(rewritten) == _without_tensors(loaded.proto)  # nodes, attributes, graph I/O, metadata
    before, after = _tensors(loaded.proto), _tensors(rewritten)
    changed = [key for key in before if before[key] != after[key]]
    assert len(changed) == 1, changed
    applied = find_conv(rewritten, loaded.image_input.name).weight
    # Float weights land exactly (float16: to its precision); quantized ones within half a quantization step.
    steps = [np.diff(np.unique(channel)).min() for channel in layer.weight] if layer.quantized else [0]
    tolerance = 1e-3 * np.abs(wanted).max() if name == "float16" else max(0.5 * max(steps) + 1e-6, 1e-7)
    assert np.max(np.abs(applied - wanted)) <= tolerance
    onnx.checker.check_model(rewritten)


def _reference_transform(weight: np.ndarray, fragile: list[int], null: list[int], noise: float) -> np.ndarray:
    """DESIGN §2.7 written out independently: hard threshold, spectral-norm alpha."""
    out = weight.astype(np.float64).copy()
    k = out[null].reshape(len(null), -1)
    u, s, vt = np.linalg.svd(k, full_matrices=False)
    m, n = min(k.shape), max(k.shape)
    beta = m / n
    lam = np.sqrt(2 * (beta + 1) + 8 * beta / ((beta + 1) + np.sqrt(beta**2 + 14 * beta + 1)))
    tau = lam * np.sqrt(n) * noise
    filtered = (u * np.where(s >= tau, s, 0.0)) @ vt
    alpha = 1 + np.linalg.svd(k - filtered, compute_uv=False)[0]
    out[null] = filtered.reshape(out[null].shape)
    out[fragile] *= alpha
    return out


def test_forced_noise_on_the_example_writes_the_exact_transform(tmp_path, capsys):
    out, report = tmp_path / "h.onnx", tmp_path / "h.json"
    code = main(
        ["harden", str(MODEL), "--data", str(SAMPLE), "-o", str(out), "--noise", "0.05", "--limit", "200",
         "--sweep", "0.01", "--json", str(report), "-q"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads(report.read_text())
    h = doc["harden"]
    assert h["forced"] is True and h["noise_level"] == 0.05 and h["written"] == str(out)
    assert doc["devices"] == {"onnxruntime": "cpu", "torch": "cpu"}
    assert doc["fragile"] and doc["null"]
    original, hardened = onnx.load(str(MODEL)), onnx.load(str(out))
    conv = next(n for n in original.graph.node if n.op_type == "Conv")
    before, after = _tensors(original), _tensors(hardened)
    assert [k for k in before if before[k] != after[k]] == [conv.input[1]]
    weights = {t.name: numpy_helper.to_array(t) for t in hardened.graph.initializer}
    expected = _reference_transform(
        numpy_helper.to_array(next(t for t in original.graph.initializer if t.name == conv.input[1])),
        doc["fragile"],
        doc["null"],
        0.05,
    )
    assert np.max(np.abs(weights[conv.input[1]] - expected)) <= 1e-5
    meta = {p.key: p.value for p in hardened.metadata_props}
    recorded = json.loads(meta["kernelscope.harden"])
    assert recorded["fragile"] == doc["fragile"] and recorded["alpha"] == pytest.approx(h["alpha"])
    assert (
        meta["kernelscope.preprocessing"]
        == {p.key: p.value for p in original.metadata_props}["kernelscope.preprocessing"]
    )
    onnx.checker.check_model(str(out), full_check=True)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((2, 3, 32, 32), np.float32)})[0].shape == (2, 10)
    assert h["before"]["fgsm"][0]["epsilon"] == 0.0 and h["after"]["clean_accuracy"] is not None


def test_no_improvement_writes_nothing_and_exits_1(tmp_path, capsys, monkeypatch):
    import kernelscope.harden.pipeline as harden

    # A filter that changes nothing cannot beat the original: the honest answer is "no", and no file.
    monkeypatch.setattr(harden, "filter_weights", lambda w, f, n, level, mode: (w, _identity_filter(level, mode, f, n)))
    out = tmp_path / "h.onnx"
    code = main(["harden", str(MODEL), "--data", str(SAMPLE), "-o", str(out), "--limit", "120", "--sweep", "0.01"])
    captured = capsys.readouterr()
    assert code == 1
    assert "No candidate beat the original" in captured.out
    assert "(no-op)" in captured.out  # every candidate is shown as the no-op it is
    assert not out.exists() and not list(tmp_path.iterdir())


def _identity_filter(level, mode, fragile, null):
    from kernelscope.harden.svd import NullFilter

    return NullFilter(
        noise_level=level,
        svd_mode=mode,
        tau=0.0,
        alpha=1.0,
        beta=1.0,
        m=1,
        n=1,
        rank=1,
        kept_singular_values=1,
        singular_values=(1.0,),
        filtered_singular_values=(1.0,),
        fragile=tuple(fragile),
        null=tuple(null),
    )


def test_refuses_to_overwrite_and_to_write_over_the_input(tmp_path, capsys):
    out = tmp_path / "h.onnx"
    out.write_bytes(b"precious")
    assert main(["harden", str(MODEL), "--data", str(SAMPLE), "-o", str(out), "--noise", "0.05"]) == 2
    assert out.read_bytes() == b"precious"
    assert "--force" in capsys.readouterr().err
    assert main(["harden", str(MODEL), "--data", str(SAMPLE), "-o", str(MODEL), "--noise", "0.05", "--force"]) == 2
    assert "is the input file" in capsys.readouterr().err


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import kernelscope.io as io

    def explode(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "replace", explode)
    with pytest.raises(KeyboardInterrupt):
        io.atomic_write_bytes(tmp_path / "h.onnx", b"x" * 1000)
    assert list(tmp_path.iterdir()) == []


def test_torchscript_input_writes_onnx(tmp_path, capsys):
    out = tmp_path / "h.onnx"
    code = main(
        ["harden", str(TORCHSCRIPT), "--data", str(SAMPLE), "-o", str(out), "--noise", "0.05", "--limit", "100",
         "--sweep", "0.01", "-q"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    onnx.checker.check_model(str(out), full_check=True)


def test_external_data_is_kept(built_zoo, tmp_path, capsys):
    model = built_zoo["external_data"]
    data = tmp_path / "d.npz"
    images, labels = zoo.tiny_dataset(60, size=model.image_size, channels=3, num_classes=4, seed=3)
    np.savez(data, x=images, y=labels)
    out = tmp_path / "h.onnx"
    code = main(
        ["harden", str(model.path), "--data", str(data), "-o", str(out), "--noise", "10", "--sweep", "0.05", "-q"]
    )
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "h.onnx.data").exists()
    stored = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in stored.graph.initializer)
    onnx.checker.check_model(str(out))


def test_forced_no_op_noise_level_writes_nothing_unless_forced(tmp_path, capsys):
    # ε_n = 0 with the hard threshold keeps every singular value and gives α = 1: the weights do not change.
    out, report = tmp_path / "h.onnx", tmp_path / "h.json"
    args = ["harden", str(MODEL), "--data", str(SAMPLE), "-o", str(out), "--noise", "0", "--limit", "120"]
    args += ["--sweep", "0.01", "--pgd-steps", "2", "--pgd-restarts", "1", "--json", str(report)]
    code = main(args)
    captured = capsys.readouterr()
    assert code == 1
    error = captured.err.strip().splitlines()[-1]
    assert error.startswith("kernelscope: error:") and "no-op" in error
    assert not out.exists()
    doc = json.loads(report.read_text())["harden"]
    assert doc["no_op"] is True and doc["changed_initializers"] == []
    level = doc["first_change_level"]
    assert level > 0 and f"{level:.4g}" in " ".join(captured.out.split())  # the level that would act is shown
    # The level it names really is where the filter starts to drop a singular value.
    from kernelscope.harden.svd import filter_weights

    layer_weight = onnx.numpy_helper.to_array(
        next(t for t in onnx.load(str(MODEL)).graph.initializer if t.name == "onnx::Conv_37")
    )
    full = json.loads(report.read_text())
    below = filter_weights(layer_weight, full["fragile"], full["null"], level * 0.999)[1]
    above = filter_weights(layer_weight, full["fragile"], full["null"], level * 1.001)[1]
    assert below.kept_singular_values == below.m and above.kept_singular_values == below.m - 1
    assert main([*args, "--force-write", "--force"]) == 0
    assert out.exists()
