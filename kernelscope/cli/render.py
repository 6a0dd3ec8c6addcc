"""Rendering reports to the terminal with rich (the library itself never imports rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from kernelscope.audit import InspectReport
    from kernelscope.harden import HardenReport
    from kernelscope.neurons.analysis import NeuronsReport


def _shape(shape: tuple | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _key_values(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for key, value in rows:
        table.add_row(key, Text(value))  # Text: values like "[preset cifar10]" are not rich markup
    return table


def model_table(report: InspectReport) -> Table:
    """Model summary: file, format, opset, input/output, size."""
    m = report.model
    batch = "dynamic" if m.fixed_batch is None else f"fixed {m.fixed_batch}"
    return _key_values(
        "Model",
        [
            ("file", m.path),
            ("format", f"{m.format}, opset {m.opset}, IR {m.ir_version}, {m.producer}"),
            ("input", f"{m.input.name} {_shape(m.input.shape)} {m.input.dtype} (batch {batch})"),
            (
                "output",
                f"{m.output.name} {_shape(m.output.shape)}" + (f", {m.num_classes} classes" if m.num_classes else ""),
            ),
            ("graph", f"{m.node_count} nodes, {m.parameters:,} parameters, {m.file_bytes / 1e6:.2f} MB"),
        ],
    )


def layer_table(report: InspectReport) -> Table:
    """The audited convolution."""
    layer = report.layer
    source = layer.weight_source
    through = f" via {' <- '.join(source.chain)}" if source.chain else ""
    return _key_values(
        "Audited layer",
        [
            ("node", f"{layer.name} ({layer.op_type}, {layer.distance} node(s) from the input)"),
            (
                "kernels",
                f"{layer.out_channels} x {layer.in_channels // layer.group} x "
                f"{' x '.join(map(str, layer.kernel_shape))}, group {layer.group}, stride {list(layer.strides)}",
            ),
            (
                "weights",
                f"{layer.weight_dtype}, {source.kind} {source.stored_name!r}{through}"
                + (", bias" if layer.has_bias else ", no bias"),
            ),
            ("drop", _drop_description(report)),
        ],
    )


def _drop_description(report: InspectReport) -> str:
    source = report.scoring if report.scoring is not None else report.fast
    site, mode = source.mask_site, source.drop_mode
    meaning = "W[k] = 0, b[k] = 0" if mode == "weights" else "channel k = 0 after BN / bias / activation"
    where = f"applied as a channel mask on {site.tensor!r}"
    if site.passed:
        where += f" after {', '.join(p.split(':', 1)[0] for p in site.passed)}"
    return f"{mode} ({meaning}), {where}"


def data_table(report: InspectReport) -> Table:
    """Data set and preprocessing, with where each preprocessing value came from."""
    d, p = report.data, report.data.preprocessing
    subset = f"{d.n} of {d.available} images" + (f" (seeded subset, seed {d.seed})" if d.n < d.available else "")
    src = p.sources

    def fmt(values: tuple[float, ...]) -> str:
        return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"

    return _key_values(
        "Data",
        [
            ("data", f"{d.name} [{d.split}] from {d.source}"),
            ("images", subset),
            ("scale", f"{p.scale:.6g} [{src.get('scale', '')}]"),
            ("mean / std", f"{fmt(p.mean)} / {fmt(p.std)} [{src.get('mean', '')}]"),
            (
                "input",
                f"{p.layout} {p.size[0]}x{p.size[1]}x{p.channels} {p.input_dtype}"
                f"{' BGR' if p.channel_order == 'bgr' else ''} "
                f"[layout: {src.get('layout', '')}; size: {src.get('size', '')}]",
            ),
        ],
    )


def kernel_table(report: InspectReport, top: int | None = None) -> Table:
    """Per-kernel scores sorted by accuracy, S (fragile) / S' (null) marked."""
    s = report.scoring
    table = Table(
        title=f"Kernels by accuracy with the kernel dropped "
        f"(baseline {s.baseline_accuracy:.2%}, mean {s.mean_accuracy:.2%})",
        title_justify="left",
    )
    # Short headers so the table fits an 80-column terminal; the caption explains them.
    columns = ["k", "set", "acc", "Δ pts", "flips", "✓→✗", "✗→✓", "p Holm", "stable", "‖w‖"]
    for name in columns:
        table.add_column(name, justify="center" if name == "set" else "right", no_wrap=True)
    rows = sorted(zip(s.kernels, report.holm_p_values, strict=True), key=lambda kp: (kp[0].accuracy, kp[0].index))
    shown = rows if top is None else rows[:top]
    for k, holm in shown:
        mark = Text("S", style="bold red") if k.fragile else Text("S'", style="green")
        p_text = "<0.001" if holm < 0.001 else f"{holm:.3f}"
        table.add_row(
            str(k.index),
            mark,
            f"{k.accuracy:.2%}",
            f"{k.delta * 100:+.2f}",
            f"{k.changed_predictions:.1%}",
            str(k.correct_to_wrong),
            str(k.wrong_to_correct),
            Text(p_text, style="bold" if holm < 0.05 else "dim"),
            f"{k.split_stability:.0%}",
            f"{k.weight_norm:.3g}",
        )
    caption = (
        "acc: accuracy with kernel k dropped; flips: predictions changed; ✓→✗ / ✗→✓: images it breaks / fixes; "
        "p Holm: exact McNemar vs baseline, Holm-adjusted; stable: bootstrap share on the same side"
    )
    if top is not None and len(rows) > top:
        caption = f"{len(rows) - top} more kernel(s) not shown (--top). " + caption
    table.caption = caption
    return table


