"""onnxruntime sessions: provider choice (CUDA when the GPU build is installed, else CPU) and checks."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import onnx

from kernelscope.errors import ModelError
from kernelscope.model.loading import serialize_for_runtime

# Silence onnxruntime's C++ warnings (e.g. about unused initializers) unless the user asks for them.
_LOG_SEVERITY = int(os.environ.get("KERNELSCOPE_ORT_LOG_LEVEL", "3"))


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

    options = ort.SessionOptions()
    options.log_severity_level = _LOG_SEVERITY
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]
