"""Self-contained HTML reports: one file, inline CSS, figures embedded as base64 PNG data URIs.

The pages are built from the JSON report document (:mod:`kernelscope.report.json_report`), like the figures of
:mod:`kernelscope.report.plots`, so a page can also be rebuilt from a saved ``--json`` file::

    import json
    from pathlib import Path
    from kernelscope.report.html import report_page

    Path("r.html").write_text(report_page(json.loads(Path("r.json").read_text())), encoding="utf-8")

Building blocks, for other pages (e.g. another command's report)
----------------------------------------------------------------
A page is a title plus a list of :class:`Section`; a section holds blocks, rendered top to bottom:

- :class:`KeyValues` -- a two-column summary table (``rows=[("file", "model.onnx"), ...]``),
- :class:`Table` -- a table with a header row; cells are strings or :class:`Cell` (a CSS class such as
  ``"fragile"``, ``"null"``, ``"good"``, ``"bad"`` or ``"muted"``); numeric columns are right-aligned,
- :class:`Image` -- a PNG (bytes) with alt text and a caption; :func:`figure_image` makes one from a matplotlib
  figure,
- :class:`Paragraph` -- text, with ``kind`` ``"text"``, ``"note"``, ``"warning"`` or ``"verdict"``,
- :class:`Row` -- blocks side by side (wrapping on narrow screens), e.g. three :class:`KeyValues`.

:func:`render_page(title, sections, subtitle=None, footer=None) <render_page>` returns the HTML text. Every string
is escaped with :func:`html.escape` when rendered -- model names and metadata come from untrusted files -- so
callers pass plain text, never markup. Example::

    page = render_page("My report", [
        Section("Summary", [KeyValues([("model", name)], caption="Model")]),
        Section("Figures", [figure_image(fig, alt="accuracy vs ε", caption="Fig. 2")]),
    ])

:func:`inspect_page`, :func:`harden_page` and :func:`report_page` build the pages of ``inspect --html`` and
``harden --html``.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kernelscope.report import plots
from kernelscope.targeting import LINEAR_NOTE, site_description

if TYPE_CHECKING:
    from matplotlib.figure import Figure

Report = Mapping[str, Any]


# ----------------------------------------------------------------------------------------------- blocks


@dataclass(frozen=True)
class Cell:
    """A table cell with a CSS class (``fragile``, ``null``, ``good``, ``bad``, ``muted``, ``strong``)."""

    text: str
    css: str | None = None


@dataclass(frozen=True)
class Table:
    """A table with a header row. ``numeric`` columns (by index) are right-aligned; default: all but the first."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str | Cell]]
    caption: str | None = None
    note: str | None = None
    numeric: Sequence[int] | None = None
    collapsed: bool = False  # inside a closed <details>, for long tables


@dataclass(frozen=True)
class KeyValues:
    """A two-column summary: key, value."""

    rows: Sequence[tuple[str, str]]
    caption: str | None = None


@dataclass(frozen=True)
class Image:
    """A PNG embedded as a data URI."""

    png: bytes
    alt: str
    caption: str | None = None


@dataclass(frozen=True)
class Paragraph:
    """Text; ``kind`` is ``text``, ``note``, ``warning`` or ``verdict``."""

    text: str
    kind: str = "text"


@dataclass(frozen=True)
class Row:
    """Blocks side by side (they wrap when the window is narrow)."""

    blocks: Sequence[Block]


Block = Table | KeyValues | Image | Paragraph | Row


@dataclass(frozen=True)
class Section:
    """A titled part of the page."""

    title: str
    blocks: Sequence[Block] = field(default_factory=list)
    anchor: str | None = None


def figure_image(fig: Figure, alt: str, caption: str | None = None, dpi: int = plots.DPI) -> Image:
    """An :class:`Image` from a matplotlib figure (rendered to PNG)."""
    return Image(plots.figure_png(fig, dpi=dpi), alt=alt, caption=caption)


# ----------------------------------------------------------------------------------------------- rendering

