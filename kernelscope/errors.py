"""The exceptions kernelscope raises on purpose.

Every problem a user can fix (a bad file, data that does not fit the model, an unsupported graph) is a
:class:`KernelscopeError` whose message is one line saying what is wrong and what to do. The command line
turns it into that line on stderr and exit code 2; library users can catch it the same way.
"""

from __future__ import annotations


class KernelscopeError(Exception):
    """A user-facing error: bad input, unsupported model, data mismatch. Exit code 2 on the CLI."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # Keep the promise of a single line even when a message is built from multi-line text.
        super().__init__(" ".join(str(message).split()))


class ModelError(KernelscopeError):
    """The model file cannot be read, or its graph is not something kernelscope can audit."""


class DataError(KernelscopeError):
    """The data set cannot be found, read, or does not fit the model."""


class UsageError(KernelscopeError):
    """Options that contradict each other or are out of range."""


class AuditFailed(KernelscopeError):
    """An audit gate (``--fail-under`` style threshold) was not met. Exit code 1."""

    exit_code = 1


def some_of(items: list[str], limit: int) -> str:
    """The first ``limit`` items joined with commas, then how many were left out ("a, b and 3 more")."""
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def out_of_memory(exc: BaseException) -> str | None:
    """Where ``exc`` ran out of memory ("the GPU" or "this machine"), or None when it is another error.

    Python's ``MemoryError``; PyTorch's ``torch.cuda.OutOfMemoryError`` (matched by name: torch loads lazily);
    and the plain ``RuntimeError`` PyTorch raises when its CPU allocator fails ("can't allocate memory")."""
    if type(exc).__name__ == "OutOfMemoryError":
        return "the GPU"
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)):
        return "this machine"
    return None
