"""The ``compare`` figures and page, drawn from its JSON document (:func:`kernelscope.compare.compare_reports`).

- :func:`kernels_figure` -- in the style of the paper's Fig. 4: kernel index against input (checkpoint,
  version), a filled marker where the kernel is fragile; rows of kernels fragile in every input dark red, in
  some orange.
- :func:`accuracy_figure` -- the attack's accuracy against ε of every input, on one plot.
- :data:`FIGURE_FILES`, :func:`available_figures`, :func:`save_figures`, :func:`compare_page`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelscope.report import plots
from kernelscope.report.html import Cell, KeyValues, Paragraph, Section, Table, figure_image, render_page

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Report = Mapping[str, Any]

FIGURE_FILES: dict[str, str] = {
    "kernels": "compare_kernels.png",
    "accuracy": "compare_accuracy_vs_epsilon.png",
}

_ALWAYS, _SOME, _NULL = "#b2182b", "#ef8a62", "#9e9e9e"


def kernels_figure(doc: Report) -> Figure:
    """Kernel index vs input: filled where fragile; always-fragile rows dark red, sometimes-fragile orange."""
    inputs, kernels = doc["inputs"], doc["kernels"]
    always, some = set(doc["fragile_in_all"]), set(doc["fragile_in_some"])
    width = max(6.4, 1.6 + 1.1 * len(inputs))
    height = max(3.8, 1.4 + 0.16 * len(kernels))
    fig = plots._new_figure(width, height)
    ax = fig.add_subplot()
    for kernel in kernels:
        k = kernel["index"]
        color = _ALWAYS if k in always else _SOME if k in some else _NULL
        xs = list(range(len(inputs)))
        if k in some:
            ax.plot(xs, [k] * len(xs), color=_SOME, linewidth=0.8, alpha=0.6, zorder=1)
        for x, side in zip(xs, kernel["sides"], strict=True):
            fragile = side == "S"
            ax.scatter([x], [k], s=36, zorder=2, marker="s" if fragile else "o",
                       facecolors=color if fragile else "none", edgecolors=color, linewidths=1.0)  # fmt: skip
    ax.set_xticks(range(len(inputs)), [plots._plain(i["label"], 28) for i in inputs], rotation=20, ha="right")
    ax.set_ylabel("kernel index")
    ax.set_ylim(-1, len(kernels))
    ax.invert_yaxis()
    ax.set_title(f"Fragile kernels: {len(always)} in all {len(inputs)} inputs, {len(some)} in some", fontsize=11)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="s", linestyle="", color=_ALWAYS, label="fragile in all"),
        Line2D([], [], marker="s", linestyle="", color=_SOME, label="fragile in some (filled where fragile)"),
        Line2D([], [], marker="o", linestyle="", markerfacecolor="none", color=_NULL, label="never fragile"),
    ]
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncol=3, frameon=False)
    plots._style_axes(ax)
    return fig


def accuracy_figure(doc: Report) -> Figure:
    """Accuracy under each input's attack against ε, every input on one plot."""
    fig = plots._new_figure(6.4, 4.0)
    ax = fig.add_subplot()
    for item in doc["inputs"]:
        sweep = item["sweep"]
        if not sweep:
            continue
        ax.plot([e["epsilon"] for e in sweep], [100 * e["accuracy"] for e in sweep], marker="o", markersize=3,
                label=f"{plots._plain(item['label'], 40)} ({str(item['attack']).upper()})")  # fmt: skip
    ax.set_xlabel("ε (pixels in [0, 1])")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Accuracy under attack, every input", fontsize=11)
    ax.legend(fontsize=8)
    plots._style_axes(ax)
    return fig


_DRAW = {"kernels": kernels_figure, "accuracy": accuracy_figure}


def available_figures(doc: Report) -> list[str]:
    """The figures the document has data for: the kernels always, the curves when some input was attacked."""
    names = ["kernels"]
    if any(item["sweep"] for item in doc["inputs"]):
        names.append("accuracy")
    return names