_CSS = """
:root { --fg: #1d2733; --muted: #5b6673; --line: #d9dee4; --head: #f3f5f8; --accent: #1f3b73;
        --fragile: #c0392b; --null: #2e6da4; --warn-bg: #fff6e0; --warn: #8a5a00; }
* { box-sizing: border-box; }
body { margin: 0; background: #fafbfc; color: var(--fg);
       font: 15px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, "DejaVu Sans", sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 32px 48px; background: #fff; min-height: 100vh;
       box-shadow: 0 0 0 1px var(--line); }
header h1 { font-size: 26px; margin: 0 0 4px; color: var(--accent); }
header .subtitle { color: var(--muted); margin: 0 0 12px; overflow-wrap: anywhere; }
nav { font-size: 14px; margin: 8px 0 4px; padding: 8px 0; border-top: 1px solid var(--line);
      border-bottom: 1px solid var(--line); }
nav a { color: var(--accent); text-decoration: none; margin-right: 18px; white-space: nowrap; }
section { margin-top: 30px; }
h2 { font-size: 20px; margin: 0 0 12px; padding-bottom: 4px; border-bottom: 2px solid var(--accent); }
p { margin: 8px 0; max-width: 78ch; }
p.note { color: var(--muted); font-size: 14px; }
p.warning { background: var(--warn-bg); color: var(--warn); padding: 6px 10px; border-radius: 4px;
            border-left: 4px solid #e0a100; }
p.verdict { font-size: 16px; background: #eef3fa; padding: 12px 16px; border-radius: 6px;
            border-left: 5px solid var(--accent); max-width: none; }
figure { margin: 16px 0 8px; }
figure img { display: block; width: 100%; max-width: 1050px; height: auto; border: 1px solid var(--line);
             border-radius: 4px; background: #fff; }
figcaption { color: var(--muted); font-size: 14px; margin-top: 6px; max-width: 100ch; }
.row { display: flex; flex-wrap: wrap; gap: 16px 28px; align-items: flex-start; }
.row > * { flex: 1 1 300px; min-width: 0; }
.table-wrap { overflow-x: auto; margin: 0 0 10px; }
table { border-collapse: collapse; font-size: 14px; font-variant-numeric: tabular-nums; }
caption, .table-title { text-align: left; font-weight: 600; padding: 0 0 6px; color: var(--fg); }
.table-title { margin-top: 18px; }
th, td { padding: 4px 10px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { background: var(--head); font-weight: 600; text-align: left; white-space: nowrap; }
td.num, th.num { text-align: right; white-space: nowrap; }
table.kv th { background: none; color: var(--muted); font-weight: 600; padding-left: 0; }
table.kv td { overflow-wrap: anywhere; }
td.fragile { color: var(--fragile); font-weight: 700; }
td.null { color: var(--null); }
td.good { color: #1e7b34; font-weight: 600; }
td.bad { color: var(--fragile); font-weight: 600; }
td.muted { color: var(--muted); }
td.strong { font-weight: 700; }
.table-note { color: var(--muted); font-size: 13px; margin: 4px 0 0; max-width: 100ch; }
details > summary { cursor: pointer; color: var(--accent); margin: 8px 0; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; border-top: 1px solid var(--line); padding-top: 10px; }
"""

_CSS_CLASSES = {"fragile", "null", "good", "bad", "muted", "strong"}


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"


def _render_table(table: Table) -> str:
    numeric = set(table.numeric) if table.numeric is not None else set(range(1, len(table.headers)))
    head = "".join(
        f'<th scope="col"{" class=num" if i in numeric else ""}>{_e(h)}</th>' for i, h in enumerate(table.headers)
    )
    body = []
    for row in table.rows:
        cells = []
        for i, cell in enumerate(row):
            text, css = (cell.text, cell.css) if isinstance(cell, Cell) else (cell, None)
            classes = [c for c in (("num" if i in numeric else None), css) if c in _CSS_CLASSES | {"num"}]
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{_e(text)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    # The title sits above the table rather than in <caption>, which would wrap at the width of a narrow table.
    title = f'<div class="table-title">{_e(table.caption)}</div>' if table.caption else ""
    label = f' aria-label="{_e(table.caption)}"' if table.caption else ""
    out = (
        f'{title}<div class="table-wrap"><table{label}><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )
    if table.note:
        out += f'<p class="table-note">{_e(table.note)}</p>'
    if table.collapsed:
        summary = f"{table.caption or 'Table'} ({len(table.rows)} rows): show"
        out = f"<details><summary>{_e(summary)}</summary>{out}</details>"
    return out


def _render_key_values(kv: KeyValues) -> str:
    rows = "".join(f'<tr><th scope="row">{_e(k)}</th><td>{_e(v)}</td></tr>' for k, v in kv.rows)
    caption = f"<caption>{_e(kv.caption)}</caption>" if kv.caption else ""
    return f'<div class="table-wrap"><table class="kv">{caption}<tbody>{rows}</tbody></table></div>'


def _render_image(image: Image) -> str:
    data = base64.b64encode(image.png).decode("ascii")
    caption = f"<figcaption>{_e(image.caption)}</figcaption>" if image.caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_e(image.alt)}">{caption}</figure>'


def _render_block(block: Block) -> str:
    if isinstance(block, Table):
        return _render_table(block)
    if isinstance(block, KeyValues):
        return _render_key_values(block)
    if isinstance(block, Image):
        return _render_image(block)
    if isinstance(block, Paragraph):
        kind = block.kind if block.kind in ("note", "warning", "verdict") else None
        return f'<p class="{kind}">{_e(block.text)}</p>' if kind else f"<p>{_e(block.text)}</p>"
    if isinstance(block, Row):
        return '<div class="row">' + "".join(f"<div>{_render_block(b)}</div>" for b in block.blocks) + "</div>"
    raise TypeError(f"not a page block: {type(block).__name__}")


def render_page(
    title: str, sections: Sequence[Section], *, subtitle: str | None = None, footer: str | None = None
) -> str:
    """One self-contained HTML document: inline CSS, embedded images, a table of contents; all text escaped."""
    anchors = []
    used: set[str] = set()
    for section in sections:
        anchor = section.anchor or _anchor(section.title)
        while anchor in used:
            anchor += "-"
        used.add(anchor)
        anchors.append(anchor)
    nav = "".join(f'<a href="#{_e(a)}">{_e(s.title)}</a>' for s, a in zip(sections, anchors, strict=True))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body><main>",
        f"<header><h1>{_e(title)}</h1>" + (f'<p class="subtitle">{_e(subtitle)}</p>' if subtitle else "") + "</header>",
        f"<nav>{nav}</nav>" if len(sections) > 1 else "",
    ]
    for section, anchor in zip(sections, anchors, strict=True):
        blocks = "".join(_render_block(b) for b in section.blocks)
        parts.append(f'<section id="{_e(anchor)}"><h2>{_e(section.title)}</h2>{blocks}</section>')
    if footer:
        parts.append(f"<footer>{_e(footer)}</footer>")
    parts.append("</main></body></html>\n")
    return "\n".join(p for p in parts if p)


