"""Consoles shared by the commands: reports on stdout, progress and errors on stderr."""

from __future__ import annotations

import functools
import os
from typing import Any

from rich.console import Console
from rich.table import Table

from kernelscope.cli.progress import RichProgress

#: Widest a table may grow to in a pipe or log before its cells wrap (a guard, not a layout choice).
_WIDEST_TABLE = 1000


class WholeConsole(Console):
    """A console that never cuts a table cell short with an ellipsis.

    In a pipe or a log file (not a terminal, ``COLUMNS`` unset) a table too wide for the default 80 columns
    is printed at the width its content needs. At a fixed width (a terminal, or ``COLUMNS``) such a table
    wraps its cells instead: a number may break across two lines, but every digit is there.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fit_to_content = not self.is_terminal and "COLUMNS" not in os.environ

    def print(self, *objects: Any, **kwargs: Any) -> None:
        """``Console.print``, with each table given the width it needs or its cells wrapped (see the class)."""
        tables = [o for o in objects if isinstance(o, Table)]
        if not tables:
            super().print(*objects, **kwargs)
            return
        wide = self.options.update(width=_WIDEST_TABLE)
        needed = max(self.measure(table, options=wide).maximum for table in tables)
        if needed <= self.width:
            super().print(*objects, **kwargs)
        elif self.fit_to_content and needed <= _WIDEST_TABLE:
            saved = self._width
            self._width = needed
            try:
                super().print(*objects, **kwargs)
            finally:
                self._width = saved
        else:
            for table in tables:
                for column in table.columns:
                    column.no_wrap = False
                    column.overflow = "fold"
            super().print(*objects, **kwargs)


@functools.cache
def console() -> Console:
    """Where reports go (stdout)."""
    return WholeConsole(highlight=False)


@functools.cache
def error_console() -> Console:
    """Where progress bars, notes and errors go (stderr)."""
    return Console(stderr=True, highlight=False)


def progress_for(quiet: bool) -> RichProgress:
    """Progress bars on stderr, hidden with --quiet or when stderr is not a terminal."""
    err = error_console()
    return RichProgress(err, enabled=not quiet and err.is_terminal)
