"""``--json``, ``--html PATH`` and ``--plots DIR`` of the commands: checked before the audit, written after it."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from kernelscope.errors import UsageError
from kernelscope.io import atomic_write_text, check_output_path


def figure_files(command: str) -> dict[str, str]:
    """The PNG file names ``--plots`` writes for ``command``, by figure name."""
    if command == "neurons":
        from kernelscope.report.neurons_page import FIGURE_FILES as NEURONS_FILES

        return dict(NEURONS_FILES)
    if command == "compare":
        from kernelscope.report.compare_page import FIGURE_FILES as COMPARE_FILES

        return dict(COMPARE_FILES)
    from kernelscope.report.plots import FIGURE_FILES

    files = dict(FIGURE_FILES)
    if command == "inspect":
        del files["frontier"]  # harden's candidates; an inspect report has none to draw
    return files


def check_figure_outputs(
    html: Path | None,
    plots: Path | None,
    *,
    force: bool,
    inputs: tuple[Path, ...],
    other_outputs: tuple[Path | None, ...] = (),
    command: str = "inspect",
) -> None:
    """Fail fast, before any long work: matplotlib present, the HTML path writable, the plots folder usable.

    ``command`` decides which figure files an existing ``--plots`` folder must not hold (without ``force``).
    """
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
        for other in (*other_outputs, html, *inputs):
            if other is not None and os.path.abspath(other) == os.path.abspath(plots):
                raise UsageError(f"--plots {plots} is also a file of this command; give the figures their own folder")
        check_plots_dir(plots, force=force, names=figure_files(command).values())


def write_figure_outputs(
    report: Mapping[str, Any], html: Path | None, plots: Path | None, *, quiet: bool = False
) -> list[Path]:
    """Write the HTML page and the PNG figures of a JSON report document; say what was written unless ``quiet``.

    The figures are those of the report's command: the paper's three for ``inspect`` and ``harden``
    (:mod:`kernelscope.report.plots`), the two of the ``neurons`` page (:mod:`kernelscope.report.neurons_page`).
    """
    written: list[Path] = []
    if html is None and plots is None:
        return written
    from kernelscope.report.html import report_page

    if html is not None:
        atomic_write_text(html, report_page(report))
        written.append(html)
        if not quiet:
            _note(f"wrote {html}")
    if plots is not None:
        save, available = _figure_writers(report)
        files = figure_files(str(report.get("command") or ""))
        paths = save(report, plots)
        written += paths
        if not quiet:
            missing = [name for name in files if name not in available(report)]
            extra = f" (no data for {', '.join(files[m] for m in missing)})" if missing else ""
            _note(f"wrote {len(paths)} figure(s) to {plots}{extra}")
    return written


def check_report_outputs(
    json_path: Path | None,
    html: Path | None,
    plots: Path | None,
    *,
    force: bool,
    inputs: tuple[Path, ...],
    other_outputs: tuple[Path | None, ...] = (),
    command: str = "inspect",
) -> None:
    """Check every report output of a command (``--json``, ``--html``, ``--plots``) before any long work."""
    if json_path is not None:
        check_output_path(json_path, force=force, inputs=inputs)
    check_figure_outputs(
        html, plots, force=force, inputs=inputs, other_outputs=(json_path, *other_outputs), command=command
    )


def write_report_outputs(
    to_dict: Callable[[], Mapping[str, Any]],
    json_path: Path | None,
    html: Path | None,
    plots: Path | None,
    *,
    quiet: bool = False,
) -> None:
    """Build the JSON report document (only when some output needs it) and write ``--json``, ``--html``, ``--plots``."""
    if (json_path, html, plots) == (None, None, None):
        return
    from kernelscope.report.json_report import dumps

    doc = to_dict()
    if json_path is not None:
        atomic_write_text(json_path, dumps(doc))
        if not quiet:
            _note(f"wrote {json_path}")
    write_figure_outputs(doc, html, plots, quiet=quiet)


def _figure_writers(
    report: Mapping[str, Any],
) -> tuple[Callable[[Mapping[str, Any], Path], list[Path]], Callable[[Mapping[str, Any]], list[str]]]:
    """(save_figures, available_figures) of the module that draws the report's command's figures."""
    if report.get("command") == "neurons":
        from kernelscope.report import neurons_page as module
    elif report.get("command") == "compare":
        from kernelscope.report import compare_page as module  # type: ignore[no-redef]
    else:
        from kernelscope.report import plots as module  # type: ignore[no-redef]
    return module.save_figures, module.available_figures


def _note(text: str) -> None:
    from kernelscope.cli.context import error_console

    error_console().print(text, style="dim", markup=False, highlight=False, soft_wrap=True)
