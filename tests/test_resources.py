"""Resources: ``--memory`` sizes scoring runs by a byte budget from the model's own activation sizes (the
same scores whatever the budget), and an audit without attack starts without torch or scipy.stats."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kernelscope.cli.app import main
from kernelscope.errors import UsageError
from kernelscope.model.loading import load_model
from kernelscope.model.memory import activation_bytes_per_image, parse_memory, run_size_for

from builders import conv_classifier, random_npz, save


def test_sizes_parse_in_powers_of_1024():
    assert parse_memory("2GB") == 2 * 1024**3 and parse_memory("512mb") == 512 * 1024**2
    assert parse_memory("1.5G") == int(1.5 * 1024**3) and parse_memory("4096") == 4096
    assert parse_memory("64 KiB") == 64 * 1024
    for bad in ("", "two GB", "-1GB", "3TB", "0"):
        with pytest.raises(UsageError):
            parse_memory(bad)


def test_activation_estimate_counts_the_largest_tensors_of_one_image(tmp_path):
    model = load_model(save(conv_classifier(out_channels=6, seed=0), tmp_path / "m.onnx"))
    per_image = activation_bytes_per_image(model.proto, model.image_input.name)
    # The conv output of one 8x8 image with 6 kernels (float32) is among the largest tensors counted.
    assert per_image is not None and per_image >= 6 * 8 * 8 * 4
    assert run_size_for(2 * 1024**3, per_image, 1024) == 1024  # a small model keeps the default
    assert run_size_for(10 * per_image, per_image, 1024) == 10
    assert run_size_for(1, per_image, 1024) == 1 and run_size_for(100, None, 1024) == 1024


def test_a_small_budget_gives_smaller_runs_and_the_same_scores(tmp_path, capsys):
    model = save(conv_classifier(out_channels=6, seed=0), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=50)
    docs = {}
    for memory in ("2GB", "20KB"):
        out = tmp_path / f"{memory}.json"
        args = ["inspect", str(model), "--data", str(data), "--no-attack", "--memory", memory, "--json", str(out)]
        assert main([*args, "-q", "--bootstrap", "0"]) == 0, capsys.readouterr().err
        docs[memory] = json.loads(out.read_text())
    big, small = docs["2GB"], docs["20KB"]
    assert [k["accuracy"] for k in big["kernels"]] == [k["accuracy"] for k in small["kernels"]]
    assert (
        small["execution"]["variants_per_run"] * small["execution"]["images_per_run"]
        <= small["timings"]["scoring_run_size"]
        < big["execution"]["variants_per_run"] * big["execution"]["images_per_run"]
    )
    assert np.isclose(big["baseline_accuracy"], small["baseline_accuracy"])


def test_a_bad_memory_size_is_a_one_line_error(tmp_path, capsys):
    model = save(conv_classifier(out_channels=6, seed=0), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=10)
    code = main(["inspect", str(model), "--data", str(data), "--memory", "lots"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--memory must be" in err and len(err.splitlines()) == 1


def test_an_audit_without_attack_loads_neither_torch_nor_scipy_stats(tmp_path):
    """Start-up: ``inspect --no-attack`` needs onnx and onnxruntime only (torch and scipy.stats cost ~2.5 s)."""
    import subprocess
    import sys

    model = save(conv_classifier(out_channels=4, seed=0), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=20)
    code = (
        "import sys; from kernelscope.cli.app import main; "
        f"rc = main(['inspect', {str(model)!r}, '--data', {str(data)!r}, '--no-attack', '--json', "
        f"{str(tmp_path / 'r.json')!r}, '-q']); "
        "print(rc, 'torch' in sys.modules, 'scipy.stats' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[-3:] == ["0", "False", "False"]


def test_harden_scores_within_the_budget_with_the_same_split(tmp_path, capsys):
    model = save(conv_classifier(out_channels=6, seed=0), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=40)
    splits = []
    for memory in ("2GB", "20KB"):
        out, report = tmp_path / f"h{memory}.onnx", tmp_path / f"h{memory}.json"
        args = ["harden", str(model), "--data", str(data), "--noise", "5", "--sweep", "0.05", "--pgd-steps", "2"]
        args += ["--pgd-restarts", "1", "--memory", memory, "-o", str(out), "--json", str(report), "-q"]
        assert main(args) in (0, 1), capsys.readouterr().err
        doc = json.loads(report.read_text())  # the validation scoring that decides S / S'
        splits.append(([k["accuracy"] for k in doc["kernels"]], doc["fragile"], doc["null"]))
    assert splits[0] == splits[1]