def attack_table(report: InspectReport) -> Table | None:
    """Accuracy under the attack (FGSM or PGD) per ε with its 95 % interval, and the targeting fractions."""
    attack = report.attack
    if attack is None:
        return None
    sweep = attack.sweep
    mirror = attack.mirror
    name = "FGSM sweep" if sweep.pgd is None else f"{sweep.pgd.describe()} sweep"
    table = Table(
        title=f"{name} ({attack.epsilon_source}; ε in [0, 1] pixel units; mirror parity "
        f"{mirror.relative_diff:.1e} <= {mirror.tolerance:g})",
        title_justify="left",
    )
    for name in ("ε", "accuracy", "95% CI", "attacks S (raw)", "attacks S (normalized)"):
        table.add_column(name, justify="right")
    targeting = {t.epsilon: t for t in sweep.targeting}
    for entry in sweep.accuracy:
        t = targeting.get(entry.epsilon)
        table.add_row(
            f"{entry.epsilon:g}",
            f"{entry.accuracy:.2%}",
            f"{entry.ci95[0]:.1%} – {entry.ci95[1]:.1%}",
            f"{t.fraction:.1%}" if t else "–",
            f"{t.fraction_normalized:.1%}" if t else "–",
        )
    if sweep.targeting:
        site = attack.targeting_site
        table.caption = _targeting_caption(
            attack.targeting_at, site.tensor if site else None, site.passed if site else ()
        )
    return table


def _targeting_caption(at: str, tensor: str | None, after: tuple[str, ...] | list[str]) -> str:
    """Which tensor the "attacks S" columns compared, and what that implies for their dependence on ε."""
    from kernelscope.targeting import site_description

    text = f"attacks S: mean L2 change over S > over S' of {site_description(at, tensor, after)} (--targeting-at {at})"
    if at == "conv":
        text += "; linear in the perturbation, so under FGSM it changes with ε only through clipping at the bounds"
    return text


