"""The command line: exit codes, one-line errors, the JSON contract."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper

from kernelscope.cli.app import main

from builders import conv_classifier, random_npz, save


@pytest.fixture
def model_path(tmp_path):
    return save(conv_classifier(out_channels=5, seed=2), tmp_path / "model.onnx")


@pytest.fixture
def npz_path(tmp_path):
    return random_npz(tmp_path / "data.npz", n=50)


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("kernelscope: error:")
    assert "Traceback" not in err


def test_inspect_json_contract(capsys, tmp_path, model_path, npz_path):
    report = tmp_path / "r.json"
    code, out, err = _run(capsys, "inspect", model_path, "--data", npz_path, "--json", report, "--bootstrap", 100)
    assert code == 0, err
    assert "Verdict" in out
    doc = json.loads(report.read_text())
    assert doc["schema_version"] == 1
    assert doc["kernelscope_version"]
    assert doc["model"]["format"] == "onnx" and doc["model"]["opset"] == 13 and doc["model"]["path"] == str(model_path)
    assert doc["layer"] | {} == doc["layer"]
    assert {k: doc["layer"][k] for k in ("name", "in_channels", "out_channels", "kernel_shape")} == {
        "name": "first_conv",
        "in_channels": 3,
        "out_channels": 5,
        "kernel_shape": [3, 3],
    }
    pre = doc["data"]["preprocessing"]
    assert doc["data"]["n"] == 50
    assert pre["layout"] == "NCHW" and pre["size"] == [8, 8] and pre["channels"] == 3
    assert pre["scale"] == pytest.approx(1 / 255) and pre["mean"] == [0, 0, 0] and pre["std"] == [1, 1, 1]
    assert doc["drop_mode"] == "weights"
    assert 0 <= doc["baseline_accuracy"] <= 1
    assert [k["index"] for k in doc["kernels"]] == list(range(5))
    mean = np.mean([k["accuracy"] for k in doc["kernels"]])
    assert doc["fragile"] == [k["index"] for k in doc["kernels"] if k["accuracy"] < mean]
    assert sorted(doc["fragile"] + doc["null"]) == list(range(5))
    assert all(k["fragile"] == (k["index"] in doc["fragile"]) for k in doc["kernels"])
    assert all(0 <= k["p_value"] <= 1 for k in doc["kernels"])


def test_same_seed_gives_identical_json_without_timings(capsys, tmp_path, model_path, npz_path):
    docs = []
    for name in ("a.json", "b.json"):
        code, _, err = _run(
            capsys, "inspect", model_path, "-d", npz_path, "--limit", 30, "--seed", 3, "--json", tmp_path / name, "-q"
        )
        assert code == 0, err
        doc = json.loads((tmp_path / name).read_text())
        doc.pop("timings")
        doc.pop("execution", None)  # how the variants ran: the measured choice may differ between runs
        docs.append(doc)
    assert docs[0] == docs[1]
    assert docs[0]["data"]["n"] == 30


def test_not_an_onnx_file(capsys, tmp_path, npz_path):
    bogus = tmp_path / "notes.onnx"
    bogus.write_text("this is a text file\n")
    code, _, err = _run(capsys, "inspect", bogus, "--data", npz_path)
    assert code == 2
    _assert_one_line_error(err)
    assert "not a readable ONNX model" in err


def test_model_without_conv(capsys, tmp_path, npz_path):
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "noconv.onnx")
    code, _, err = _run(capsys, "inspect", path, "--data", npz_path)
    assert code == 2
    _assert_one_line_error(err)
    assert "no Conv layer" in err


@pytest.mark.parametrize(
    ("make_data", "message"),
    [
        (lambda p: random_npz(p, size=6), "the images are 6x6 but the model takes 8x8"),
        (lambda p: random_npz(p, channels=1), "the images have 1 channel but the model takes 3"),
        (lambda p: random_npz(p, classes=9), "but the model outputs only 4 classes"),
    ],
)
def test_data_that_does_not_fit(capsys, tmp_path, model_path, make_data, message):
    data = make_data(tmp_path / "bad.npz")
    code, _, err = _run(capsys, "inspect", model_path, "--data", data)
    assert code == 2
    _assert_one_line_error(err)
    assert message in err


def test_a_model_that_takes_flat_vectors_is_told_apart_from_a_size_mismatch(capsys, tmp_path):
    """An MLP exported without its Flatten (input 784 x 1) gets no advice to resize 28 x 28 images to 784 x 1."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 16], np.ones((3, 16), np.float32).ravel().tolist())
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["image"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w"], ["logits"], transB=1),
        ],
        "mlp",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 16, 1])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])],
        [weight],
    )  # fmt: skip
    path = save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "mlp.onnx")
    data = random_npz(tmp_path / "gray4.npz", size=4, channels=1, classes=3)
    code, _, err = _run(capsys, "neurons", path, "--data", data)
    assert code == 2
    _assert_one_line_error(err)
    assert "the model takes a flat vector of 16 values (16x1), not 4x4 images" in err
    assert "--size 16,1" not in err


def test_conversion_options_make_mismatched_data_fit(capsys, tmp_path, model_path):
    data = random_npz(tmp_path / "gray6.npz", size=6, channels=1)
    code, _, err = _run(capsys, "inspect", model_path, "--data", data, "--size", "8,8", "--channels", 3, "-q")
    assert code == 0, err


