"""The paper's three figures, drawn with matplotlib from a JSON report document.

Every function takes the document that :mod:`kernelscope.report.json_report` builds
(:func:`~kernelscope.report.json_report.inspect_to_dict` or :func:`~kernelscope.report.json_report.harden_to_dict`),
or the same document read back from a ``--json`` file, so figures can be redrawn from saved reports::

    import json
    from pathlib import Path
    from kernelscope.report import plots

    report = json.loads(Path("r.json").read_text())
    plots.kernel_accuracy_figure(report).savefig("fig1.png")           # Fig. 1
    plots.accuracy_vs_epsilon_figure(report).savefig("fig2.png")       # Fig. 2, linear and log ε axes
    plots.targeting_figure(report).savefig("fig3.png")                 # Fig. 3
    plots.save_figures(report, Path("figures"))                        # all that the report has data for

Public API:

- :func:`kernel_accuracy_figure(report) <kernel_accuracy_figure>` -- Fig. 1: accuracy with each kernel dropped,
  S / S' marked, the mean line and the baseline.
- :func:`accuracy_vs_epsilon_figure(report, hardened=None) <accuracy_vs_epsilon_figure>` -- Fig. 2: attack accuracy
  vs ε on a linear and a logarithmic ε axis, with 95 % intervals.
- :func:`targeting_figure(report, hardened=None) <targeting_figure>` -- Fig. 3: % of examples whose attack moves
  S more than S', on raw and normalized distances, at the Conv output or the activation (``targeting_at``).
- :func:`save_figures(report, directory, hardened=None) <save_figures>` -- PNG files named as in
  :data:`FIGURE_FILES`; returns the paths written.
- :func:`targeting_at` -- where the targeting compared the first layer (``conv`` or ``activation``).
- :func:`attack_series`, :func:`available_figures`, :func:`draw_figure`, :func:`figure_png`,
  :func:`require_matplotlib`, :func:`check_plots_dir`.

A ``harden`` report carries both models: the original (``harden.before``) and, when one was made, the hardened
model (``harden.after``), both measured on the held-out evaluation images; Fig. 2 and Fig. 3 draw both. For an
``inspect`` report, ``hardened`` may be a second document (an ``inspect`` report of the hardened file, or a
``harden`` report, whose ``after`` is used) to overlay. Figures are :class:`matplotlib.figure.Figure` objects
made without pyplot (no global state, no display needed); matplotlib is imported only when a figure is drawn.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kernelscope.errors import KernelscopeError, UsageError
from kernelscope.io import atomic_write_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

Report = Mapping[str, Any]

#: File names of the figures written by :func:`save_figures` (and ``--plots DIR``), by figure name.
FIGURE_FILES: dict[str, str] = {
    "kernel_accuracy": "fig1_kernel_accuracy.png",
    "accuracy_vs_epsilon": "fig2_accuracy_vs_epsilon.png",
    "targeting": "fig3_targeting.png",
    "frontier": "fig4_harden_frontier.png",
    "layers": "fig5_layers_depth.png",
}

#: The hint given when matplotlib is missing.
INSTALL_HINT = 'pip install "kernelscope[plots]"'

EPSILON_LABEL = "ε (per-pixel budget, pixels in [0, 1])"
EPSILON_LABEL_L2 = "ε (L2 norm of the perturbation, pixels in [0, 1])"
FRAGILE_COLOR = "#c0392b"
NULL_COLOR = "#2e6da4"
SERIES_STYLE = {  # label -> (color, marker, line width, z-order): the original is drawn thinner, on top
    "original": ("#1f3b73", "o", 1.6, 3),
    "hardened": ("#d35400", "s", 2.6, 2),
}
DPI = 150


class FigureUnavailable(KernelscopeError):
    """The report has no data for a figure (e.g. Fig. 2 of a ``--no-attack`` run)."""


def require_matplotlib() -> None:
    """Raise a one-line :class:`UsageError` naming the extra to install when matplotlib cannot be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(f"plots need matplotlib, which is not installed: {INSTALL_HINT}") from None


