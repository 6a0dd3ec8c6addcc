"""The ``neurons --html`` page and its two figures, drawn from a ``neurons`` JSON report document.

- :func:`sensitivity_figure(report) <sensitivity_figure>`: median |Δ| per neuron, sorted, the neurons that are
  the most sensitive on some image highlighted.
- :func:`success_figure(report) <success_figure>`: success rate of the single-neuron attack vs k, with the
  untargeted PGD rate as a line (Suri & Evans' comparison), 95 % Wilson intervals.
- :func:`neurons_page(report) <neurons_page>`: the page (summary, verdict, both figures, the tables), built
  with the blocks of :mod:`kernelscope.report.html`.
- :func:`save_figures(report, directory) <save_figures>`: both figures as PNG files named as in
  :data:`FIGURE_FILES` (``neurons --plots DIR``); :func:`available_figures` says which the report has data for.

Like the other pages, it can be rebuilt from a saved ``--json`` file (``report_page`` dispatches on
``command``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelscope.report import plots
from kernelscope.report.html import (
    Block,
    Cell,
    KeyValues,
    Paragraph,
    Row,
    Section,
    Table,
    figure_image,
    render_page,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Report = Mapping[str, Any]

HIGHLIGHT = plots.FRAGILE_COLOR
OTHER = plots.NULL_COLOR

#: File names of the figures written by :func:`save_figures` (and ``neurons --plots DIR``), by figure name.
FIGURE_FILES: dict[str, str] = {
    "sensitivity": "neurons_sensitivity.png",
    "success": "neurons_success_vs_k.png",
}


def _g(value: float | None, digits: int = 3) -> str:
    return "∞" if value is None else f"{value:.{digits}g}"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def sensitivity_figure(report: Report) -> Figure:
    """Median |Δ| of every neuron, sorted from most to least sensitive; neurons never flippable on half the
    images (median ∞) are counted in the title instead of drawn."""
    neurons = report.get("neurons") or {}
    entries = [s for s in neurons.get("sensitivity") or [] if s.get("median_abs_delta") is not None]
    infinite = len(neurons.get("sensitivity") or []) - len(entries)
    entries.sort(key=lambda s: (s["median_abs_delta"], s["index"]))
    fig = plots._new_figure(10, 4.6)
    ax = fig.add_subplot()
    plots._style_axes(ax)
    positions = list(range(len(entries)))
    values = [float(s["median_abs_delta"]) for s in entries]
    colors = [HIGHLIGHT if s.get("times_most_sensitive") else OTHER for s in entries]
    ax.bar(positions, values, color=colors, width=0.85, linewidth=0)
    if len(entries) <= 40:
        ax.set_xticks(positions, [str(s["index"]) for s in entries], fontsize=8, rotation=90)
    else:
        ax.set_xticks([])
    ax.set_xlabel("neurons, sorted by median |Δ| (most sensitive left)", fontsize=11)
    ax.set_ylabel("median |Δ| over images", fontsize=11)
    positive = [v for v in values if v > 0]
    if positive and len(positive) == len(values) and max(positive) > 1e3 * min(positive):
        ax.set_yscale("log")  # a few very insensitive neurons would flatten all the others
    from matplotlib.patches import Patch

    fig.legend(
        handles=[
            Patch(color=HIGHLIGHT, label="the most sensitive neuron on at least one image"),
            Patch(color=OTHER, label="never the most sensitive"),
        ],
        loc="outside lower center",
        ncols=2,
        fontsize=9.5,
        frameon=False,
    )
    fig.suptitle("Neuron sensitivity of the final linear layer's inputs", fontsize=13, fontweight="bold")
    layer = plots._plain(neurons.get("layer", "?"), 40)
    note = f"; {infinite} neuron(s) with median ∞ not drawn" if infinite else ""
    ax.set_title(
        f"Δ: change of one feature of {layer} that ties the prediction with another class{note}",
        fontsize=10,
        color="#444444",
    )
    return fig


def success_figure(report: Report) -> Figure:
    """Success rate of the single-neuron attack vs k, and the untargeted PGD rate with the same budget."""
    neurons = report.get("neurons") or {}
    single, pgd = neurons.get("single_neuron_attack"), neurons.get("pgd")
    if not single or not pgd:
        raise plots.FigureUnavailable("the report has no attack results (--no-attack)")
    ks = [int(k) for k in single["k"]]
    rates = [100 * float(r) for r in single["success_rate"]]
    # max(0, ...): at a rate of 0 or 1 the interval's end equals the rate up to rounding
    low = [max(0.0, r - 100 * ci[0]) for r, ci in zip(rates, single["ci95"], strict=True)]
    high = [max(0.0, 100 * ci[1] - r) for r, ci in zip(rates, single["ci95"], strict=True)]
    fig = plots._new_figure(7.5, 4.6)
    ax = fig.add_subplot()
    plots._style_axes(ax)
    ax.errorbar(ks, rates, yerr=[low, high], color=HIGHLIGHT, marker="o", capsize=4, linewidth=1.8,
                label="single-neuron attack (any of the k most sensitive)")  # fmt: skip
    pgd_rate = 100 * float(pgd["success_rate"])
    ci = [100 * float(c) for c in pgd["ci95"]]
    ax.axhline(pgd_rate, color=OTHER, linewidth=1.8, label=f"untargeted PGD: {pgd_rate:.1f} %")
    ax.axhspan(ci[0], ci[1], color=OTHER, alpha=0.12, linewidth=0)
    if len(ks) > 1 and ks[-1] / max(ks[0], 1) >= 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_ylim(0, 102)
    ax.set_xlabel("k: most sensitive neurons tried per image", fontsize=11)
    ax.set_ylabel("prediction changed (% of images)", fontsize=11)
    fig.legend(loc="outside lower center", ncols=1, fontsize=9.5, frameon=False)
    norm = "L2" if single.get("norm") == "l2" else "L∞"
    fig.suptitle("One neuron vs the whole output", fontsize=13, fontweight="bold")
    ax.set_title(
        f"{norm} ε = {single['epsilon']:g}, {single['steps']} PGD steps, λ = {single['lambda']:g}; "
        f"{single.get('images', '?')} images; 95 % intervals",
        fontsize=10,
        color="#444444",
    )
    return fig


def available_figures(report: Report) -> list[str]:
    """Names (keys of :data:`FIGURE_FILES`) of the figures the report has data for, in page order."""
    neurons = report.get("neurons") or {}
    names = []
    if neurons.get("sensitivity"):  # drawn as on the page, even when every median is ∞ (the title says so)
        names.append("sensitivity")
    if neurons.get("single_neuron_attack") and neurons.get("pgd"):
        names.append("success")
    return names


_DRAW = {"sensitivity": sensitivity_figure, "success": success_figure}


def save_figures(report: Report, directory: str | os.PathLike[str], *, dpi: int = plots.DPI) -> list[Path]:
    """Write every figure the report has data for as PNG into ``directory`` (created if needed).

    File names are those of :data:`FIGURE_FILES`; each file is written atomically (a temporary file renamed
    into place). Returns the paths written, in page order (only the sensitivity bars for ``--no-attack``).
    """
    figures = [(FIGURE_FILES[n], lambda n=n: _DRAW[n](report)) for n in available_figures(report)]
    return plots.write_pngs(directory, figures, dpi)


def _summary(report: Report) -> list[Block]:
    m, d, n = report.get("model") or {}, report.get("data") or {}, report.get("neurons") or {}
    check = n.get("check") or {}
    pre = d.get("preprocessing") or {}
    model_rows = [
        ("file", str(m.get("path", "?"))),
        ("format", f"{m.get('format', '?')}, opset {m.get('opset', '?')}"),
        ("output", f"{(m.get('output') or {}).get('name', '?')}, {m.get('num_classes') or '?'} classes"),
        ("clean accuracy", _pct(report.get("clean_accuracy"))),
    ]
    layer_rows = [
        ("layer", f"{n.get('layer', '?')} ({n.get('op_type', '?')})"),
        ("features", f"{n.get('feature_tensor', '?')}: {n.get('count', '?')} neurons"),
        ("from", " <- ".join(n.get("feature_source") or []) or "–"),
        ("ReLU features", "yes: Δ keeps f_i + Δ >= 0" if n.get("relu_features") else "no: Δ unconstrained"),
        ("after the layer", ", ".join(n.get("after") or []) or "nothing"),
        ("check", f"W f + b vs onnxruntime {check.get('weights_relative_diff', 0):.1e}"),
    ]
    data_rows = [
        ("data", f"{d.get('name', '?')} [{d.get('split', '?')}]"),
        ("source", str(d.get("source", "?"))),
        ("images", f"{d.get('n', '?')} of {d.get('available', '?')}"),
        ("input", f"{pre.get('layout', '?')} {pre.get('size')} × {pre.get('channels', '?')}"),
    ]
    return [
        Row(
            [
                KeyValues(model_rows, caption="Model"),
                KeyValues(layer_rows, caption="Final linear layer"),
                KeyValues(data_rows, caption="Data"),
            ]
        )
    ]


def _sensitivity_table(report: Report, rows_shown: Sequence[int] | None, caption: str, collapsed: bool) -> Table:
    neurons = report.get("neurons") or {}
    by_index = {int(s["index"]): s for s in neurons.get("sensitivity") or []}
    order = [int(i) for i in neurons.get("most_sensitive") or sorted(by_index)]
    n = (report.get("data") or {}).get("n") or 0
    rows = []
    for i in order if rows_shown is None else [order[r] for r in rows_shown if r < len(order)]:
        s = by_index[i]
        times = int(s.get("times_most_sensitive") or 0)
        rows.append(
            [
                Cell(str(i), "strong" if times else None),
                f"{times} ({times / n:.0%})" if n else str(times),
                _g(s.get("median_abs_delta")),
                "–" if s.get("mean_scaled_delta") is None else f"{s['mean_scaled_delta']:.3g}",
                f"{(s.get('flippable') or 0) / n:.0%}" if n else "–",
                f"{s.get('feature_mean', 0):.3g}",
                f"{s.get('feature_std', 0):.3g}",
            ]
        )
    return Table(
        ["neuron", "most sensitive on", "median |Δ|", "mean scaled Δ", "flippable", "μ", "σ"],
        rows,
        caption=caption,
        numeric=[1, 2, 3, 4, 5, 6],
        collapsed=collapsed,
        note="Per image, neurons are ranked by (|Δ| − μ)/σ (μ, σ: the feature's mean and standard deviation over the "
        "data); 'most sensitive on' counts the images where a neuron ranks first. flippable: images on which the "
        "neuron alone can change the prediction.",
    )


def _attack_table(report: Report) -> Table | None:
    neurons = report.get("neurons") or {}
    single, pgd = neurons.get("single_neuron_attack"), neurons.get("pgd")
    if not single or not pgd:
        return None
    rows: list[list[str | Cell]] = []
    for k, rate, hits, ci in zip(single["k"], single["success_rate"], single["successes"], single["ci95"], strict=True):
        rows.append([f"any of the {k} most sensitive", _pct(rate), str(hits), f"{_pct(ci[0])} – {_pct(ci[1])}"])
    rows.append(
        [
            Cell("untargeted PGD", "strong"),
            Cell(_pct(pgd["success_rate"]), "strong"),
            str(pgd["successes"]),
            f"{_pct(pgd['ci95'][0])} – {_pct(pgd['ci95'][1])}",
        ]
    )
    norm = "L2" if single.get("norm") == "l2" else "L∞"
    return Table(
        ["attack", "success", "images fooled", "95 % CI"],
        rows,
        caption=f"Attack success on {single.get('images')} images ({norm} ε = {single['epsilon']:g}, "
        f"{single['steps']} steps of {single['step_size']:.3g}, λ = {single['lambda']:g})",
        note=f"Success: the deployed model's prediction changes. {single['attacks']} single-neuron attacks were run "
        f"({single['moved_toward_target']} left the neuron closer to its target); an image fooled by its first "
        "neurons is not attacked at later ones, which changes no rate.",
    )


def neurons_page(report: Report) -> str:
    """The ``neurons --html`` page from a ``neurons`` report document."""
    model = (report.get("model") or {}).get("path", "model")
    verdict: list[Block] = [Paragraph(str(report.get("verdict", "")), kind="verdict")]
    verdict += [Paragraph(f"⚠ {w}", kind="warning") for w in report.get("warnings") or []]
    count = len((report.get("neurons") or {}).get("sensitivity") or [])
    sensitivity: list[Block] = [
        figure_image(
            sensitivity_figure(report),
            alt="median |Δ| per neuron, sorted",
            caption="Median |Δ| per neuron over the images, most sensitive first. Red: neurons that are the most "
            "sensitive (by the scaled ranking) on at least one image.",
        ),
        _sensitivity_table(report, range(20), "The 20 most sensitive neurons", collapsed=False),
    ]
    if count > 20:
        sensitivity.append(_sensitivity_table(report, None, f"All {count} neurons", collapsed=True))
    attack: list[Block]
    table = _attack_table(report)
    if table is None:
        attack = [Paragraph("The attacks were not run (--no-attack).", kind="note")]
    else:
        attack = [
            figure_image(
                success_figure(report),
                alt="success rate of the single-neuron attack vs k, with the PGD line",
                caption="Share of images whose prediction changes when one of the k most sensitive neurons is "
                "attacked, against untargeted PGD with the same norm, ε and steps (shaded: its 95 % interval).",
            ),
            table,
        ]
    mirror = report.get("mirror")
    if mirror:
        attack.append(
            Paragraph(
                f"Gradients from the PyTorch mirror (logits within {mirror.get('relative_diff', 0):.1e} of "
                f"onnxruntime, features within "
                f"{((report.get('neurons') or {}).get('check') or {}).get('mirror_feature_relative_diff') or 0:.1e}); "
                "adversarial images are judged by the model in onnxruntime.",
                kind="note",
            )
        )
    sections = [
        Section("Summary", _summary(report)),
        Section("Verdict", verdict),
        Section("Neuron sensitivity", sensitivity, anchor="sensitivity"),
        Section("Single-neuron attack vs PGD", attack, anchor="attack"),
    ]
    footer = (
        f"kernelscope {report.get('kernelscope_version', '?')} · neurons report · JSON schema "
        f"{report.get('schema_version', '?')} · method of Suri & Evans, One Neuron to Fool Them All (2020)"
    )
    return render_page(
        "kernelscope neurons",
        sections,
        subtitle=f"{model} · sensitivity of the final linear layer's input neurons",
        footer=footer,
    )
