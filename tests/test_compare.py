"""``kernelscope compare`` (kernels across models or saved reports) and ``kernelscope report`` (re-render)."""

from __future__ import annotations

import json

import pytest

from kernelscope.cli.app import main

from builders import conv_classifier, random_npz, save


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """Three models of one layer shape, one of another; a data file; saved inspect reports of the first two."""
    folder = tmp_path_factory.mktemp("compare")
    models = [save(conv_classifier(out_channels=6, seed=s), folder / f"m{s}.onnx") for s in (1, 2, 3)]
    other = save(conv_classifier(out_channels=4, seed=4), folder / "other.onnx")
    data = random_npz(folder / "d.npz", n=40)
    reports = []
    for model in models[:2]:
        path = folder / f"{model.stem}.json"
        code = main(["inspect", str(model), "--data", str(data), "--eps", "0.05,0.1", "--bootstrap", "0",
                     "--json", str(path), "-q"])  # fmt: skip
        assert code == 0
        reports.append(path)
    return folder, models, other, data, reports


def test_compare_follows_each_kernel_across_reports_and_a_model(audits, tmp_path, capsys):
    _, models, _, data, reports = audits
    out = tmp_path / "c.json"
    code = main(["compare", str(reports[0]), str(reports[1]), str(models[2]), "--data", str(data),
                 "--eps", "0.05,0.1", "--bootstrap", "0", "--json", str(out), "--html", str(tmp_path / "c.html"),
                 "--plots", str(tmp_path / "figures")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    doc = json.loads(out.read_text())
    saved = [json.loads(p.read_text()) for p in reports]
    third = tmp_path / "third.json"
    assert main(["inspect", str(models[2]), "--data", str(data), "--eps", "0.05,0.1", "--bootstrap", "0",
                 "--json", str(third), "-q"]) == 0  # fmt: skip
    fragile = [set(r["fragile"]) for r in [*saved, json.loads(third.read_text())]]
    assert [i["source"] for i in doc["inputs"]] == ["report", "report", "model"]
    assert [i["label"] for i in doc["inputs"]] == ["m1.json", "m2.json", "m3.onnx"]
    for kernel in doc["kernels"]:
        assert kernel["sides"] == ["S" if kernel["index"] in f else "S'" for f in fragile]
    assert doc["fragile_in_all"] == sorted(set.intersection(*fragile))
    assert doc["fragile_in_none"] == sorted(set(range(6)) - set.union(*fragile))
    assert doc["fragile_in_some"] == sorted(set.union(*fragile) - set.intersection(*fragile))
    first_sweep = [(e["epsilon"], e["accuracy"]) for e in saved[0]["fgsm"]]
    assert [(e["epsilon"], e["accuracy"]) for e in doc["inputs"][0]["sweep"]] == first_sweep
    assert doc["kernels"][0]["accuracies"][1] == saved[1]["kernels"][0]["accuracy"]
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [
        "compare_accuracy_vs_epsilon.png", "compare_kernels.png"]  # fmt: skip
    page = (tmp_path / "c.html").read_text()
    assert page.count("<img") == 2 and "m3.onnx" in page
    assert "Verdict" in captured.out and "fragile in" in captured.out


def test_max_drop_gate_fails_a_run_in_one_line(audits, capsys):
    _, _, _, _, reports = audits
    docs = [json.loads(p.read_text()) for p in reports]
    assert docs[0]["baseline_accuracy"] != docs[1]["baseline_accuracy"]  # the fixture's models differ
    better, worse = sorted(range(2), key=lambda i: -docs[i]["baseline_accuracy"])
    drop = docs[better]["baseline_accuracy"] - docs[worse]["baseline_accuracy"]
    # Falling from the better model to the worse one: a drop the gate allows only up to half of.
    code = main(["compare", str(reports[better]), str(reports[worse]), "--max-drop", f"clean={drop / 2:.6f}", "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "1 gate(s) failed: clean drop" in err[0], err
    # The other way round accuracy rises: the same gate passes.
    code = main(["compare", str(reports[worse]), str(reports[better]), "--max-drop", f"clean={drop / 2:.6f}", "-q"])
    assert code == 0, capsys.readouterr().err


def test_compare_refuses_different_layers_and_data(audits, tmp_path, capsys):
    _, models, other, data, reports = audits
    code = main(["compare", str(reports[0]), str(other), "--data", str(data), "--bootstrap", "0", "--no-attack"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "different shapes" in err
    data2 = random_npz(tmp_path / "d2.npz", n=30, seed=5)
    elsewhere = tmp_path / "elsewhere.json"
    assert main(["inspect", str(models[1]), "--data", str(data2), "--bootstrap", "0", "--no-attack",
                 "--json", str(elsewhere), "-q"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["compare", str(reports[0]), str(elsewhere)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-different-data" in err
    assert main(["compare", str(reports[0]), str(elsewhere), "--allow-different-data", "-q"]) == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["only.json"], "at least two"),
        (["a.onnx", "b.onnx"], "--data is needed"),
        (["a.json", "b.json", "--fail-under", "pgd@0.1=0.1", "--data", "x"], None),
    ],
)
def test_compare_usage_errors(tmp_path, capsys, args, message):
    code = main(["compare", *[str(tmp_path / a) if a.endswith((".json", ".onnx")) else a for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    if message:
        assert message in err


def test_report_redraws_the_page_of_a_saved_report(audits, tmp_path, capsys):
    _, models, _, data, _ = audits
    original, redrawn = tmp_path / "a.html", tmp_path / "b.html"
    assert main(["inspect", str(models[0]), "--data", str(data), "--eps", "0.05,0.1", "--bootstrap", "0",
                 "--json", str(tmp_path / "r.json"), "--html", str(original), "-q"]) == 0  # fmt: skip
    assert main(["report", str(tmp_path / "r.json"), "--html", str(redrawn), "--plots", str(tmp_path / "f")]) == 0
    assert redrawn.read_text() == original.read_text()
    assert sorted(p.name for p in (tmp_path / "f").iterdir()) == [
        "fig1_kernel_accuracy.png", "fig2_accuracy_vs_epsilon.png", "fig3_targeting.png"]  # fmt: skip
    capsys.readouterr()
    assert main(["report", str(tmp_path / "r.json")]) == 2
    assert "nothing to draw" in capsys.readouterr().err
    (tmp_path / "x.json").write_text('{"command": "other"}')
    assert main(["report", str(tmp_path / "x.json"), "--html", str(tmp_path / "x.html")]) == 2
    assert "not a kernelscope report" in capsys.readouterr().err