# ----------------------------------------------------------------------------------------------- report data


@dataclass(frozen=True)
class AttackSeries:
    """One model's attack measurements: accuracy and targeting per ε (entries as in the JSON report)."""

    label: str  # "original" or "hardened"
    fgsm: list[dict[str, Any]]
    targeting: list[dict[str, Any]]
    n: int | None


def _sweep_of(doc: Report, *, hardened: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
    """(fgsm, targeting) of a document: an ``inspect`` sweep, or a ``harden`` report's before (after if
    ``hardened``); None when absent."""
    if doc.get("command") == "harden":
        measured = (doc.get("harden") or {}).get("after" if hardened else "before")
        if not measured or not measured.get("fgsm"):
            return None
        return list(measured["fgsm"]), list(measured.get("targeting") or [])
    entries = doc.get(_attack_key(doc)) or doc.get("fgsm")
    if not entries:
        return None
    return list(entries), list(doc.get("targeting") or [])


def _attack_key(doc: Report) -> str:
    """The key of the accuracy sweep: the attack's name (``fgsm``, or ``pgd`` for ``inspect --attack pgd``)."""
    return str((doc.get("attack") or {}).get("name") or "fgsm").lower()


def epsilon_label(report: Report) -> str:
    """The ε axis label: a per-pixel (L∞) budget, or the L2 norm of the change for ``--attack pgd --pgd-norm l2``."""
    pgd = (report.get("attack") or {}).get("pgd") if report.get("command") != "harden" else None
    return EPSILON_LABEL_L2 if pgd and str(pgd.get("norm", "")).lower() == "l2" else EPSILON_LABEL


def attack_name(report: Report) -> str:
    """The attack of the report's sweep as printed in figures: ``FGSM`` (``harden``, default) or ``PGD``."""
    return "FGSM" if report.get("command") == "harden" else _attack_key(report).upper()


def targeting_at(report: Report) -> dict[str, Any]:
    """Where the report's targeting compared the first layer: ``{"site", "tensor", "after"}`` (``site`` is
    ``conv`` or ``activation``); reports written before ``--targeting-at`` existed measured at ``conv``."""
    value = report.get("targeting_at") or {}
    return {
        "site": str(value.get("site") or "conv"),
        "tensor": value.get("tensor"),
        "after": list(value.get("after") or []),
    }


def attack_series(report: Report, hardened: Report | None = None) -> list[AttackSeries]:
    """The models whose attack / targeting sweeps the figures draw: the original, then the hardened one if any.

    ``inspect`` reports give their sweep; ``harden`` reports give ``harden.before`` and ``harden.after``;
    ``hardened`` (an ``inspect`` report of the hardened file, or a ``harden`` report) overrides the second.
    Empty for a ``--no-attack`` report.
    """
    original = _sweep_of(report, hardened=False)
    if original is None:
        return []
    second = _sweep_of(hardened, hardened=True) if hardened is not None else None
    if second is None and hardened is None and report.get("command") == "harden":
        second = _sweep_of(report, hardened=True)
    if second is None:
        return [AttackSeries("original", original[0], original[1], _images(original[0]))]
    return [
        AttackSeries("original", original[0], original[1], _images(original[0])),
        AttackSeries("hardened", second[0], second[1], _images(second[0])),
    ]


def _images(fgsm: Sequence[Mapping[str, Any]]) -> int | None:
    return int(fgsm[0]["n"]) if fgsm and fgsm[0].get("n") is not None else None


def has_attack(report: Report) -> bool:
    """Whether the report holds an attack sweep (False for ``inspect --no-attack``)."""
    return _sweep_of(report, hardened=False) is not None


def available_figures(report: Report, hardened: Report | None = None) -> list[str]:
    """Names (keys of :data:`FIGURE_FILES`) of the figures the report has data for, in figure order."""
    names = []
    if report.get("kernels"):
        names.append("kernel_accuracy")
    series = attack_series(report, hardened)
    if series:
        names.append("accuracy_vs_epsilon")
        if any(s.targeting for s in series):
            names.append("targeting")
    if (report.get("harden") or {}).get("candidates"):
        names.append("frontier")
    if report.get("layers"):
        names.append("layers")
    return names


def layers_figure(report: Report) -> Figure:
    """``inspect --layers``: each audited layer's fragile share and worst drop against its depth (nodes from
    the input), one point per layer, in data-flow order."""
    layers = report.get("layers") or []
    if not layers:
        raise FigureUnavailable("the report has no per-layer audit (--layers)")
    fig = _new_figure(7.0, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    depth = [layer["distance_from_input"] for layer in layers]
    share = [100 * layer["fragile_share"] for layer in layers]
    ax.plot(depth, share, "o-", color=FRAGILE_COLOR, lw=1.4, label="fragile share |S| / C_out (%)")
    ax.set_xlabel("depth of the layer (nodes from the image input)")
    ax.set_ylabel("fragile share (%)", color=FRAGILE_COLOR)
    ax.set_ylim(0, 100)
    worst = [
        (d, 100 * layer["worst_drop"])
        for d, layer in zip(depth, layers, strict=True)
        if layer["worst_drop"] is not None
    ]
    if worst:
        right = ax.twinx()
        right.plot([d for d, _ in worst], [w for _, w in worst], "s--", color=NULL_COLOR, lw=1.4)
        right.set_ylabel("worst drop: accuracy points lost by dropping one kernel", color=NULL_COLOR, fontsize=9)
        right.set_ylim(bottom=min(0.0, min(w for _, w in worst)))
        for side in ("top",):
            right.spines[side].set_visible(False)
    ax.set_title(f"{len(layers)} layers: fragile share and worst single-kernel drop against depth", fontsize=10)
    return fig


METHOD_COLORS = {"svd": "#7f8c8d", "jacobian": "#8e44ad", "sensitivity": "#16a085", "adversarial": "#d35400"}


def frontier_figure(report: Report) -> Figure:
    """``harden``: every candidate as (clean, worst-case) accuracy on validation, one colour per method, with
    the original, the budget line and the chosen candidate marked; each method's Pareto frontier joined."""
    h = report.get("harden") or {}
    candidates = h.get("candidates") or []
    if not candidates:
        raise FigureUnavailable("the report has no hardening candidates")
    original = h.get("original_validation") or {}
    fig = _new_figure(7.0, 4.6)
    ax = fig.add_subplot(1, 1, 1)
    _style_axes(ax)
    methods = sorted({c["method"] for c in candidates}, key=list(METHOD_COLORS).index)
    for method in methods:
        points = [(c["val_clean_accuracy"], c["val_worst_accuracy"]) for c in candidates if c["method"] == method]
        color = METHOD_COLORS.get(method, "#34495e")
        ax.scatter(
            [100 * x for x, _ in points], [100 * y for _, y in points], color=color, s=28, label=method, zorder=3
        )
        frontier, best = [], -1.0
        for x, y in sorted(points, key=lambda p: (-p[0], -p[1])):  # from the cleanest down
            if y > best:
                frontier.append((x, y))
                best = y
        if len(frontier) > 1:
            ax.plot([100 * x for x, _ in frontier], [100 * y for _, y in frontier], color=color, lw=1.2, alpha=0.7)
    clean, worst = original.get("clean_accuracy"), original.get("worst_accuracy")
    if clean is not None and worst is not None:
        ax.scatter([100 * clean], [100 * worst], marker="*", s=160, color="black", label="original", zorder=4)
        budget = h.get("clean_budget")
        if budget is not None:
            ax.axvline(100 * (clean - budget), color="black", ls=":", lw=1, label="clean budget")
    chosen = h.get("chosen")
    if chosen:
        ax.scatter(
            [100 * chosen["val_clean_accuracy"]], [100 * chosen["val_worst_accuracy"]], s=180, facecolors="none",
            edgecolors="black", lw=1.6, label="chosen", zorder=5,
        )  # fmt: skip
    ax.set_xlabel("clean accuracy on validation (%)")
    ax.set_ylabel(f"worst-case accuracy at ε = {h.get('audit_epsilon', 0):g} (%)")
    ax.set_title("Hardening candidates: clean vs worst case (FGSM, PGD, transfer)", fontsize=10)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def _plain(text: object, limit: int = 60) -> str:
    """Model-provided text made safe for matplotlib: no mathtext (``$``), bounded length."""
    value = " ".join(str(text).split())
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return value.replace("\\", "\\\\").replace("$", r"\$")


def _layer_name(report: Report) -> str:
    layer = report.get("layer") or {}
    return f"{_plain(layer.get('name', '?'), 40)} ({layer.get('op_type', 'Conv')})"


# ----------------------------------------------------------------------------------------------- drawing


def _new_figure(width: float, height: float) -> Figure:
    require_matplotlib()
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    return fig


def _style_axes(ax: Axes) -> None:
    ax.grid(True, color="#dddddd", linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.tick_params(labelsize=10)


def kernel_accuracy_figure(report: Report) -> Figure:
    """Fig. 1: top-1 accuracy with each kernel of the audited Conv dropped, by kernel index.

    Fragile kernels (S: accuracy below the mean over kernels) are red, null kernels (S') blue; the dashed line
    is the mean over kernels and the grey line the accuracy with nothing dropped. For ``--method taylor``
    without exact scores the figure shows the Taylor importance instead, labelled as an estimate.
    """
    kernels = list(report.get("kernels") or [])
    if not kernels:
        raise FigureUnavailable("the report has no per-kernel scores")
    index = [int(k["index"]) for k in kernels]
    fragile = [bool(k.get("fragile")) for k in kernels]
    exact = all(k.get("accuracy") is not None for k in kernels)
    if exact:
        values = [100 * float(k["accuracy"]) for k in kernels]
        estimated = [k.get("scored_exactly") is False for k in kernels]
        mean = report.get("mean_accuracy")
        mean_value = 100 * float(mean) if mean is not None else sum(values) / len(values)
        base = report.get("baseline_accuracy")
        base_value = 100 * float(base) if base is not None else None
        ylabel = "top-1 accuracy with kernel k dropped (%)"
        mean_label = f"mean over kernels: {mean_value:.1f} %"
    else:
        values = [float(k.get("importance") or 0.0) for k in kernels]
        estimated = [False] * len(kernels)
        mean_value = sum(values) / len(values)
        base_value = None
        ylabel = "Taylor importance of kernel k (estimate)"
        mean_label = f"mean importance: {mean_value:.3g}"

    fig = _new_figure(10, 4.9)
    ax = fig.add_subplot()
    _style_axes(ax)
    many = len(kernels) > 96
    size = 14 if many else 36
    reference = base_value if base_value is not None else mean_value
    ax.vlines(index, [reference] * len(index), values, colors="#b0b0b0", linewidth=0.6 if many else 1.0, zorder=1)
    for is_fragile, color, label in ((True, FRAGILE_COLOR, "S (fragile)"), (False, NULL_COLOR, "S' (null)")):
        xs = [i for i, f in zip(index, fragile, strict=True) if f == is_fragile]
        ys = [v for v, f in zip(values, fragile, strict=True) if f == is_fragile]
        est = [e for e, f in zip(estimated, fragile, strict=True) if f == is_fragile]
        count = len(xs)
        solid = [(x, y) for x, y, e in zip(xs, ys, est, strict=True) if not e]
        hollow = [(x, y) for x, y, e in zip(xs, ys, est, strict=True) if e]
        if solid or not hollow:
            ax.scatter(
                [p[0] for p in solid], [p[1] for p in solid], s=size, color=color, zorder=3,
                label=f"{label}: {count} kernel{'s' if count != 1 else ''}",
            )  # fmt: skip
        if hollow:
            ax.scatter(
                [p[0] for p in hollow], [p[1] for p in hollow], s=size, facecolors="white", edgecolors=color,
                zorder=3, label=f"{label}, estimated (hybrid)",
            )  # fmt: skip
    ax.axhline(mean_value, color="black", linestyle="--", linewidth=1.2, label=mean_label, zorder=2)
    if base_value is not None:
        ax.axhline(base_value, color="#7f7f7f", linewidth=1.2, label=f"no kernel dropped: {base_value:.1f} %", zorder=2)
    ax.set_xlabel(f"kernel index k of {_layer_name(report)}", fontsize=11)
    ax.set_ylabel(ylabel, fontsize=11)
    ax.set_xlim(min(index) - 0.8, max(index) + 0.8)
    from matplotlib.ticker import MaxNLocator

    if len(index) <= 40:
        ax.set_xticks(index)
        ax.tick_params(axis="x", labelsize=9 if len(index) > 24 else 10)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=32))
    lines = [mean_value] + ([base_value] if base_value is not None else [])
    low, high = min(values + lines), max(values + lines)
    pad = max((high - low) * 0.08, 0.5 if exact else 1e-12)
    ax.set_ylim(low - pad, high + pad)
    # Below the axes, so that it never hides a kernel.
    fig.legend(loc="outside lower center", ncols=2 if base_value is None else 4, fontsize=9.5, frameon=False)
    n = (report.get("data") or {}).get("n")
    if report.get("command") == "harden":
        n = (report.get("harden") or {}).get("validation_images", n)
    what = "Accuracy with each first-layer kernel dropped" if exact else "Taylor importance of each first-layer kernel"
    fig.suptitle(f"Fig. 1 — {what}", fontsize=13, fontweight="bold")
    rule = "S: a_k < mean" if exact else "S: importance > mean (estimate)"
    ax.set_title(
        f"{rule}; dropping = zeroing the kernel's weights"
        + (" (channel after BN/activation)" if report.get("drop_mode") == "channel" else "")
        + (f"; {n} images" if n else "")
        + (" (validation part)" if report.get("command") == "harden" else ""),
        fontsize=10,
        color="#444444",
    )
    return fig


def _log_epsilon_axis(ax: Axes, epsilons: Sequence[float]) -> None:
    """A logarithmic ε axis labelled in plain decimals (0.002, 0.005, 0.01) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    decades = math.log10(max(epsilons) / min(epsilons))
    subs = (1.0, 2.0, 3.0, 5.0) if decades < 2 else (1.0, 2.0, 5.0) if decades < 4 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _fgsm_points(series: AttackSeries, positive: bool) -> tuple[list[float], list[float], list[float], list[float]]:
    rows = [e for e in series.fgsm if not positive or float(e["epsilon"]) > 0]
    eps = [float(e["epsilon"]) for e in rows]
    acc = [100 * float(e["accuracy"]) for e in rows]
    lo = [100 * float(e["ci95"][0]) for e in rows]
    hi = [100 * float(e["ci95"][1]) for e in rows]
    return eps, acc, lo, hi


def _series_label(series: AttackSeries, count: int, held_out: bool = False) -> str:
    label = series.label if count > 1 else "model"
    images = "held-out images" if held_out else "images"
    return f"{label} ({series.n} {images})" if series.n else label


def accuracy_vs_epsilon_figure(report: Report, hardened: Report | None = None) -> Figure:
    """Fig. 2: top-1 accuracy under the attack (FGSM; PGD for ``inspect --attack pgd``) vs ε, on a linear (left)
    and a logarithmic (right) ε axis.

    Shaded bands are 95 % Wilson intervals. ε = 0 (clean accuracy) cannot sit on a logarithmic axis: the right
    panel draws it as a dotted horizontal line instead. A ``harden`` report (or ``hardened``) adds the hardened
    model's curve.
    """
    series = attack_series(report, hardened)
    if not series:
        raise FigureUnavailable("the report has no attack sweep (it was run with --no-attack)")
    name = attack_name(report)
    held_out = report.get("command") == "harden"
    fig = _new_figure(10, 4.9)
    linear, logarithmic = fig.subplots(1, 2)
    for ax in (linear, logarithmic):
        _style_axes(ax)
    count = len(series)
    handles = []
    for s in series:
        color, marker, width, z = SERIES_STYLE[s.label]
        style = {"color": color, "marker": marker, "markersize": 4.5, "linewidth": width, "zorder": z}
        label = _series_label(s, count, held_out)
        eps, acc, lo, hi = _fgsm_points(s, positive=False)
        linear.fill_between(eps, lo, hi, color=color, alpha=0.15, linewidth=0)
        (line,) = linear.plot(eps, acc, label=label, **style)
        handles.append(line)
        peps, pacc, plo, phi = _fgsm_points(s, positive=True)
        if peps:
            logarithmic.fill_between(peps, plo, phi, color=color, alpha=0.15, linewidth=0)
            logarithmic.plot(peps, pacc, **style)
        clean = next((100 * float(e["accuracy"]) for e in s.fgsm if float(e["epsilon"]) == 0), None)
        if clean is not None:
            handles.append(
                logarithmic.axhline(
                    clean, color=color, linestyle=":", linewidth=1.4,
                    label=f"{s.label if count > 1 else 'model'} at ε = 0 (clean, right panel): {clean:.1f} %",
                )
            )  # fmt: skip
    for ax in (linear, logarithmic):
        ax.set_ylim(-2, 102)
        ax.set_xlabel(epsilon_label(report), fontsize=11)
        ax.set_ylabel(f"top-1 accuracy under {name} (%)", fontsize=11)
    linear.set_xlim(left=0)
    linear.set_title("linear ε axis", fontsize=11)
    positive = [float(e["epsilon"]) for s in series for e in s.fgsm if float(e["epsilon"]) > 0]
    if positive:
        _log_epsilon_axis(logarithmic, positive)
        logarithmic.set_title("logarithmic ε axis (ε = 0 as a dotted line)", fontsize=11)
    else:
        logarithmic.set_title("logarithmic ε axis", fontsize=11)
        logarithmic.text(0.5, 0.5, "no ε > 0 in the sweep", ha="center", va="center", transform=logarithmic.transAxes)
    # One legend for both panels, below them, so that it never hides a curve.
    fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=9.5, frameon=False)
    fig.suptitle(f"Fig. 2 — Accuracy under {name} vs ε (shaded: 95 % Wilson intervals)", fontsize=13, fontweight="bold")
    return fig


def targeting_figure(report: Report, hardened: Report | None = None) -> Figure:
    """Fig. 3: % of examples whose attack (FGSM; PGD for ``inspect --attack pgd``) moves the fragile kernels'
    outputs more than the null kernels'.

    Solid lines compare raw L2 distances (S_f > S_n, the paper's Algorithm 1); dashed lines compare distances
    divided by each kernel's clean output norm. A ``harden`` report (or ``hardened``) adds the hardened model.
    The ε axis is logarithmic when the sweep spans more than a factor of 20.
    """
    series = [s for s in attack_series(report, hardened) if s.targeting]
    if not series:
        raise FigureUnavailable("the report has no targeting sweep (it was run with --no-attack, or without ε > 0)")
    fig = _new_figure(10, 4.9)
    ax = fig.add_subplot()
    _style_axes(ax)
    count = len(series)
    norm_of = "activation" if targeting_at(report)["site"] == "activation" else "output"
    for s in series:
        color, marker, width, z = SERIES_STYLE[s.label]
        style = {"color": color, "marker": marker, "markersize": 4.5, "zorder": z}
        name = s.label if count > 1 else "model"
        eps = [float(t["epsilon"]) for t in s.targeting]
        raw = [100 * float(t["fraction_attacking_fragile"]) for t in s.targeting]
        normalized = [100 * float(t["fraction_attacking_fragile_normalized"]) for t in s.targeting]
        ax.plot(eps, raw, linewidth=width, label=f"{name}, raw distances", **style)
        ax.plot(
            eps, normalized, linewidth=width * 0.8, linestyle="--", markerfacecolor="white",
            label=f"{name}, distances normalized by the clean {norm_of} norm", **style,
        )  # fmt: skip
    positive = [float(t["epsilon"]) for s in series for t in s.targeting if float(t["epsilon"]) > 0]
    if positive and max(positive) / min(positive) > 20:
        _log_epsilon_axis(ax, positive)
    else:
        ax.set_xlim(left=0)
    ax.set_ylim(-3, 112)
    ax.set_yticks(range(0, 101, 20))
    ax.set_xlabel(epsilon_label(report), fontsize=11)
    ax.set_ylabel("examples attacking S (%)", fontsize=11)
    # Below the axes, so that it never hides a curve.
    fig.legend(loc="outside lower center", fontsize=9.5, frameon=False, ncols=2)
    n = series[0].n
    images = "held-out images" if report.get("command") == "harden" else "images"
    site = targeting_at(report)
    ops = [str(entry).split(":", 1)[0] for entry in site["after"]]
    if site["site"] == "activation":
        what = "activations" + (f" (after {_plain(', '.join(ops), limit=1000)})" if ops else " (= Conv outputs)")
        where = "at the activation"
    else:
        what, where = "Conv outputs", "at the Conv output"
    ax.set_title(
        f"attacks S: {attack_name(report)} moves the {what} of S (fragile) more than those of S' (null), by mean L2 "
        "distance" + (f"; {n} {images}" if n else ""),
        fontsize=10,
        color="#444444",
    )
    fig.suptitle(
        f"Fig. 3 — Adversarial targeting {where}: % of examples attacking S vs ε", fontsize=13, fontweight="bold"
    )
    return fig


# ----------------------------------------------------------------------------------------------- output

_DRAW = {
    "kernel_accuracy": lambda report, hardened: kernel_accuracy_figure(report),
    "accuracy_vs_epsilon": accuracy_vs_epsilon_figure,
    "targeting": targeting_figure,
    "frontier": lambda report, hardened: frontier_figure(report),
    "layers": lambda report, hardened: layers_figure(report),
}


def draw_figure(name: str, report: Report, hardened: Report | None = None) -> Figure:
    """The figure called ``name`` (a key of :data:`FIGURE_FILES`)."""
    if name not in _DRAW:
        raise ValueError(f"unknown figure {name!r}; known: {', '.join(FIGURE_FILES)}")
    return _DRAW[name](report, hardened)


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """The figure as PNG bytes (without the matplotlib version stamp, so equal figures give equal files)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None}, facecolor="white")
    return buffer.getvalue()