def importance_table(report: InspectReport, top: int | None = None) -> Table:
    """Kernels ranked by the fast scorer (an estimate, and labelled as one)."""
    fast = report.fast
    label = "Taylor ESTIMATE" if fast.method == "taylor" else "hybrid (Taylor screen + exact where in doubt)"
    table = Table(title=f"Kernels by importance, {label}", title_justify="left", min_width=76)
    columns = ["k", "set", "importance"] + (["acc", "exact"] if fast.accuracies is not None else [])
    for name in columns:
        table.add_column(name, justify="center" if name in ("set", "exact") else "right", no_wrap=True)
    order = sorted(range(len(fast.importance)), key=lambda k: (-fast.importance[k], k))
    fragile = set(fast.fragile)
    for k in order if top is None else order[:top]:
        mark = Text("S", style="bold red") if k in fragile else Text("S'", style="green")
        row = [str(k), mark, f"{fast.importance[k]:.4g}"]
        if fast.accuracies is not None:
            row += [f"{fast.accuracies[k]:.2%}", "yes" if k in fast.exact_kernels else "est."]
        table.add_row(*row)
    caption = "importance: mean |first-order change of the loss| when the kernel's channel is zeroed"
    if fast.agreement is not None:
        caption += (
            f"; vs exact: Spearman {fast.agreement.spearman:.3f}, same side for {fast.agreement.split_agreement:.0%}"
        )
    table.caption = caption
    return table


def verdict_panel(report: InspectReport) -> Panel:
    """The one-paragraph verdict plus warnings."""
    body = [Text(report.verdict)]
    for warning in report.warnings:
        body.append(Text(f"⚠ {warning}", style="yellow"))
    body.append(Text(f"S (fragile): {report.fragile}", style="red"))
    body.append(Text(f"S' (null):   {report.null}", style="green"))
    return Panel(Group(*body), title="Verdict", title_align="left")


def render_inspect(console: Console, report: InspectReport, top: int | None = None, quiet: bool = False) -> None:
    """Print the whole ``inspect`` report."""
    if quiet:
        console.print(report.verdict, soft_wrap=True)
        return
    console.print(model_table(report))
    console.print()
    console.print(layer_table(report))
    console.print()
    console.print(data_table(report))
    console.print()
    if report.fast is not None:
        console.print(importance_table(report, top))
        console.print()
    if report.scoring is not None:
        console.print(kernel_table(report, top))
    table = attack_table(report)
    if table is not None:
        console.print()
        console.print(table)
    timing, scoring = report.timings, report.scoring
    if scoring is not None:
        console.print(
            f"scored {len(scoring.kernels) + 1} variants x {scoring.n_images} images in "
            f"{timing.get('scoring', 0):.2f} s ({timing.get('variant_images_per_second', 0):,.0f} variant-images/s, "
            f"{scoring.plan.variants_per_run} variant(s) x {scoring.plan.images_per_run} images per run; "
            f"{scoring.plan.mechanism_note or scoring.plan.mechanism})",
            style="dim",
            markup=False,
        )
    if report.fast is not None:
        console.print(f"{report.fast.method} scoring took {report.fast.seconds:.2f} s", style="dim", markup=False)
    render_devices(console, report.devices)
    if report.layers is not None:
        console.print()
        console.print(layers_table(report))
        console.print()
        console.print(network_table(report))
    console.print(verdict_panel(report))


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal; "–" when there is none."""
    return "–" if value is None else f"{value:.1%}"


def _audit_epsilon_index(report: InspectReport) -> int | None:
    """Which ε of the sweep the per-layer targeting column shows: the verdict's (the middle one)."""
    first = report.layers[0].targeting if report.layers else []
    return len(first) // 2 if first else None


