"""kernelscope's GPU code paths, run on the CPU under a pretend CUDA device (tests/fake_cuda.py).

CI has no GPU, so a tensor left on the host, ``.numpy()`` of a GPU tensor or a model scored on the CPU under
``--device cuda`` would pass every other test. Here ``torch.cuda.is_available()`` answers True, so kernelscope
takes its CUDA paths; every tensor carries a device tag, and the checker reports what a real GPU would refuse
(or run on the host). First the checker itself is shown to catch planted bugs and to pass their fixes; then
the commands run end to end and must come out clean.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import kernelscope.harden.pipeline
from kernelscope.cli.app import main
from kernelscope.devices import torch_device

from fake_cuda import CUDA, pretend_cuda, tag_of

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "cifar10_cnn.onnx"
TORCHSCRIPT = ROOT / "examples" / "models" / "cifar10_cnn.pt"
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"
THIS_FILE = "tests/test_cuda_paths.py"


# --- the checker can fail: planted bugs are reported, their fixes are not ---------------------------------


class _Head(torch.nn.Module):
    """A linear layer with a buffer, as kernelscope's mirror keeps its constants."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 3)
        self.register_buffer("scale", torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x) * self.scale


def _on_cuda() -> tuple[torch.nn.Module, torch.Tensor]:
    """A module moved to CUDA and its output, on the device that module says it is on."""
    head = _Head().to("cuda")
    device = next(head.parameters()).device
    return head, head(torch.as_tensor(np.zeros((2, 4), np.float32), device=device))


def _host_tensor_added(fixed: bool) -> None:
    _, y = _on_cuda()
    y + (torch.zeros(3, device=y.device) if fixed else torch.zeros(3))


def _numpy_input_never_moved(fixed: bool) -> None:
    head, _ = _on_cuda()
    x = torch.from_numpy(np.zeros((2, 4), np.float32))
    head(x.to(next(head.parameters()).device) if fixed else x)


def _gradient_meets_host_tensor(fixed: bool) -> None:
    head, _ = _on_cuda()
    x = torch.zeros(2, 4, device="cuda", requires_grad=True)
    (gradient,) = torch.autograd.grad(head(x).sum(), x)
    gradient + (torch.ones(2, 4, device=x.device) if fixed else torch.ones(2, 4))


def _numpy_of_a_cuda_tensor(fixed: bool) -> None:
    _, y = _on_cuda()
    (y.detach().cpu() if fixed else y.detach()).numpy()


def _conv_left_on_the_host(fixed: bool) -> None:
    _on_cuda()  # the torch device is CUDA ...
    conv = torch.nn.Conv2d(3, 2, 3)  # ... but this layer and its input were never moved
    x = torch.zeros(1, 3, 8, 8)
    conv.to("cuda")(x.to("cuda")) if fixed else conv(x)


def _cpu_generator_draws_cuda(fixed: bool) -> None:
    generator = torch.Generator().manual_seed(0)
    if fixed:
        noise = torch.rand(3, generator=generator).to("cuda")  # drawn on the host, then moved: same numbers anywhere
    else:
        noise = torch.rand(3, generator=generator, device="cuda")
    noise * 2


def _host_scalar_in_a_non_elementwise_op(fixed: bool) -> None:
    _, y = _on_cuda()
    y * torch.tensor(2.0)  # elementwise: CUDA takes a 0-dim CPU tensor as a scalar (legal either way)
    torch.stack([y.sum(), torch.tensor(0.0, device=y.device) if fixed else torch.tensor(0.0)])


PLANTED = {
    "MIX": [_host_tensor_added, _numpy_input_never_moved, _gradient_meets_host_tensor],
    "NUMPY": [_numpy_of_a_cuda_tensor],
    "HOSTOP": [_conv_left_on_the_host],
    "GENERATOR": [_cpu_generator_draws_cuda],
    "SCALAR": [_host_scalar_in_a_non_elementwise_op],
}
CASES = [pytest.param(kind, case, id=case.__name__.strip("_")) for kind, cases in PLANTED.items() for case in cases]


@pytest.mark.parametrize(("kind", "case"), CASES)
def test_the_checker_reports_a_planted_bug_and_passes_its_fix(kind: str, case: Callable[[bool], None]) -> None:
    with pretend_cuda() as findings:
        case(False)
    problems = findings.problems()
    assert [p.kind for p in problems] == [kind], findings.report()
    assert problems[0].where.startswith(f"{THIS_FILE}:"), problems[0]  # located at the planted line
    with pretend_cuda() as findings:
        case(True)
    assert findings.problems() == [], findings.report()
    assert findings.cuda_calls > 0  # the fix did run on "cuda" tensors


def test_tags_follow_moves_and_the_device_answers_cuda() -> None:
    host = torch.zeros(2)
    with pretend_cuda():
        assert torch.cuda.is_available()
        moved = host.to("cuda")
        assert moved.is_cuda and moved.device.type == "cuda" and moved is not host
        assert tag_of(host) != CUDA and not host.is_cuda  # moving leaves the source where it was
        back = moved.cpu()
        assert not back.is_cuda and moved.is_cuda
        assert torch.zeros(1, device=moved.device).is_cuda and torch.zeros_like(moved).is_cuda
        assert torch.nn.Parameter(moved.clone()).is_cuda  # parameters made from moved data stay moved
        module = torch.nn.Linear(2, 2).to("cuda")
        assert all(p.is_cuda for p in module.parameters())
        assert not any(p.is_cuda for p in module.cpu().parameters())