# ----------------------------------------------------------------------------------------------- formatting


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


def _shape(shape: Sequence[Any] | None) -> str:
    if shape is None:
        return "?"
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _numbers(values: Sequence[float] | None) -> str:
    return "–" if values is None else "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _kernel_list(indices: Sequence[int]) -> str:
    return ", ".join(str(i) for i in indices) if indices else "none"


# ----------------------------------------------------------------------------------------------- sections


def summary_blocks(report: Report) -> list[Block]:
    """Model, audited layer and data/preprocessing as three side-by-side summaries."""
    m, layer, d = report.get("model") or {}, report.get("layer") or {}, report.get("data") or {}
    pre = d.get("preprocessing") or {}
    sources = pre.get("sources") or {}
    batch = "dynamic" if m.get("fixed_batch") is None else f"fixed {m.get('fixed_batch')}"
    inp, out = m.get("input") or {}, m.get("output") or {}
    model_rows = [
        ("file", str(m.get("path", "?"))),
        ("format", f"{m.get('format', '?')}, opset {m.get('opset', '?')}, IR {m.get('ir_version', '?')}"),
        ("producer", str(m.get("producer") or "–")),
        ("input", f"{inp.get('name', '?')} {_shape(inp.get('shape'))} {inp.get('dtype', '')} (batch {batch})"),
        (
            "output",
            f"{out.get('name', '?')} {_shape(out.get('shape'))}"
            + (f", {m['num_classes']} classes" if m.get("num_classes") else ""),
        ),
        ("graph", f"{m.get('nodes', '?')} nodes, {m.get('parameters', 0):,} parameters, "
         f"{(m.get('file_bytes') or 0) / 1e6:.2f} MB"),
    ]  # fmt: skip
    source = layer.get("weight_source") or {}
    through = source.get("through") or []
    kernel_shape = layer.get("kernel_shape") or []
    group = layer.get("group") or 1
    layer_rows = [
        ("node", f"{layer.get('name', '?')} ({layer.get('op_type', '?')})"),
        ("from input", f"{layer.get('distance_from_input', '?')} node(s)"),
        (
            "kernels",
            f"{layer.get('out_channels', '?')} × {(layer.get('in_channels') or 0) // group} × "
            + " × ".join(str(k) for k in kernel_shape),
        ),
        ("geometry", f"group {group}, strides {layer.get('strides')}, dilations {layer.get('dilations')}"),
        (
            "weights",
            f"{layer.get('weight_dtype', '?')}, {source.get('kind', '?')} {source.get('tensor', '?')}"
            + (f" via {' <- '.join(through)}" if through else "")
            + (", bias" if layer.get("has_bias") else ", no bias"),
        ),
        ("drop", _drop_text(report)),
    ]
    subset = f"{d.get('n', '?')} of {d.get('available', '?')} images"
    if d.get("n") is not None and d.get("available") is not None and d["n"] < d["available"]:
        subset += f" (seeded subset, seed {d.get('seed')})"
    size = pre.get("size") or ["?", "?"]
    data_rows = [
        ("data", f"{d.get('name', '?')} [{d.get('split', '?')}]"),
        ("source", str(d.get("source", "?"))),
        ("images", subset),
        ("scale", f"{pre.get('scale', 0):.6g} [{sources.get('scale', '')}]"),
        ("mean / std", f"{_numbers(pre.get('mean'))} / {_numbers(pre.get('std'))} [{sources.get('mean', '')}]"),
        (
            "input",
            f"{pre.get('layout', '?')} {size[0]}×{size[1]}×{pre.get('channels', '?')} {pre.get('input_dtype', '')}"
            + (" BGR" if pre.get("channel_order") == "bgr" else ""),
        ),
        ("model sees", "(pixel × scale − mean) / std"),
    ]
    if report.get("command") == "harden":
        h = report.get("harden") or {}
        data_rows.append(
            ("split", f"{h.get('validation_images')} validation + {h.get('evaluation_images')} evaluation images")
        )
    return [
        Row(
            [
                KeyValues(model_rows, caption="Model"),
                KeyValues(layer_rows, caption="Audited layer (first Conv)"),
                KeyValues(data_rows, caption="Data and preprocessing"),
            ]
        )
    ]


