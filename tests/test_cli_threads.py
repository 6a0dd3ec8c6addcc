"""--threads caps the whole run: onnxruntime's sessions and the PyTorch mirror's gradients."""

from __future__ import annotations

import pytest
import torch

from kernelscope.cli.app import main

from builders import conv_classifier, random_npz, save


@pytest.fixture
def restore_torch_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_threads_sets_torch_threads_too(capsys, tmp_path, restore_torch_threads):
    model = save(conv_classifier(out_channels=4, seed=1), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=20)
    torch.set_num_threads(2)
    code = main(["inspect", str(model), "--data", str(data), "--threads", "1", "--eps", "0.01", "-q"])
    assert code == 0, capsys.readouterr().err
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize("command", ["inspect", "harden"])
def test_threads_must_be_positive(capsys, tmp_path, command, restore_torch_threads):
    model = save(conv_classifier(out_channels=4, seed=1), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=20)
    extra = ["-o", str(tmp_path / "h.onnx")] if command == "harden" else []
    code = main([command, str(model), "--data", str(data), "--threads", "0", *extra])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip() == "kernelscope: error: --threads must be a positive whole number, not 0"
    assert not (tmp_path / "h.onnx").exists()
