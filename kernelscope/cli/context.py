"""Consoles shared by the commands: reports on stdout, progress and errors on stderr."""

from __future__ import annotations

import functools

from rich.console import Console

from kernelscope.cli.progress import RichProgress


@functools.cache
def console() -> Console:
    """Where reports go (stdout)."""
    return Console(highlight=False)


@functools.cache
def error_console() -> Console:
    """Where progress bars, notes and errors go (stderr)."""
    return Console(stderr=True, highlight=False)


def progress_for(quiet: bool) -> RichProgress:
    """Progress bars on stderr, hidden with --quiet or when stderr is not a terminal."""
    err = error_console()
    return RichProgress(err, enabled=not quiet and err.is_terminal)