def _drop_text(report: Report) -> str:
    mode = report.get("drop_mode", "weights")
    meaning = "W[k] = 0, b[k] = 0" if mode == "weights" else "channel k = 0 after BN / bias / activation"
    site = (report.get("layer") or {}).get("mask_site")
    where = f", mask on {site['tensor']}" if site and site.get("tensor") else ""
    return f"{mode} ({meaning}){where}"


def verdict_blocks(report: Report) -> list[Block]:
    """The verdict paragraph, the warnings, and S / S'."""
    blocks: list[Block] = [Paragraph(str(report.get("verdict", "")), kind="verdict")]
    blocks += [Paragraph(f"⚠ {w}", kind="warning") for w in report.get("warnings") or []]
    fragile, null = report.get("fragile") or [], report.get("null") or []
    blocks.append(
        KeyValues(
            [
                (f"S (fragile, {len(fragile)})", _kernel_list(fragile)),
                (f"S' (null, {len(null)})", _kernel_list(null)),
            ]
        )
    )
    return blocks


def kernel_table(report: Report) -> Table:
    """Per-kernel scores sorted by accuracy (most damaging first), S / S' marked; columns as the report has."""
    kernels = list(report.get("kernels") or [])
    exact = all(k.get("accuracy") is not None for k in kernels)
    if exact:
        order = sorted(kernels, key=lambda k: (k["accuracy"], k["index"]))
    else:
        order = sorted(kernels, key=lambda k: (-(k.get("importance") or 0.0), k["index"]))
    columns: list[tuple[str, Any]] = [
        ("k", lambda k: str(k["index"])),
        ("set", lambda k: Cell("S", "fragile") if k.get("fragile") else Cell("S'", "null")),
    ]
    first = kernels[0] if kernels else {}
    if exact:
        columns.append(("accuracy", lambda k: _pct(k["accuracy"], 2)))
    if "delta" in first:
        columns.append(("Δ points", lambda k: f"{100 * k['delta']:+.2f}"))
    if "importance" in first:
        columns.append(("importance", lambda k: f"{k['importance']:.4g}"))
        columns.append(("exact", lambda k: "yes" if k.get("scored_exactly") else Cell("estimate", "muted")))
    if "changed_predictions" in first:
        columns.append(("flips", lambda k: _pct(k["changed_predictions"])))
    if "correct_to_wrong" in first:
        columns.append(("✓→✗", lambda k: str(k["correct_to_wrong"])))
        columns.append(("✗→✓", lambda k: str(k["wrong_to_correct"])))
    p_key = "p_value_holm" if "p_value_holm" in first else "p_value" if "p_value" in first else None
    if p_key:
        columns.append(("p Holm" if p_key == "p_value_holm" else "p", lambda k: _p_cell(k[p_key])))
    if "split_stability" in first:
        columns.append(("stable", lambda k: f"{100 * k['split_stability']:.0f} %"))
    columns.append(("‖w‖", lambda k: f"{k['weight_norm']:.3g}"))
    rows = [[render(k) for _, render in columns] for k in order]
    base, mean = report.get("baseline_accuracy"), report.get("mean_accuracy")
    caption = "Kernels by accuracy with the kernel dropped" if exact else "Kernels by Taylor importance (estimate)"
    if base is not None:
        caption += f" (baseline {_pct(base, 2)}" + (f", mean {_pct(mean, 2)})" if mean is not None else ")")
    note = (
        "accuracy: top-1 with kernel k dropped; Δ: minus the baseline; flips: predictions changed; ✓→✗ / ✗→✓: "
        "images it breaks / fixes; p: exact McNemar vs the baseline"
        + (", Holm-adjusted over kernels" if p_key == "p_value_holm" else "")
        + ("; stable: share of bootstrap resamples on the same side" if "split_stability" in first else "")
        + "; ‖w‖: L2 norm of the kernel's weights."
    )
    return Table([name for name, _ in columns], rows, caption=caption, note=note, collapsed=len(rows) > 64)


