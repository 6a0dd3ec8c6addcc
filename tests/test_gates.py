"""``--fail-under`` gates: parsed strictly, refused before any work when they cannot be measured, read from
the report's own numbers, exit 1 with one line naming every failed gate, recorded in the JSON."""

from __future__ import annotations

import json

import pytest

from kernelscope import gates as gating
from kernelscope.cli.app import main
from kernelscope.errors import UsageError

from builders import conv_classifier, random_npz, save


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gates")
    return save(conv_classifier(out_channels=5, seed=2), folder / "m.onnx"), random_npz(folder / "d.npz", n=40)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("accuracy=0.9", "unknown metric 'accuracy'"),
        ("fgsm=0.3", "fgsm needs an ε"),
        ("clean@0.01=0.9", "clean takes no ε"),
        ("clean=90", "fraction in [0, 1]"),
        ("fgsm@x=0.3", "is not a number"),
        ("clean", "metric[@eps]=threshold"),
        ("clean=0.5,clean=0.6", "more than once"),
        ("worst@0=0.5", "ε must be positive"),
    ],
)
def test_bad_gates_are_usage_errors(spec, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")):
        gating.parse_gates([spec])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--fail-under", "pgd@0.01=0.2"], "needs the PGD attack"),
        (["--fail-under", "worst@0.01=0.2", "--no-attack"], "needs the attack"),
        (["--fail-under", "nonsense=1"], "unknown metric"),
    ],
)
def test_unmeasurable_gates_stop_before_any_work(tmp_path, capsys, args, message):
    # The data file does not exist: reaching the audit would fail on it instead.
    code = main(["inspect", str(tmp_path / "absent.onnx"), "--data", str(tmp_path / "absent.npz"), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err, err


def test_gates_read_the_report_and_fail_in_one_line(tiny, tmp_path, capsys):
    model, data = tiny
    report = tmp_path / "r.json"
    gates = "clean=0,fgsm@0.02=1,worst@0.02=0,fragile-share=0"
    code = main(["inspect", str(model), "--data", str(data), "--eps", "0.05", "--bootstrap", "0",
                 "--fail-under", gates, "--json", str(report), "-q"])  # fmt: skip
    captured = capsys.readouterr()
    doc = json.loads(report.read_text())
    assert 0.02 in [e["epsilon"] for e in doc["fgsm"]] and "for the gates" in doc["attack"]["epsilon_source"]
    at = next(e["accuracy"] for e in doc["fgsm"] if e["epsilon"] == 0.02)
    share = len(doc["fragile"]) / len(doc["kernels"])
    recorded = {g["gate"]: (g["value"], g["passed"]) for g in doc["gates"]}
    assert recorded == {
        "clean": (doc["baseline_accuracy"], True),
        "fgsm@0.02": (at, at >= 1),
        "worst@0.02": (at, True),
        "fragile-share": (share, share == 0),
    }
    failed = [name for name, (_, ok) in recorded.items() if not ok]
    assert failed and code == 1
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and f"{len(failed)} gate(s) failed" in lines[0]
    assert all(name in lines[0] for name in failed)
    assert "Gates" in captured.out and "FAIL" in captured.out  # printed with --quiet too


def test_passing_gates_exit_0(tiny, capsys):
    model, data = tiny
    code = main(["inspect", str(model), "--data", str(data), "--eps", "0.05", "--bootstrap", "0",
                 "--fail-under", "clean=0,worst@0.05=0", "--fail-under", "fragile-share=1", "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err


def test_max_drop_compares_first_and_last():
    first = {"baseline_accuracy": 0.9, "kernels": [{}] * 4, "fragile": [0], "attack": {"name": "fgsm"},
             "fgsm": [{"epsilon": 0.01, "accuracy": 0.5}]}  # fmt: skip
    last = {**first, "fragile": [0, 1, 2], "fgsm": [{"epsilon": 0.01, "accuracy": 0.42}]}
    gates = gating.parse_gates(["fgsm@0.01=0.05,fragile-share=0.25,clean=0"], "--max-drop")
    outcomes = gating.evaluate_drops(gates, first, last)
    assert [(round(o.value, 9), o.passed) for o in outcomes] == [(0.08, False), (0.5, False), (0.0, True)]
    assert gating.failure_line(outcomes) == (
        "2 gate(s) failed: fgsm@0.01 drop 0.08 > 0.05; fragile-share rise 0.5 > 0.25"
    )
    missing = gating.evaluate_drops(gating.parse_gates(["pgd@0.01=0.1"]), first, last)
    assert not missing[0].passed and missing[0].value is None


def test_pgd_gate_reads_the_pgd_sweep(tiny, tmp_path, capsys):
    model, data = tiny
    report = tmp_path / "r.json"
    gates = "pgd@0.05=0,worst@0.05=1"
    code = main(["inspect", str(model), "--data", str(data), "--attack", "pgd", "--pgd-steps", "2", "--eps", "0.05",
                 "--bootstrap", "0", "--fail-under", gates, "--json", str(report), "-q"])  # fmt: skip
    doc = json.loads(report.read_text())
    at = next(e["accuracy"] for e in doc["pgd"] if e["epsilon"] == 0.05)
    assert [(g["gate"], g["value"]) for g in doc["gates"]] == [("pgd@0.05", at), ("worst@0.05", at)]
    assert code == (0 if at >= 1 else 1), capsys.readouterr().err
