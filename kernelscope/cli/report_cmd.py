"""``kernelscope report``: draw the HTML page and the figures of a saved ``--json`` report, without the model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from kernelscope.cli import options as opt
from kernelscope.cli.figures import check_figure_outputs, write_figure_outputs
from kernelscope.errors import UsageError

COMMANDS = ("inspect", "harden", "neurons", "compare")


def report_command(
    report: Annotated[Path, typer.Argument(help="A JSON report written by --json (any command).")],
    html_path: opt.HtmlOption = None,
    plots_dir: opt.PlotsOption = None,
    force: opt.ForceOption = False,
    quiet: opt.QuietOption = False,
) -> None:
    """Re-render a saved JSON report as the HTML page and / or the PNG figures."""
    if html_path is None and plots_dir is None:
        raise UsageError("nothing to draw: pass --html PATH and / or --plots DIR")
    try:
        doc = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{report} is not a readable JSON report: {exc}") from None
    command = doc.get("command") if isinstance(doc, dict) else None
    if command not in COMMANDS:
        raise UsageError(f"{report} is not a kernelscope report (command {command!r}; one of {', '.join(COMMANDS)})")
    check_figure_outputs(html_path, plots_dir, force=force, inputs=(report,), command=command)
    write_figure_outputs(doc, html_path, plots_dir, quiet=quiet)
