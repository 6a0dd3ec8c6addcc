"""``--device``: both sides on the CPU here, the choice checked, CUDA never taken silently, the report naming
the devices used."""

from __future__ import annotations

import json
import os

import pytest
import torch

from kernelscope.cli.app import main
from kernelscope.devices import check_session_device, torch_device
from kernelscope.errors import ModelError, UsageError
from kernelscope.runtime import make_session

from builders import conv_classifier, random_npz, save


def test_device_choice_on_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("auto") == "cpu" and torch_device("CPU") == "cpu"
    with pytest.raises(UsageError, match="sees no CUDA device"):
        torch_device("cuda")
    with pytest.raises(UsageError, match="auto, cpu or cuda"):
        torch_device("gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("auto") == "cuda" and torch_device("cuda") == "cuda" and torch_device("cpu") == "cpu"


def test_a_cuda_session_that_fell_back_to_the_cpu_is_refused():
    session = make_session(conv_classifier(), ["CPUExecutionProvider"])
    check_session_device(session, ["CPUExecutionProvider"])  # asked for the CPU: fine
    check_session_device(session, None)  # auto: the report names what it got
    with pytest.raises(ModelError, match="could not start its CUDA provider"):
        check_session_device(session, ["CUDAExecutionProvider", "CPUExecutionProvider"])


def test_the_report_names_the_devices_used(tmp_path, capsys):
    model = save(conv_classifier(out_channels=4), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=24)
    out = tmp_path / "r.json"
    assert main(["inspect", str(model), "-d", str(data), "--eps", "0.02", "--device", "cpu", "--json", str(out)]) == 0
    assert "devices: onnxruntime cpu, torch cpu" in capsys.readouterr().out
    assert json.loads(out.read_text())["devices"] == {"onnxruntime": "cpu", "torch": "cpu"}
    assert main(["inspect", str(model), "-d", str(data), "--no-attack", "--json", str(out), "--force", "-q"]) == 0
    assert json.loads(out.read_text())["devices"] == {"onnxruntime": "cpu", "torch": None}  # no torch at all


def test_device_cuda_without_a_gpu_is_a_one_line_error(tmp_path, capsys):
    model = save(conv_classifier(out_channels=4), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=12)
    assert main(["inspect", str(model), "-d", str(data), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda" in err and len(err.splitlines()) == 1


@pytest.fixture
def gpu_build_without_a_gpu(monkeypatch):
    """onnxruntime as onnxruntime-gpu shows itself on a machine whose CUDA cannot start: the CUDA provider
    listed as available, and a session asked for it running on the CPU (what this CPU build does too)."""
    import onnxruntime as ort

    from kernelscope import runtime

    listed = ["CUDAExecutionProvider", *ort.get_available_providers()]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)

    def preload_dlls(*_args, **_kwargs):  # what onnxruntime-gpu 1.31 prints without the CUDA 13 libraries
        print("Failed to load /site/nvidia/cu13/lib/libcublasLt.so.13: cannot open shared object file")
        print("Please follow https://onnxruntime.ai/docs/install/#cuda-and-cudnn to install CUDA.")

    monkeypatch.setattr(ort, "preload_dlls", preload_dlls, raising=False)
    runtime.cuda_provider_problem.cache_clear()
    yield
    runtime.cuda_provider_problem.cache_clear()


def test_a_cpu_onnxruntime_is_never_asked_for_cuda(monkeypatch):
    import onnxruntime as ort

    from kernelscope import runtime

    # the CPU package lists no CUDA provider (faked, so the test also holds where onnxruntime-gpu is installed)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    runtime.cuda_provider_problem.cache_clear()
    try:
        assert "no CUDA provider" in runtime.cuda_provider_problem()
        assert runtime.default_providers() == ["CPUExecutionProvider"]
    finally:
        runtime.cuda_provider_problem.cache_clear()


def test_a_listed_cuda_provider_that_cannot_start_is_not_taken(gpu_build_without_a_gpu, capsys):
    from kernelscope.runtime import cuda_provider_problem, default_providers

    problem = cuda_provider_problem()
    assert problem == "its CUDA provider did not start (libcublasLt.so.13 did not load)"
    assert capsys.readouterr().out == ""  # onnxruntime's own printing is kept off the report
    assert default_providers() == ["CPUExecutionProvider"]  # auto: the CPU, not a session that falls back


def test_auto_says_why_onnxruntime_gpu_is_not_used_and_cuda_refuses_before_any_work(
    gpu_build_without_a_gpu, tmp_path, capsys
):
    model = save(conv_classifier(out_channels=4), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=12)
    out = tmp_path / "r.json"
    assert main(["inspect", str(model), "-d", str(data), "--no-attack", "--json", str(out)]) == 0
    captured = capsys.readouterr()
    assert "onnxruntime runs on the CPU: its CUDA provider did not start (libcublasLt.so.13" in captured.err
    assert json.loads(out.read_text())["devices"]["onnxruntime"] == "cpu"
    assert main(["inspect", str(model), "-d", str(data), "--device", "cuda", "--json", str(tmp_path / "c.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "libcublasLt.so.13 did not load" in err and "--device cpu" in err
    assert not (tmp_path / "c.json").exists()


def test_the_cuda_provider_runs_ieee_float32_with_heuristic_algorithms(monkeypatch):
    import onnxruntime as ort

    from kernelscope.runtime import provider_list

    monkeypatch.setattr(ort, "__version__", "1.18.0")  # the first onnxruntime with use_tf32
    cuda, cpu = provider_list(["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert cuda == ("CUDAExecutionProvider", {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"})
    assert cpu == "CPUExecutionProvider"


@pytest.mark.parametrize(
    ("error", "where"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "the GPU"),
        (MemoryError(), "this machine"),
    ],
)
def test_running_out_of_memory_is_one_line_that_names_the_budget(tmp_path, capsys, monkeypatch, error, where):
    import kernelscope.audit

    def inspect_model(*_args, **_kwargs):
        raise error

    monkeypatch.setattr(kernelscope.audit, "inspect_model", inspect_model)
    model = save(conv_classifier(out_channels=4), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=12)
    assert main(["inspect", str(model), "-d", str(data), "--no-attack", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"out of memory on {where}" in err and "--memory" in err
    assert "report it" not in err  # not a bug: the budget was too large for the device


def test_running_out_of_memory_inside_the_mirror_is_not_blamed_on_the_op(tmp_path, capsys, monkeypatch):
    from kernelscope.mirror.ops import conv

    def conv2d(*_args, **_kwargs):  # where a GPU runs out: an activation of the forward pass
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.50 GiB")

    monkeypatch.setitem(conv._CONV, 2, conv2d)  # the mirror's 2-D convolution (onnxruntime is untouched)
    model = save(conv_classifier(out_channels=4), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=12)
    assert main(["compare", str(model), str(model), "-d", str(data), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out of memory on the GPU" in err and "mirror failed" not in err
    assert "--batch-size" in err and "--memory" not in err  # compare has no --memory option


def test_an_onnxruntime_before_use_tf32_turns_tf32_off_through_nvidias_switch(monkeypatch):
    import onnxruntime as ort

    from kernelscope.runtime import provider_list

    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "unset")  # recorded, so the test leaves the variable as it was
    monkeypatch.delenv("NVIDIA_TF32_OVERRIDE")
    monkeypatch.setattr(ort, "__version__", "1.17.3")
    assert provider_list(["CUDAExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"cudnn_conv_algo_search": "HEURISTIC"})  # no option 1.17 would refuse
    ]
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "0"
    monkeypatch.setenv("NVIDIA_TF32_OVERRIDE", "1")  # the user's own choice is kept
    provider_list(["CUDAExecutionProvider"])
    assert os.environ["NVIDIA_TF32_OVERRIDE"] == "1"
