"""The ``kernelscope`` command: a thin typer layer over the library.

Every user-fixable problem surfaces as one line on stderr and exit code 2 (1 for a failed audit gate,
130 for Ctrl-C); a traceback is shown only with ``KERNELSCOPE_DEBUG=1``.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable

import typer
from typer.exceptions import TyperException

from kernelscope import __version__
from kernelscope.cli.compare_cmd import compare_command
from kernelscope.cli.harden_cmd import harden_command
from kernelscope.cli.inspect_cmd import inspect_command
from kernelscope.cli.neurons_cmd import neurons_command
from kernelscope.cli.report_cmd import report_command
from kernelscope.errors import KernelscopeError, out_of_memory


class _Interrupted(Exception):
    """Ctrl-C inside a command. typer would turn a KeyboardInterrupt into a silent exit code 130."""


def _interruptible(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with Ctrl-C re-raised as :class:`_Interrupted`, so :func:`main` can say so on stderr."""

    @functools.wraps(command)
    def run(*args: object, **kwargs: object) -> None:
        try:
            command(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted from None

    return run


app = typer.Typer(
    name="kernelscope",
    help="Deployment-time audits of image classifiers (ONNX, TorchScript): first-layer kernels, last-layer neurons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("inspect")(_interruptible(inspect_command))
app.command("harden")(_interruptible(harden_command))
app.command("neurons")(_interruptible(neurons_command))
app.command("compare")(_interruptible(compare_command))
app.command("report")(_interruptible(report_command))


def _version(value: bool) -> None:
    if value:
        typer.echo(f"kernelscope {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """kernelscope: which first-layer kernels does your classifier depend on, and what does an attack do to them?"""


def _fail(message: str, code: int) -> int:
    from kernelscope.cli.context import error_console

    error_console().print(
        f"[bold red]kernelscope: error:[/bold red] {message}", soft_wrap=True, markup=True, highlight=False
    )
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code (also used by tests)."""
    debug = os.environ.get("KERNELSCOPE_DEBUG") == "1"
    try:
        command = typer.main.get_command(app)
        result = command.main(args=argv, standalone_mode=False, prog_name="kernelscope")
    except KernelscopeError as exc:
        if debug:
            raise
        return _fail(_escape(str(exc)), exc.exit_code)
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except TyperException as exc:  # bad options or arguments, reported by typer's parser
        ctx = getattr(exc, "ctx", None)
        name = getattr(ctx, "info_name", None)
        hint = f" (see: kernelscope {name} --help)" if name and name != "kernelscope" else " (see: kernelscope --help)"
        return _fail(_escape(" ".join(exc.format_message().split())) + hint, 2)
    except (_Interrupted, KeyboardInterrupt, typer.Abort):
        return _fail("interrupted", 130)
    except Exception as exc:  # a bug or an input we did not foresee: still one line, never a traceback
        if debug:
            raise
        text = " ".join(str(exc).split())[:300]
        if where := out_of_memory(exc):  # not a bug: the batches were too large for the device
            # compare has no --memory: its audits size their batches by the default budget
            command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), "")
            options = "--batch-size" if command == "compare" else "--memory or --batch-size"
            return _fail(
                _escape(
                    f"out of memory on {where} ({text or type(exc).__name__}); batches are sized by the memory "
                    f"budget (docs/method.md §12): give a smaller {options}"
                ),
                2,
            )
        return _fail(
            _escape(
                f"unexpected {type(exc).__name__}: {text} (rerun with KERNELSCOPE_DEBUG=1 for details and report it)"
            ),
            2,
        )
    return int(result or 0) if isinstance(result, int) else 0


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def run() -> None:
    """Console-script wrapper: exit with :func:`main`'s code."""
    sys.exit(main())