def test_usage_errors(capsys, model_path, npz_path, tmp_path):
    for args, message in [
        (["--limit", 0], "--limit must be a positive"),
        (["--drop", "neurons"], "--drop must be"),
        (["--mean", "a,b"], "--mean must be numbers"),
        (["--size", "8"], "--size needs 2 integers"),
        (["--json", tmp_path / "missing" / "r.json"], "does not exist"),
        (["--json", model_path], "is the input file"),
        (["--layer", "relu"], "is a Relu node"),
        (["--output", "nope"], "no output named"),
    ]:
        code, _, err = _run(capsys, "inspect", model_path, "--data", npz_path, *args)
        assert code == 2, args
        _assert_one_line_error(err)
        assert message in err, (args, err)


def test_existing_output_needs_force(capsys, tmp_path, model_path, npz_path):
    report = tmp_path / "r.json"
    report.write_text("keep me")
    code, _, err = _run(capsys, "inspect", model_path, "--data", npz_path, "--json", report)
    assert code == 2 and "--force" in err
    assert report.read_text() == "keep me"
    code, _, err = _run(capsys, "inspect", model_path, "--data", npz_path, "--json", report, "--force", "-q")
    assert code == 0 and json.loads(report.read_text())["schema_version"] == 1


def test_min_accuracy_gate_exits_1(capsys, model_path, npz_path):
    code, _, err = _run(capsys, "inspect", model_path, "--data", npz_path, "--min-accuracy", 0.99, "-q")
    assert code == 1
    assert "below --min-accuracy" in err


def test_console_script_prints_no_traceback(tmp_path):
    bogus = tmp_path / "random.onnx"
    bogus.write_bytes(np.random.default_rng(0).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    proc = subprocess.run(
        [sys.executable, "-m", "kernelscope", "inspect", str(bogus), "--data", "cifar10", "--no-download"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_attack_sections_in_json(capsys, tmp_path, model_path, npz_path):
    report = tmp_path / "r.json"
    code, out, err = _run(capsys, "inspect", model_path, "-d", npz_path, "--eps", "0.02,0.01", "--json", report)
    assert code == 0, err
    assert "FGSM sweep" in out
    doc = json.loads(report.read_text())
    assert doc["mirror"]["ok"] is True and doc["mirror"]["max_abs_diff"] < 1e-4
    assert [e["epsilon"] for e in doc["fgsm"]] == [0.0, 0.01, 0.02]
    assert doc["fgsm"][0]["accuracy"] == doc["baseline_accuracy"]
    assert all(e["ci95"][0] <= e["accuracy"] <= e["ci95"][1] for e in doc["fgsm"])
    assert [t["epsilon"] for t in doc["targeting"]] == [0.01, 0.02]
    assert all(0 <= t["fraction_attacking_fragile"] <= 1 for t in doc["targeting"])
    assert doc["attack"]["loss"] == "cross_entropy"


def test_no_attack_skips_the_sweep(capsys, tmp_path, model_path, npz_path):
    report = tmp_path / "r.json"
    code, out, err = _run(capsys, "inspect", model_path, "-d", npz_path, "--no-attack", "--json", report)
    assert code == 0, err
    assert "FGSM sweep" not in out
    doc = json.loads(report.read_text())
    assert doc["mirror"] is None and doc["fgsm"] is None and doc["targeting"] is None


def test_attack_usage_errors(capsys, model_path, npz_path):
    for args, message in [
        (["--eps", "-0.1"], ">= 0"),
        (["--eps-sweep", "cubic"], "--eps-sweep must be"),
        (["--bounds", "1,0"], "--bounds needs two numbers"),
    ]:
        code, _, err = _run(capsys, "inspect", model_path, "--data", npz_path, *args)
        assert code == 2, args
        _assert_one_line_error(err)
        assert message in err, (args, err)


def test_unsupported_ops_are_listed_in_one_line(capsys, tmp_path, npz_path):
    model = conv_classifier(out_channels=3)
    graph = model.graph
    fc = next(n for n in graph.node if n.op_type == "Gemm")
    fc.output[0] = "scores"
    graph.node.append(helper.make_node("Hardmax", ["scores"], ["hard"], axis=1))
    graph.node.append(helper.make_node("Det", ["hard_sq"], ["det"]))
    graph.node.append(helper.make_node("Add", ["scores", "det"], ["logits"]))
    # Det needs a square matrix input; feed it one built from the scores so both ops are in the graph.
    graph.node.append(helper.make_node("Einsum", ["hard_t", "hard"], ["hard_sq"], equation="ij,jk->ik"))
    graph.node.append(helper.make_node("Transpose", ["hard"], ["hard_t"], perm=[1, 0]))
    path = save(model, tmp_path / "odd.onnx")
    code, _, err = _run(capsys, "inspect", path, "--data", npz_path)
    assert code == 2
    _assert_one_line_error(err)
    assert "Einsum" in err and "Det" in err and "--no-attack" in err
    code, _, err = _run(capsys, "inspect", path, "--data", npz_path, "--no-attack", "-q")
    assert code == 0, err


def test_torchscript_without_input_shape_asks_for_it(capsys, tmp_path, npz_path):
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 4)
    )
    path = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.script(net.eval()), str(path))
    code, _, err = _run(capsys, "inspect", path, "--data", npz_path, "--no-attack")
    assert code == 2
    _assert_one_line_error(err)
    assert "--input-shape" in err
    code, _, err = _run(capsys, "inspect", path, "--data", npz_path, "--no-attack", "--input-shape", "1,3,8,8", "-q")
    assert code == 0, err
    pickle_path = tmp_path / "pickled.pt"
    torch.save(net, str(pickle_path))
    code, _, err = _run(capsys, "inspect", pickle_path, "--data", npz_path)
    assert code == 2
    _assert_one_line_error(err)
    assert "never unpickles" in err