def save_figures(doc: Report, directory: str | os.PathLike[str], *, dpi: int = plots.DPI) -> list[Path]:
    """Write the figures as PNG files into ``directory`` (created if needed), atomically; returns the paths."""
    figures = [(FIGURE_FILES[n], lambda n=n: _DRAW[n](doc)) for n in available_figures(doc)]
    return plots.write_pngs(directory, figures, dpi)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def inputs_table(doc: Report) -> Table:
    """Per input: source, baseline, fragile share, and the attack's accuracy at every ε all inputs share."""
    from kernelscope.compare import common_epsilons

    shared = [e for e in common_epsilons(doc) if e > 0]
    headers = ["input", "source", "baseline", "mean (dropped)", "fragile", *[f"ε = {e:g}" for e in shared]]
    rows = []
    for item in doc["inputs"]:
        by_eps = {e["epsilon"]: e["accuracy"] for e in item["sweep"]}
        rows.append([
            item["label"], item["source"], _pct(item["baseline_accuracy"]), _pct(item["mean_accuracy"]),
            f"{len(item['fragile'])} ({_pct(item['fragile_share'])})", *[_pct(by_eps.get(e)) for e in shared],
        ])  # fmt: skip
    attacks = sorted({str(i["attack"]).upper() for i in doc["inputs"] if i["attack"]})
    return Table(headers, rows, caption=f"Inputs, in order (attack: {', '.join(attacks) or 'none'})",
                 numeric=range(2, len(headers)))  # fmt: skip


def kernels_table(doc: Report) -> Table:
    """Per kernel: its side and accuracy-with-kernel-dropped in each input."""
    labels = [i["label"] for i in doc["inputs"]]
    always, some = set(doc["fragile_in_all"]), set(doc["fragile_in_some"])
    rows = []
    for kernel in doc["kernels"]:
        k = kernel["index"]
        group = "all" if k in always else "some" if k in some else "none"
        cells: list[str | Cell] = [str(k), Cell(group, "fragile" if group == "all" else None)]
        for side, acc in zip(kernel["sides"], kernel["accuracies"], strict=True):
            cells.append(Cell(f"{side} {_pct(acc)}", "fragile" if side == "S" else "null"))
        rows.append(cells)
    return Table(["k", "fragile in", *labels], rows, caption="Each kernel: side and accuracy with it dropped",
                 numeric=[0])  # fmt: skip


def compare_page(doc: Report) -> str:
    """The ``compare --html`` page."""
    from kernelscope.compare import verdict

    shape = doc["layer_shape"]
    summary = KeyValues(
        [
            ("inputs", " → ".join(i["label"] for i in doc["inputs"])),
            ("layer", f"{shape['out_channels']} x {shape['in_channels']} x "
             f"{'x'.join(map(str, shape['kernel_shape']))} (first Conv of each)"),
            ("fragile in all", ", ".join(map(str, doc["fragile_in_all"])) or "none"),
            ("fragile in some", ", ".join(map(str, doc["fragile_in_some"])) or "none"),
        ],
        caption="Comparison",
    )  # fmt: skip
    blocks = [Paragraph(verdict(doc), kind="verdict"), summary, inputs_table(doc)]
    figures = [
        figure_image(
            kernels_figure(doc),
            alt="fragile kernels across the inputs",
            caption="In the style of the paper's Fig. 4: each kernel (row) in each input (column); a filled "
            "square where the kernel is fragile (S).",
        ),
    ]
    if "accuracy" in available_figures(doc):
        figures.append(figure_image(accuracy_figure(doc), alt="accuracy vs ε of every input",
                                    caption="Accuracy under each input's attack against ε."))  # fmt: skip
    gates = doc.get("gates") or []
    sections = [Section("Summary", blocks), Section("Figures", figures), Section("Kernels", [kernels_table(doc)])]
    if gates:
        rows = [[g["gate"], g["kind"], "–" if g["value"] is None else f"{g['value']:.6g}", f"{g['threshold']:g}",
                 Cell("pass", "good") if g["passed"] else Cell("FAIL", "bad")] for g in gates]  # fmt: skip
        sections.append(Section("Gates", [Table(["gate", "form", "measured", "threshold", "outcome"], rows)]))
    return render_page("kernelscope compare", sections)
