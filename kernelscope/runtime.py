"""onnxruntime sessions: provider choice (CUDA when the GPU build is installed, else CPU) and checks."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import numpy as np
import onnx

from kernelscope.errors import ModelError
from kernelscope.model.loading import serialize_for_runtime

# Silence onnxruntime's C++ log (warnings about unused initializers, and its own copy of every error, which
# kernelscope reports as one ModelError line) unless the user asks for it: 0 verbose .. 3 error, 4 fatal.
_LOG_SEVERITY = int(os.environ.get("KERNELSCOPE_ORT_LOG_LEVEL", "4"))


def session_options():  # -> onnxruntime.SessionOptions
    """Session options with onnxruntime's own logging quiet; the default logger too (it logs load errors)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(_LOG_SEVERITY)
    options = ort.SessionOptions()
    options.log_severity_level = _LOG_SEVERITY
    return options


def default_providers() -> list[str]:
    """CUDA first when ``onnxruntime-gpu`` is installed and sees a GPU, then CPU."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in ("CUDAExecutionProvider",) if p in available]
    return [*chosen, "CPUExecutionProvider"]


def make_session(
    proto: onnx.ModelProto, providers: Sequence[str] | None = None, threads: int | None = None
):  # -> onnxruntime.InferenceSession (import kept lazy: onnxruntime is slow to import)
    """An onnxruntime session for an in-memory model, with a one-line error when the runtime refuses it."""
    import onnxruntime as ort

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(
            serialize_for_runtime(proto), sess_options=options, providers=list(providers or default_providers())
        )
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None


def run_checked(session, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    """Run ``session`` for one output; runtime failures become a one-line :class:`ModelError`."""
    return run_many(session, feeds, [output])[0]


def run_many(session, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
    """Run ``session`` for several outputs; runtime failures become a one-line :class:`ModelError`."""
    try:
        return session.run(list(outputs), feeds)
    except Exception as exc:
        raise ModelError(f"onnxruntime failed while running the model: {_first_line(exc)}") from None


_ORT_NOISE = (
    re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "),  # status prefixes, often nested
    re.compile(r"(?:/\S*/)?[\w.]+\.(?:cc|cpp|h):\d+\s*"),  # C++ source locations
    re.compile(r"onnxruntime::[\w:~<>]+\((?:[^()]|\([^()]*\))*\)\s*"),  # C++ signatures
)


def _first_line(exc: BaseException) -> str:
    """The first line of an onnxruntime error, without C++ source locations and signatures, at most 300 chars."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    for pattern in _ORT_NOISE:
        line = pattern.sub("", line)
    return " ".join(line.split())[:300] or type(exc).__name__