def test_every_patch_is_undone_even_when_the_block_raises() -> None:
    def originals() -> list[object]:
        return [
            torch.cuda.is_available, torch.from_numpy, vars(torch.nn.Parameter)["__new__"],
            *(vars(torch.nn.Module)[name] for name in ("to", "cuda", "cpu")),
        ]  # fmt: skip

    before = originals()
    with pytest.raises(RuntimeError, match="planted"), pretend_cuda():
        moved = torch.zeros(2).to("cuda")
        raise RuntimeError("planted")
    assert originals() == before
    assert moved.device.type == "cpu" and not moved.is_cuda  # the mode is gone: the real device again


# --- torch_device: exact float32 once CUDA is chosen -------------------------------------------------------


def test_choosing_cuda_asks_for_ieee_float32_and_deterministic_cudnn(monkeypatch: pytest.MonkeyPatch) -> None:
    if not hasattr(torch.backends.cudnn.conv, "fp32_precision"):
        pytest.skip("torch < 2.9: no per-backend fp32_precision switches")
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul

    def reset() -> None:  # TF32 everywhere and cuDNN's timed algorithms: what must be undone (the fixture restores)
        cudnn.conv.fp32_precision = matmul.fp32_precision = "tf32"
        cudnn.deterministic, cudnn.benchmark = False, True

    def flags() -> tuple[object, ...]:
        return cudnn.conv.fp32_precision, matmul.fp32_precision, cudnn.deterministic, cudnn.benchmark

    reset()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert torch_device("auto") == "cpu" and flags() == ("tf32", "tf32", False, True)  # no CUDA: untouched
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert torch_device("cpu") == "cpu" and flags() == ("tf32", "tf32", False, True)  # CPU asked for: untouched
    assert torch_device("auto") == "cuda"
    assert flags() == ("ieee", "ieee", True, False)
    reset()
    assert torch_device("cuda") == "cuda" and flags() == ("ieee", "ieee", True, False)


# --- end to end: every command on the example model, torch on "cuda" --------------------------------------


@dataclass(frozen=True)
class Run:
    """One CLI run: its arguments (``{tmp}`` is the test's tmp_path) and the JSON report it writes."""

    argv: tuple[str, ...]
    report: str = "report.json"
    written: str | None = None  # the hardened model harden must write

    def arguments(self, tmp: Path) -> list[str]:
        return [a.format(tmp=tmp) for a in self.argv] + ["--json", str(tmp / self.report), "--force", "-q"]


_DATA = ("--data", str(SAMPLE))
_INSPECT = ("inspect", str(MODEL), *_DATA, "--limit", "32", "--bootstrap", "0")
# Small enough to take seconds: 24 images choose, 24 judge; one epoch, one strength, 2-step PGD.
_HARDEN = (
    *_DATA, "--train-data", str(SAMPLE), "--limit", "48", "--train-limit", "32", "--epochs", "1",
    "--strengths", "1", "--pgd-steps", "2", "--pgd-restarts", "1", "--batch-size", "16", "--sweep", "0.01",
    "--clean-budget", "100", "--force-write",
)  # fmt: skip

RUNS = {
    # Taylor screen + exact scoring (the fast scorers' own mirror), then an L∞ PGD sweep and targeting.
    "inspect-hybrid-pgd": Run((*_INSPECT, "--method", "hybrid", "--attack", "pgd", "--pgd-steps", "2")),
    # FGSM with the targeting test after the Conv's BN/activation (a second mirror output).
    "inspect-fgsm-activation": Run((*_INSPECT, "--targeting-at", "activation")),
    "neurons": Run(("neurons", str(MODEL), *_DATA, "--limit", "16", "--steps", "3", "--random-start")),
    # Every method: the SVD filter and the three fine-tunings train on the mirror; the pick is written back.
    "harden-all": Run(("harden", str(MODEL), *_HARDEN, "--method", "all", "-o", "{tmp}/h.onnx"), written="h.onnx"),
    # TorchScript in and out: audited and tuned through its ONNX export, the tuned weights written back into
    # the archive's own parameters and saved with torch.jit.save.
    "harden-torchscript": Run(
        ("harden", str(TORCHSCRIPT), *_HARDEN, "--method", "sensitivity", "-o", "{tmp}/h.pt"), written="h.pt"
    ),
}


@pytest.mark.parametrize("name", list(RUNS))
def test_the_command_runs_clean_on_cuda(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run = RUNS[name]
    # Make harden write a fine-tuned model, so that the write-back of trained weights runs too. --force-write
    # writes the pick even when the held-out images do not confirm it, but there is a pick only if a candidate
    # beat the original on validation, which 24 images do not promise. The last candidate is a fine-tuned one
    # (they follow the SVD levels).
    monkeypatch.setattr(kernelscope.harden.pipeline, "choose", lambda candidates, worst: (candidates or [None])[-1])
    monkeypatch.setenv("KERNELSCOPE_DEBUG", "1")  # a crash is a traceback here, not one line and exit code 2
    with pretend_cuda() as findings:
        code = main(run.arguments(tmp_path))
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / run.report).read_text())
    assert doc["devices"]["torch"] == "cuda"
    assert findings.problems() == [], findings.report()
    assert findings.cuda_calls > 0, findings.report()  # the torch side did run on "cuda" tensors
    if run.written:
        chosen = doc["harden"]["chosen"]
        assert chosen["source"] == "fine-tuning" and (tmp_path / run.written).is_file()
        assert doc["harden"]["written"] == str(tmp_path / run.written)
