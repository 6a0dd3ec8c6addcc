"""The ONNX -> PyTorch mirror: run an ONNX graph as a torch module to get input gradients.

``OnnxMirror(proto)`` executes the graph op by op; ``check_parity`` compares it with onnxruntime before any
gradient is trusted; ``UnsupportedOpsError`` lists every op the mirror lacks; ``supported_ops_markdown``
renders the op table kept in ``docs/supported-ops.md``.
"""

from __future__ import annotations

from kernelscope.mirror.errors import UnsupportedOpsError
from kernelscope.mirror.module import OnnxMirror, unsupported_ops
from kernelscope.mirror.parity import ParityResult, check_parity, default_tolerance

__all__ = [
    "OnnxMirror",
    "ParityResult",
    "UnsupportedOpsError",
    "check_parity",
    "default_tolerance",
    "supported_ops_markdown",
    "unsupported_ops",
]


def __getattr__(name: str):
    # Imported lazily so that ``python -m kernelscope.mirror.optable`` does not import the module twice.
    if name == "supported_ops_markdown":
        from kernelscope.mirror.optable import supported_ops_markdown

        return supported_ops_markdown
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