def _p_cell(p: float) -> Cell:
    return Cell("<0.001" if p < 0.001 else f"{p:.3f}", "strong" if p < 0.05 else "muted")


def fgsm_table(report: Report, hardened: Report | None = None) -> Table | None:
    """Accuracy under the attack per ε with 95 % intervals; original and hardened columns when there are two models."""
    series = plots.attack_series(report, hardened)
    if not series:
        return None
    if len(series) == 1:
        s = series[0]
        rows = [
            [f"{e['epsilon']:g}", _pct(e["accuracy"]), f"{_pct(e['ci95'][0])} – {_pct(e['ci95'][1])}",
             f"{e['correct']} / {e['n']}"]
            for e in s.fgsm
        ]  # fmt: skip
        return Table(
            ["ε", "accuracy", "95 % CI (Wilson)", "correct / n"],
            rows,
            caption=f"{plots.attack_name(report)} accuracy per ε (ε in [0, 1] pixel units, before normalization)",
        )
    before, after = series
    after_by_eps = {float(e["epsilon"]): e for e in after.fgsm}
    rows = []
    for e in before.fgsm:
        a = after_by_eps.get(float(e["epsilon"]))
        change = None if a is None else a["accuracy"] - e["accuracy"]
        rows.append(
            [
                f"{e['epsilon']:g}",
                _pct(e["accuracy"]),
                f"{_pct(e['ci95'][0])} – {_pct(e['ci95'][1])}",
                _pct(a["accuracy"]) if a else "–",
                f"{_pct(a['ci95'][0])} – {_pct(a['ci95'][1])}" if a else "–",
                "–"
                if change is None
                else Cell(f"{100 * change:+.1f}", "good" if change > 0 else "bad" if change < 0 else None),
            ]
        )
    return Table(
        ["ε", "original", "95 % CI", "hardened", "95 % CI", "Δ points"],
        rows,
        caption="FGSM accuracy per ε, before / after hardening (held-out evaluation images)",
    )


def _change_css(change: float) -> str | None:
    return "good" if change > 0 else "bad" if change < 0 else None


def targeting_table(report: Report, hardened: Report | None = None) -> Table | None:
    """% of examples attacking S per ε, raw and normalized; original and hardened when there are two models."""
    series = [s for s in plots.attack_series(report, hardened) if s.targeting]
    if not series:
        return None
    headers = ["ε"]
    for s in series:
        name = f"{s.label}: " if len(series) > 1 else ""
        headers += [f"{name}attacks S (raw)", f"{name}attacks S (normalized)"]
    by_eps = [{float(t["epsilon"]): t for t in s.targeting} for s in series]
    rows = []
    for eps in sorted({e for table in by_eps for e in table}):
        row: list[str | Cell] = [f"{eps:g}"]
        for table in by_eps:
            t = table.get(eps)
            row += [
                f"{_pct(t['fraction_attacking_fragile'])} ({t['attacking_fragile']}/{t['n']})" if t else "–",
                f"{_pct(t['fraction_attacking_fragile_normalized'])} ({t['attacking_fragile_normalized']}/{t['n']})"
                if t
                else "–",
            ]
        rows.append(row)
    site = plots.targeting_at(report)
    return Table(
        headers,
        rows,
        caption="Adversarial targeting per ε: examples whose attack moves S more than S'",
        note=f"Compared: {site_description(site['site'], site['tensor'], site['after'])} (--targeting-at "
        f"{site['site']}). raw: mean L2 distance over S vs over S' (the paper's Algorithm 1 at the Conv output); "
        "normalized: each kernel's distance divided by the norm of its clean value there (a channel that is zero "
        "on the clean image counts 0).",
    )


def _figure_or_note(name: str, report: Report, hardened: Report | None, alt: str, caption: str) -> Block:
    if name not in plots.available_figures(report, hardened):
        reason = {
            "kernel_accuracy": "Fig. 1 is not available: the report has no per-kernel scores.",
            "accuracy_vs_epsilon": "Fig. 2 needs the attack sweep, which was not run (--no-attack).",
            "targeting": "Fig. 3 needs the attack sweep with some ε > 0, which this run did not have (--no-attack).",
            "frontier": "Fig. 4 needs the hardening candidates, which this report does not have.",
            "layers": "Fig. 5 needs a per-layer audit (--layers), which this report does not have.",
        }[name]
        return Paragraph(reason, kind="note")
    return figure_image(plots.draw_figure(name, report, hardened), alt=alt, caption=caption)