def layers_table(report: InspectReport) -> Table:
    """One row per audited layer (``--layers``): kernels, fragile share, drops and targeting."""
    at = _audit_epsilon_index(report)
    eps = report.layers[0].targeting[at].epsilon if at is not None else None
    table = Table(title=f"Layers ({len(report.layers)}, in data-flow order)", title_justify="left")
    for name in ("layer", "depth", "kernels", "fragile", "share", "mean drop", "worst drop (kernel)"):
        table.add_column(name, justify="left" if name == "layer" else "right", overflow="fold")
    if eps is not None:
        table.add_column(f"attacks S at ε={eps:g}", justify="right")
        table.add_column("normalized", justify="right")
    for audit in report.layers:
        worst = "–" if audit.worst_drop is None else f"{audit.worst_drop * 100:+.1f} pts ({audit.worst_kernel})"
        mean = "–" if audit.mean_drop is None else f"{audit.mean_drop * 100:+.2f} pts"
        row = [
            audit.layer.name, str(audit.layer.distance), str(audit.layer.out_channels), str(len(audit.fragile)),
            f"{audit.fragile_share:.0%}", mean, worst,
        ]  # fmt: skip
        if eps is not None:
            t = audit.targeting[at] if audit.targeting else None
            row += [pct(t.fraction if t else None), pct(t.fraction_normalized if t else None)]
        table.add_row(*row)
    table.caption = (
        "drop: baseline accuracy minus accuracy with one kernel dropped (points); depth: nodes from the input"
    )
    return table


def network_table(report: InspectReport, count: int = 10) -> Table:
    """The kernels whose drop costs most, across every audited layer."""
    from kernelscope.layers import most_damaging

    table = Table(title=f"Most damaging kernels network-wide (top {count})", title_justify="left")
    for name in ("layer", "kernel", "accuracy", "drop"):
        table.add_column(name, justify="left" if name == "layer" else "right", overflow="fold")
    for audit, kernel, drop in most_damaging(report.layers, count):
        table.add_row(audit.layer.name, str(kernel), f"{audit.accuracies[kernel]:.1%}", f"{drop * 100:+.1f} pts")
    return table


def render_harden(console: Console, report: HardenReport, quiet: bool = False) -> None:
    """Print the ``harden`` report: search, before/after, verdict."""
    if quiet:
        console.print(report.verdict, soft_wrap=True)
        return
    inputs = report.inputs
    console.print(
        _key_values(
            "Harden",
            [
                ("model", f"{inputs.model.path} ({inputs.model.format})"),
                ("layer", f"{inputs.layer.name} ({inputs.layer.op_type}, {inputs.layer.out_channels} kernels)"),
                (
                    "data",
                    f"{report.n_validation} validation + {report.n_evaluation} evaluation images from "
                    f"{inputs.data.dataset.source}",
                ),
                ("split", f"S (fragile) {report.scoring.fragile}; S' (null) {report.scoring.null} (on validation)"),
                (
                    "search",
                    f"method {report.method}; candidates ranked by worst-case accuracy at ε = "
                    f"{report.audit_epsilon:g} within a {100 * report.clean_budget:g}-point clean budget",
                ),
                ("attacks", report.attacks),
                ("devices", devices_text(report.devices)),
            ],
        )
    )
    console.print()
    console.print(_candidates_table(report))
    console.print()
    worst = _worst_case_table(report)
    if worst is not None:
        console.print(worst)
        console.print()
    table = Table(title=f"Before / after on {report.n_evaluation} held-out images", title_justify="left")
    if report.before.targeting:
        from kernelscope.robustness import targeting_site

        at = report.before.targeting[0].site
        site = targeting_site(report.inputs.model.proto, report.inputs.layer, at)
        table.caption = _targeting_caption(at, site.tensor, site.passed)
    for name in ("ε", "accuracy before", "after", "attacks S before", "after", "normalized before", "after"):
        table.add_column(name, justify="right", no_wrap=True)
    after_fgsm = {e.epsilon: e for e in report.after.fgsm} if report.after else {}
    before_t = {t.epsilon: t for t in report.before.targeting}
    after_t = {t.epsilon: t for t in report.after.targeting} if report.after else {}

    for e in report.before.fgsm:
        a, tb, ta = after_fgsm.get(e.epsilon), before_t.get(e.epsilon), after_t.get(e.epsilon)
        table.add_row(
            f"{e.epsilon:g}",
            pct(e.accuracy),
            pct(a.accuracy if a else None),
            pct(tb.fraction if tb else None),
            pct(ta.fraction if ta else None),
            pct(tb.fraction_normalized if tb else None),
            pct(ta.fraction_normalized if ta else None),
        )
    console.print(table)
    body = [Text(report.verdict)]
    for warning in report.warnings:
        body.append(Text(f"⚠ {warning}", style="yellow"))
    if report.written:
        line = f"wrote {', '.join(report.written)}"
        ts = report.torchscript_write
        if ts is not None:
            keys = sorted({key for update in ts.updates for key in update.parameters})
            line += (
                f" (TorchScript: {len(keys)} parameter(s) of the module updated; torch on it matches onnxruntime on "
                f"the hardened graph on {ts.parity_images} images, largest relative difference "
                f"{ts.parity_relative_diff:.2g})"
            )
        body.append(Text(line, style="green"))
    console.print(Panel(Group(*body), title="Verdict", title_align="left"))


