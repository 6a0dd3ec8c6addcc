"""A tiny progress-reporting protocol, so the library can report loops without knowing about rich.

Library functions take an optional ``progress`` argument implementing :class:`Progress`; the CLI passes
one backed by rich progress bars, library users may pass their own or nothing (:data:`NO_PROGRESS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Protocol


class ProgressTask(Protocol):
    """One running progress bar."""

    def advance(self, amount: int = 1) -> None:
        """Record that ``amount`` more units of work are done."""

    def update(self, completed: int, total: int | None = None) -> None:
        """Set the absolute progress (and the total, once it is known)."""


class Progress(Protocol):
    """Factory of progress bars; ``task`` is a context manager that closes the bar on exit."""

    def task(self, description: str, total: int | None) -> AbstractContextManager[ProgressTask]:
        """Open a bar for ``total`` units of work (``None`` when unknown)."""


class _NullTask:
    def advance(self, amount: int = 1) -> None:
        pass

    def update(self, completed: int, total: int | None = None) -> None:
        pass


class _NullProgress:
    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[ProgressTask]:
        yield _NullTask()


NO_PROGRESS: Progress = _NullProgress()
"""A :class:`Progress` that shows nothing."""