def _fig1(report: Report) -> Block:
    return _figure_or_note(
        "kernel_accuracy",
        report,
        None,
        alt="Fig. 1: accuracy with each first-layer kernel dropped, with the mean line; S red, S' blue",
        caption="Fig. 1. Top-1 accuracy with each kernel of the audited Conv dropped. Kernels below the dashed mean "
        "line are fragile (S, red); the others are null (S', blue). Grey stems run from the accuracy with no kernel "
        "dropped.",
    )


def _fig2(report: Report, hardened: Report | None) -> Block:
    return _figure_or_note(
        "accuracy_vs_epsilon",
        report,
        hardened,
        alt=f"Fig. 2: accuracy under {plots.attack_name(report)} vs epsilon, linear and logarithmic epsilon axes",
        caption=f"Fig. 2. Accuracy under {plots.attack_name(report)} vs ε on a linear (left) and a logarithmic "
        f"(right) ε axis; ε is the {_epsilon_meaning(report)} with pixels in [0, 1], before normalization. Shaded: "
        "95 % Wilson intervals.",
    )


def _epsilon_meaning(report: Report) -> str:
    l2 = plots.epsilon_label(report) == plots.EPSILON_LABEL_L2
    return "L2 norm of the perturbation" if l2 else "per-pixel budget"


def _fig3(report: Report, hardened: Report | None) -> Block:
    return _figure_or_note(
        "targeting",
        report,
        hardened,
        alt="Fig. 3: percentage of examples attacking the fragile kernels vs epsilon",
        caption=_fig3_caption(report),
    )


def _fig3_caption(report: Report) -> str:
    """Fig. 3's caption: what was compared, and what that means for the curve's dependence on ε."""
    site = plots.targeting_at(report)
    where = site_description(site["site"], site["tensor"], site["after"])
    text = (
        f"Fig. 3. Share of examples whose {plots.attack_name(report)} perturbation changes the fragile kernels' "
        f"values more than the null kernels' (solid: raw distances; dashed: normalized by each kernel's clean value), "
        f"measured at {where} (--targeting-at {site['site']}). "
    )
    if site["site"] == "activation":
        return text + (
            "After the non-linearity the comparison can depend on ε (units switch on or off as the perturbation "
            "grows). At the Conv output (--targeting-at conv, the paper's) it would not: there y − y′ = "
            "conv_W(x − x′), so under FGSM every kernel's distance scales with ε and only clipping at the pixel "
            "bounds moves the share."
        )
    return text + LINEAR_NOTE


def layers_blocks(report: Report) -> list[Block]:
    """``--layers``: Fig. 5, the per-layer table and the most damaging kernels network-wide."""
    layers = report.get("layers") or []
    figure = _figure_or_note(
        "layers", report, None,
        alt="Fig. 5: fragile share and worst single-kernel drop of every audited layer against its depth",
        caption="Fig. 5. Each audited layer's fragile share (red, left axis) and the accuracy lost by dropping its "
        "most damaging kernel (blue, right axis), against the layer's depth (nodes from the image input).",
    )  # fmt: skip
    first = layers[0].get("targeting") or []
    at = len(first) // 2 if first else None

    def points(value: float | None, digits: int = 1) -> str:
        return "–" if value is None else f"{100 * value:+.{digits}f} pts"

    headers = ["layer", "depth", "kernels", "fragile", "share", "mean drop", "worst drop (kernel)"]
    if at is not None:
        headers += [f"attacks S at ε = {first[at]['epsilon']:g}", "normalized"]
    rows = []
    for layer in layers:
        row = [
            layer["name"], str(layer["distance_from_input"]), str(layer["out_channels"]), str(len(layer["fragile"])),
            f"{layer['fragile_share']:.0%}", points(layer["mean_drop"], 2),
            f"{points(layer['worst_drop'])} ({layer['worst_kernel']})",
        ]  # fmt: skip
        if at is not None:
            t = (layer.get("targeting") or [None] * (at + 1))[at]
            row += (
                ["–", "–"]
                if t is None
                else [f"{t['fraction_attacking_fragile']:.1%}", f"{t['fraction_attacking_fragile_normalized']:.1%}"]
            )
        rows.append(row)
    network = report.get("network") or {}
    blocks: list[Block] = [
        figure,
        Table(headers, rows, caption="Every audited layer, in data-flow order",
              note="drop: baseline accuracy minus accuracy with one kernel dropped"),
        Table(
            ["layer", "kernel", "accuracy", "drop"],
            [[m["layer"], str(m["kernel"]), f"{m['accuracy']:.1%}", points(m["drop"])]
             for m in network.get("most_damaging", [])],
            caption="Most damaging kernels network-wide",
        ),
    ]  # fmt: skip
    skipped = network.get("skipped_layers") or []
    if skipped:
        blocks.append(
            Paragraph("Left out: " + "; ".join(f"{s['layer']} ({s['reason']})" for s in skipped), kind="warning")
        )
    return blocks


