"""Graph surgery: edits of an in-memory ONNX graph (kernel masks, pruning, dynamic batch, weight rewrites)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from kernelscope.errors import KernelscopeError, ModelError


@contextlib.contextmanager
def graph_edit(action: str) -> Iterator[None]:
    """Turn a failure of onnx-graphsurgeon on a malformed graph into a one-line :class:`ModelError`.

    onnx-graphsurgeon raises its own exceptions (and ValueError, KeyError, UnicodeDecodeError...) on graphs
    with undefined types, duplicate tensor names, cycles or unreadable attributes; ``action`` says what
    kernelscope was doing, e.g. ``"add the kernel mask to"``.
    """
    try:
        yield
    except KernelscopeError:
        raise
    except Exception as exc:
        reason = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ModelError(
            f"cannot {action} the graph: {reason} ({type(exc).__name__}); the model is malformed, check it with "
            "onnx.checker.check_model"
        ) from None
