"""Where each side runs: onnxruntime's execution providers and PyTorch's device (``--device auto|cpu|cuda``).

``auto`` takes CUDA wherever it is there (onnxruntime-gpu that sees a GPU; a CUDA build of torch that sees
one), each side on its own; ``cpu`` keeps both on the CPU; ``cuda`` needs both on the GPU and says which
one cannot be, rather than running there on the CPU. Reports name the devices that were actually used.
"""

from __future__ import annotations

from collections.abc import Sequence

from kernelscope.errors import ModelError, UsageError

#: Values of ``--device``.
DEVICES = ("auto", "cpu", "cuda")


def check_device(requested: str) -> str:
    """``requested`` in lower case, or a :class:`UsageError`."""
    device = requested.lower()
    if device not in DEVICES:
        raise UsageError(f"--device must be auto, cpu or cuda, not {requested!r}")
    return device


def torch_device(requested: str) -> str:
    """The PyTorch device for ``--device``: ``cuda`` or ``cpu`` (imports torch)."""
    import torch

    device = check_device(requested)
    if device == "cpu":
        return "cpu"
    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise UsageError(
            f"--device cuda: this PyTorch ({torch.__version__}) sees no CUDA device (a CPU build, or no GPU "
            "visible); install a CUDA build of torch or use --device cpu"
        )
    if not available:
        return "cpu"
    exact_float32_on_cuda()
    return "cuda"


def exact_float32_on_cuda() -> None:
    """Make PyTorch's CUDA arithmetic IEEE float32 and its cuDNN algorithms deterministic (process-wide).

    cuDNN convolutions default to TF32 on Ampere and later GPUs: their operands rounded to 10 bits of
    mantissa. The mirror must match onnxruntime to 1e-4 of the logit scale before its gradients are used;
    with TF32 it departs by 1.6e-4 to 3.7e-3 on the example models (emulated, against 2.5e-7 in float32),
    and kernelscope would refuse to attack. cuDNN's default algorithms for a convolution's backward add in
    an order that changes from run to run; the deterministic ones make a seeded run repeat (the
    ``index_select`` behind Gather still adds its gradient atomically: docs/method.md §6).
    """
    import torch

    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is not None and hasattr(conv, "fp32_precision"):  # torch 2.9 and later: the per-backend switches
        conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    else:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def onnxruntime_device(session) -> str:
    """``cuda`` when the session runs on onnxruntime's CUDA provider, else ``cpu``."""
    return "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"


def check_session_device(session, providers: Sequence[str] | None) -> None:
    """A :class:`ModelError` when CUDA was asked for (first in ``providers``) but the session runs without it:
    onnxruntime falls back to the CPU with only a log line when the CUDA libraries fail to load."""
    if providers and providers[0] == "CUDAExecutionProvider" and onnxruntime_device(session) != "cuda":
        from kernelscope.runtime import cuda_provider_problem

        why = cuda_provider_problem() or "its CUDA or cuDNN libraries did not load for this model"
        raise ModelError(
            f"--device cuda: onnxruntime could not start its CUDA provider ({why}; KERNELSCOPE_ORT_LOG_LEVEL=2 "
            "shows more); fix the CUDA install or use --device cpu"
        )