def _kernel_blocks(report: Report) -> list[Block]:
    return [_fig1(report), kernel_table(report)] if report.get("kernels") else [_fig1(report)]


def _attack_note(report: Report) -> list[Block]:
    attack, mirror = report.get("attack"), report.get("mirror")
    if not attack or not mirror:
        return []
    return [
        Paragraph(
            f"{plots.attack_name(report)} in pixel space ({attack.get('epsilon_source', '')}; bounds "
            f"{attack.get('bounds')}; loss {attack.get('loss')}). Gradients from the PyTorch mirror, which matched "
            f"onnxruntime to {mirror.get('relative_diff', 0):.1e} (tolerance {mirror.get('tolerance', 0):g}); "
            "adversarial images are judged by the model in onnxruntime.",
            kind="note",
        )
    ]


def _footer(report: Report) -> str:
    return (
        f"kernelscope {report.get('kernelscope_version', '?')} · {report.get('command', '?')} report · JSON schema "
        f"{report.get('schema_version', '?')} · figures follow Pravin et al., ICANN 2021 (Fig. 1-3)"
    )


def inspect_page(report: Report, hardened: Report | None = None) -> str:
    """The ``inspect --html`` page from an ``inspect`` report document (``hardened``: optional overlay)."""
    model = (report.get("model") or {}).get("path", "model")
    sections = [
        Section("Summary", summary_blocks(report)),
        Section("Verdict", verdict_blocks(report)),
        Section("Kernels (Fig. 1)", _kernel_blocks(report), anchor="kernels"),
    ]
    attack_blocks: list[Block] = [_fig2(report, hardened), *_attack_note(report)]
    table = fgsm_table(report, hardened)
    if table is not None:
        attack_blocks.append(table)
    sections.append(Section(f"{plots.attack_name(report)} sweep (Fig. 2)", attack_blocks, anchor="attack"))
    targeting_blocks: list[Block] = [_fig3(report, hardened)]
    table = targeting_table(report, hardened)
    if table is not None:
        targeting_blocks.append(table)
    sections.append(Section("Adversarial targeting (Fig. 3)", targeting_blocks, anchor="targeting"))
    if report.get("layers"):
        sections.append(Section("Every layer (Fig. 5)", layers_blocks(report), anchor="layers"))
    return render_page(
        "kernelscope inspect",
        sections,
        subtitle=f"{model} · first-layer kernel audit",
        footer=_footer(report),
    )