def _candidates_table(report: HardenReport) -> Table:
    """Every candidate as (clean, worst case) with the per-attack accuracies: the frontier, on validation."""
    title = (
        f"Candidates on {report.n_validation} validation images at ε = {report.audit_epsilon:g} (original: clean "
        f"{report.original_validation[0]:.2%}, worst case {report.original_validation_worst or 0:.2%})"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("candidate", overflow="fold", ratio=1)
    for name in ("clean", "FGSM", "PGD", "transfer", "worst", "budget"):
        table.add_column(name, justify="right", no_wrap=True)
    for c in report.candidates:
        style = "bold green" if c is report.chosen else ("dim" if c.no_op else None)
        table.add_row(
            f"{c.method}: {c.label}" + (" (no-op)" if c.no_op else ""),
            f"{c.val_clean_accuracy:.1%}",
            f"{c.val_fgsm_accuracy:.1%}",
            f"{c.val_pgd_accuracy:.1%}",
            f"{c.val_transfer_accuracy:.1%}",
            f"{c.val_worst_accuracy:.1%}",
            "in" if c.within_budget else "out",
            style=style,
        )
    table.caption = "The chosen candidate is in bold green; worst = right clean and under FGSM, PGD and transfer."
    return table


def _worst_case_table(report: HardenReport) -> Table | None:
    """Held-out before / after per attack, with McNemar's p and the interval of the difference."""
    before = report.before.robustness
    if before is None:
        return None
    after = report.after.robustness if report.after else None
    table = Table(
        title=f"Worst case on {report.n_evaluation} held-out images at ε = {report.audit_epsilon:g}",
        title_justify="left",
    )
    for name in ("attack", "before", "after", "change", "95 % CI", "McNemar p", ""):
        table.add_column(name, justify="right" if name not in ("attack", "") else "left", no_wrap=True)
    names = {"clean": "clean", "fgsm": "FGSM", "pgd": "PGD", "transfer": "transfer", "worst": "worst case"}
    for attack in before.attacks:
        comparison = report.change.comparisons.get(attack) if report.change else None
        if comparison is None or after is None:
            table.add_row(names[attack], f"{before.accuracy(attack):.1%}", "–", "", "", "", "")
            continue
        low, high = comparison.ci95
        table.add_row(
            names[attack],
            f"{before.accuracy(attack):.1%}",
            f"{after.accuracy(attack):.1%}",
            f"{100 * comparison.difference:+.1f}",
            f"{100 * low:+.1f} to {100 * high:+.1f}",
            f"{comparison.p_value:.3g}",
            "significant" if comparison.significant else "not significant",
        )
    table.caption = (
        "Change in points (after − before) on the same images; p: exact McNemar test on the discordant images."
    )
    return table


def _size(value: float) -> str:
    return "∞" if not np.isfinite(value) else f"{value:.3g}"


def neurons_tables(report: NeuronsReport, top: int = 10) -> list[Table]:
    """The final linear layer, its most sensitive neurons, and the attack comparison."""
    head, check, sens = report.head, report.check, report.sensitivity
    rows = [
        ("layer", f"{head.name} ({head.op_type}): {head.features} features -> {head.classes} classes"),
        ("features", repr(head.feature_tensor) + "".join(f" <- {op}" for op in head.feature_source)),
        ("relu features", "yes (Δ kept to f_i + Δ >= 0)" if head.relu_features else "no (Δ unconstrained)"),
        ("after", ", ".join(head.after) or "nothing (the layer's output is the scored output)"),
        ("check", f"W f + b vs onnxruntime {check.weights_relative_diff:.1e}; same argmax on "
         f"{check.prediction_agreement:.1%} of images"),
    ]  # fmt: skip
    if check.mirror_feature_relative_diff is not None:
        rows.append(("mirror", f"features and logits vs onnxruntime {check.mirror_feature_relative_diff:.1e}"))
    tables = [_key_values("Final linear layer", rows)]
    n = report.data.n
    table = Table(title=f"Most sensitive neurons ({n} images, clean accuracy {report.clean_accuracy:.2%})",
                  title_justify="left", min_width=76)  # fmt: skip
    # Short headers so the table fits an 80-column terminal; the caption explains them.
    for name in ("i", "first on", "med |Δ|", "scaled", "flips", "μ", "σ"):
        table.add_column(name, justify="right", no_wrap=True)
    for index in sens.order[:top]:
        s = sens.neurons[index]
        table.add_row(
            str(s.index),
            f"{s.times_most_sensitive} ({s.times_most_sensitive / n:.0%})" if n else "0",
            _size(s.median_abs_delta),
            f"{s.mean_scaled_delta:.3g}" if np.isfinite(s.mean_scaled_delta) else "–",
            f"{s.flippable / n:.0%}" if n else "–",
            f"{s.feature_mean:.3g}",
            f"{s.feature_std:.3g}",
        )
    table.caption = (
        "first on: images on which neuron i ranks first by (|Δ| − μ)/σ; Δ: the change of that feature alone that "
        "ties the prediction with another class; med |Δ|: its median; scaled: mean (|Δ| − μ)/σ; flips: images "
        "where such a change exists; μ, σ: the feature's mean and std"
    )
    tables.append(table)
    single, pgd = report.single_neuron, report.pgd
    if single is not None and pgd is not None:
        s = report.settings
        norm = "L2" if s.pgd.norm == "l2" else "L∞"
        attack = Table(
            title=f"Single-neuron attack vs PGD ({norm} ε = {s.epsilon:g}, {s.pgd.steps} steps of "
            f"{s.pgd.step_for(s.epsilon):.3g}, λ = {s.lam:g})",
            title_justify="left",
            min_width=76,
        )
        for name in ("attack", "success", "95% CI", "images"):
            attack.add_column(name, justify="right", no_wrap=True)
        for r in single.rates:
            attack.add_row(f"best of {r.k} neuron(s)", f"{r.rate:.1%}", f"{r.ci95[0]:.1%} – {r.ci95[1]:.1%}", str(r.n))
        attack.add_row("untargeted PGD", f"{pgd.rate:.1%}", f"{pgd.ci95[0]:.1%} – {pgd.ci95[1]:.1%}", str(pgd.n),
                       style="bold")  # fmt: skip
        attack.caption = (
            f"success: the deployed model's prediction changes; {single.attacks} single-neuron attacks run, "
            f"{single.moved_toward_target} of them moved the neuron toward its target"
        )
        tables.append(attack)
    return tables


def devices_text(devices: dict[str, str | None]) -> str:
    """Where each side ran, e.g. "onnxruntime cpu, torch cuda" (sides that did not run left out)."""
    return ", ".join(f"{side} {where}" for side, where in devices.items() if where)


def render_devices(console: Console, devices: dict[str, str | None]) -> None:
    """One dim line naming where each side ran, e.g. "devices: onnxruntime cpu, torch cuda"."""
    if text := devices_text(devices):
        console.print(f"devices: {text}", style="dim", markup=False)


def render_neurons(console: Console, report: NeuronsReport, top: int = 10, quiet: bool = False) -> None:
    """Print the ``neurons`` report."""
    if quiet:
        console.print(report.verdict, soft_wrap=True)
        return
    console.print(model_table(report))  # type: ignore[arg-type]  # uses only .model
    console.print()
    console.print(data_table(report))  # type: ignore[arg-type]  # uses only .data
    for table in neurons_tables(report, top):
        console.print()
        console.print(table)
    render_devices(console, report.devices)
    body = [Text(report.verdict)]
    body += [Text(f"⚠ {warning}", style="yellow") for warning in report.warnings]
    console.print(Panel(Group(*body), title="Verdict", title_align="left"))


def render_gates(console: Console, outcomes: list) -> None:
    """The gates and their outcome (printed with --quiet too: a CI log wants them)."""
    if not outcomes:
        return
    table = Table(title="Gates", title_justify="left")
    for name in ("gate", "measured", "must be", "outcome"):
        table.add_column(name, justify="right" if name == "measured" else "left")
    for o in outcomes:
        sign = "≤" if o.gate.upper_bound or o.kind == "max-drop" else "≥"
        what = ("rise " if o.gate.upper_bound else "drop ") if o.kind == "max-drop" else ""
        table.add_row(
            o.gate.name,
            "not measured" if o.value is None else f"{what}{o.value:.6g}",
            f"{what}{sign} {o.gate.threshold:g}",
            Text("pass", style="green") if o.passed else Text("FAIL", style="bold red"),
        )
    console.print(table)


def render_compare(console: Console, doc: dict, quiet: bool = False) -> None:
    """Print the ``compare`` report: the inputs, each kernel's side in each, the verdict."""
    from kernelscope.compare import common_epsilons, verdict

    if quiet:
        console.print(verdict(doc), soft_wrap=True)
        return
    shared = [e for e in common_epsilons(doc) if e > 0]
    inputs = Table(title="Inputs, in order", title_justify="left")
    for name in ("#", "input", "source", "baseline", "fragile", *[f"ε={e:g}" for e in shared]):
        inputs.add_column(name, justify="left" if name in ("input", "source") else "right")
    for i, item in enumerate(doc["inputs"]):
        by_eps = {e["epsilon"]: e["accuracy"] for e in item["sweep"]}
        inputs.add_row(
            str(i + 1), Text(item["label"]), item["source"],
            "–" if item["baseline_accuracy"] is None else f"{item['baseline_accuracy']:.2%}",
            f"{len(item['fragile'])} ({item['fragile_share']:.0%})",
            *["–" if by_eps.get(e) is None else f"{by_eps[e]:.2%}" for e in shared],
        )  # fmt: skip
    attacks = sorted({str(i["attack"]).upper() for i in doc["inputs"] if i["attack"]})
    if shared:
        inputs.caption = f"ε columns: accuracy under {', '.join(attacks)} at each ε every input measured"
    console.print(inputs)
    console.print()
    kernels = Table(title="Kernels: side in each input (S fragile, S' null) and accuracy with it dropped",
                    title_justify="left")  # fmt: skip
    kernels.add_column("k", justify="right")
    kernels.add_column("fragile in")
    for i in range(len(doc["inputs"])):
        kernels.add_column(f"#{i + 1}", justify="right")
    always, some = set(doc["fragile_in_all"]), set(doc["fragile_in_some"])
    for kernel in doc["kernels"]:
        k = kernel["index"]
        group = "all" if k in always else "some" if k in some else "none"
        cells = [
            Text(f"{side:<2} {'–' if acc is None else f'{acc:.2%}'}", style="red" if side == "S" else "")
            for side, acc in zip(kernel["sides"], kernel["accuracies"], strict=True)
        ]
        kernels.add_row(str(k), Text(group, style="bold red" if group == "all" else ""), *cells)
    console.print(kernels)
    console.print(Panel(Text(verdict(doc)), title="Verdict", title_align="left"))
