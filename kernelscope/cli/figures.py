"""``--html PATH`` and ``--plots DIR`` of the commands: checked before the audit, written after it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kernelscope.errors import UsageError
from kernelscope.io import atomic_write_text, check_output_path


def check_figure_outputs(
    html: Path | None,
    plots: Path | None,
    *,
    force: bool,
    inputs: tuple[Path, ...],
    other_outputs: tuple[Path | None, ...] = (),
) -> None:
    """Fail fast, before any long work: matplotlib present, the HTML path writable, the plots folder usable."""
    if html is None and plots is None:
        return
    from kernelscope.report.plots import check_plots_dir, require_matplotlib

    require_matplotlib()
    if html is not None:
        check_output_path(html, force=force, inputs=inputs)
        for other in other_outputs:
            if other is not None and os.path.abspath(other) == os.path.abspath(html):
                raise UsageError(f"--html {html} is also another output of this command; give it its own file")
    if plots is not None:
        check_plots_dir(plots, force=force)


def write_figure_outputs(
    report: Mapping[str, Any], html: Path | None, plots: Path | None, *, quiet: bool = False
) -> list[Path]:
    """Write the HTML page and the PNG figures of a JSON report document; say what was written unless ``quiet``."""
    written: list[Path] = []
    if html is None and plots is None:
        return written
    from kernelscope.report import plots as figures
    from kernelscope.report.html import report_page

    if html is not None:
        atomic_write_text(html, report_page(report))
        written.append(html)
        if not quiet:
            _note(f"wrote {html}")
    if plots is not None:
        paths = figures.save_figures(report, plots)
        written += paths
        if not quiet:
            missing = [name for name in figures.FIGURE_FILES if name not in figures.available_figures(report)]
            extra = f" (no data for {', '.join(figures.FIGURE_FILES[m] for m in missing)})" if missing else ""
            _note(f"wrote {len(paths)} figure(s) to {plots}{extra}")
    return written


def _note(text: str) -> None:
    from kernelscope.cli.context import error_console

    error_console().print(text, style="dim", markup=False, highlight=False, soft_wrap=True)