def check_plots_dir(directory: str | os.PathLike[str], *, force: bool, names: Iterable[str] | None = None) -> Path:
    """Validate a ``--plots`` folder before any work: not a file, and no figure in it unless ``force``.

    ``names``: the file names the command would write (default: the values of :data:`FIGURE_FILES`).
    """
    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise UsageError(f"--plots {target} is a file; give a folder (it is created if needed)")
    if target.is_dir() and not force:
        files = FIGURE_FILES.values() if names is None else names
        existing = [name for name in files if (target / name).exists()]
        if existing:
            raise UsageError(f"{target / existing[0]} already exists; pass --force to overwrite it")
    return target


def save_figures(
    report: Report, directory: str | os.PathLike[str], hardened: Report | None = None, *, dpi: int = DPI
) -> list[Path]:
    """Write every figure the report has data for as PNG into ``directory`` (created if needed).

    File names are those of :data:`FIGURE_FILES`; each file is written atomically. Returns the paths written,
    in figure order (only Fig. 1 for a ``--no-attack`` report).
    """
    names = available_figures(report, hardened)
    return write_pngs(directory, [(FIGURE_FILES[n], lambda n=n: draw_figure(n, report, hardened)) for n in names], dpi)


def write_pngs(
    directory: str | os.PathLike[str], figures: Sequence[tuple[str, Callable[[], Figure]]], dpi: int = DPI
) -> list[Path]:
    """Draw each (file name, figure maker) and write it as PNG into ``directory`` (created), atomically."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, draw in figures:
        path = target / name
        atomic_write_bytes(path, figure_png(draw(), dpi=dpi))
        written.append(path)
    return written