def harden_blocks(report: Report) -> list[Block]:
    """The hardening parameters and the noise-level search on the validation part."""
    h = report.get("harden") or {}
    original = h.get("original_validation") or {}
    chosen = h.get("chosen") or {}
    params = [
        ("method", str(h.get("method", "svd"))),
        ("chosen", str(chosen.get("setting", "nothing")) + (" (forced)" if h.get("forced") else "")),
        ("noise level ε_n", "–" if h.get("noise_level") is None else f"{h['noise_level']:.4g}"),
        ("SVD mode", str(h.get("svd_mode"))),
        ("τ / α", f"{_g(h.get('tau'))} / {_g(h.get('alpha'))}"),
        ("kept σ / rank", f"{h.get('kept_singular_values', '–')} / {h.get('rank', '–')}"),
        ("audit ε", f"{h.get('audit_epsilon', 0):g}"),
        ("attacks", str(h.get("attacks") or "–")),
        ("written", str(h.get("written") or "nothing")),
    ]
    rows = []
    for c in h.get("candidates") or []:
        mark = "strong" if c.get("chosen") else None
        rows.append(
            [
                Cell(str(c["method"]), mark),
                Cell(str(c["setting"]) + (" (no-op)" if c.get("no_op") else ""), mark),
                _pct(c["val_clean_accuracy"], 2),
                _pct(c["val_fgsm_accuracy"], 2),
                _pct(c.get("val_pgd_accuracy"), 2),
                _pct(c.get("val_transfer_accuracy"), 2),
                _pct(c.get("val_worst_accuracy"), 2),
                Cell("yes", "good") if c["within_budget"] else Cell("no", "muted"),
            ]
        )
    search = Table(
        ["method", "setting", "clean", "FGSM", "PGD", "transfer", "worst", "in budget"],
        rows,
        caption=f"Candidates tried on {h.get('validation_images')} validation images (original: clean "
        f"{_pct(original.get('clean_accuracy'), 2)}, worst case {_pct(original.get('worst_accuracy'), 2)} at ε = "
        f"{h.get('audit_epsilon', 0):g})",
        numeric=[2, 3, 4, 5, 6],
        note="The chosen candidate is in bold. A candidate qualifies when its clean accuracy stays within the budget "
        "and its worst-case accuracy (right clean and under FGSM, PGD and the transfer attack) beats the original's.",
    )
    blocks: list[Block] = []
    change = h.get("change") or {}
    b_rob = (h.get("before") or {}).get("robustness") or {}
    a_rob = (h.get("after") or {}).get("robustness") or {}
    if b_rob:
        names = {"clean": "clean", "fgsm": "FGSM", "pgd": "PGD", "transfer": "transfer", "worst": "worst case"}
        worst_rows = []
        for key, label in names.items():
            if key not in b_rob:
                continue
            c = change.get(key)
            worst_rows.append(
                [
                    label,
                    _pct(b_rob[key]["accuracy"], 1),
                    _pct(a_rob[key]["accuracy"], 1) if key in a_rob else "–",
                    f"{100 * c['difference']:+.1f}" if c else "",
                    f"{100 * c['ci95'][0]:+.1f} to {100 * c['ci95'][1]:+.1f}" if c else "",
                    f"{c['p_value']:.3g}" if c else "",
                    ("significant" if c["significant"] else "not significant") if c else "",
                ]
            )
        blocks.append(
            Table(
                ["attack", "before", "after", "change (points)", "95 % CI", "McNemar p", ""],
                worst_rows,
                caption=f"Worst case on {h.get('evaluation_images')} held-out images at ε = "
                f"{h.get('audit_epsilon', 0):g}",
                numeric=[1, 2, 3, 4, 5],
                note="Paired on the same images: exact McNemar test on the discordant images, Agresti–Min interval.",
            )
        )
    before, after = h.get("before") or {}, h.get("after") or {}
    clean = KeyValues(
        [
            ("original", _pct(before.get("clean_accuracy"), 2)),
            ("hardened", _pct(after.get("clean_accuracy"), 2) if after else "– (no hardened model)"),
        ],
        caption=f"Clean accuracy on {h.get('evaluation_images')} held-out images",
    )
    return [Row([KeyValues(params, caption="Hardening"), clean]), search, *blocks]


def _g(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def harden_page(report: Report) -> str:
    """The ``harden --html`` page from a ``harden`` report document: before / after curves of both models."""
    model = (report.get("model") or {}).get("path", "model")
    h = report.get("harden") or {}
    sections = [
        Section("Summary", summary_blocks(report)),
        Section("Verdict", verdict_blocks(report)),
        Section("Hardening", harden_blocks(report)),
    ]
    attack_blocks: list[Block] = [_fig2(report, None)]
    if not h.get("after"):
        attack_blocks.append(Paragraph("No hardened model was made: only the original is drawn.", kind="note"))
    table = fgsm_table(report)
    if table is not None:
        attack_blocks.append(table)
    sections.append(Section("FGSM before / after (Fig. 2)", attack_blocks, anchor="fgsm"))
    targeting_blocks: list[Block] = [_fig3(report, None)]
    table = targeting_table(report)
    if table is not None:
        targeting_blocks.append(table)
    sections.append(Section("Adversarial targeting before / after (Fig. 3)", targeting_blocks, anchor="targeting"))
    sections.append(Section("Kernels on the validation part (Fig. 1)", _kernel_blocks(report), anchor="kernels"))
    if h.get("candidates"):
        frontier = _figure_or_note(
            "frontier",
            report,
            None,
            alt="Fig. 4: hardening candidates, clean vs worst-case accuracy on validation",
            caption="Fig. 4. Every candidate tried on the validation part as (clean, worst-case) accuracy at the "
            "audit ε, one colour per method, each method's Pareto frontier joined; the star is the original, the "
            "dotted line the clean budget, the ring the chosen candidate.",
        )
        sections.insert(3, Section("Candidates: clean vs worst case (Fig. 4)", [frontier], anchor="frontier"))
    return render_page(
        "kernelscope harden",
        sections,
        subtitle=f"{model} · first-layer hardening with a before / after",
        footer=_footer(report),
    )


def report_page(report: Report, hardened: Report | None = None) -> str:
    """The page of any report document, by its ``command``."""
    if report.get("command") == "harden":
        return harden_page(report)
    if report.get("command") == "neurons":
        from kernelscope.report.neurons_page import neurons_page  # it imports this module

        return neurons_page(report)
    if report.get("command") == "compare":
        from kernelscope.report.compare_page import compare_page  # it imports this module

        return compare_page(report)
    return inspect_page(report, hardened)
