"""``--html`` and ``--plots``: the page holds the three figures and the tables, escapes model strings, and the
figures open as PNG files; the plotting API works on saved JSON reports."""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

from kernelscope.cli.app import main
from kernelscope.report import plots
from kernelscope.report.html import Image as PageImage
from kernelscope.report.html import KeyValues, Paragraph, Section, Table, render_page, report_page

from builders import conv_classifier, random_npz, save

ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT = ROOT / "scripts" / "screenshot_report.py"
FIGURES = ["fig1_kernel_accuracy.png", "fig2_accuracy_vs_epsilon.png", "fig3_targeting.png"]
EVIL = "<script>alert('x')</script>$\\frac{1}{0}$"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny")
    model = conv_classifier(out_channels=5, seed=2)
    return save(model, folder / "model.onnx"), random_npz(folder / "data.npz", n=60)


@pytest.fixture(scope="module")
def inspected(tiny, tmp_path_factory):
    """One ``inspect`` run with --html, --plots and --json, shared by the tests that read its outputs."""
    model, data = tiny
    out = tmp_path_factory.mktemp("inspect")
    code = main(
        ["inspect", str(model), "--data", str(data), "--bootstrap", "50", "--eps", "0.05,0.1", "-q",
         "--html", str(out / "r.html"), "--plots", str(out / "figures"), "--json", str(out / "r.json")]
    )  # fmt: skip
    assert code == 0
    return out


class _Page(HTMLParser):
    """Images, tables (rows of cell texts) and paragraphs of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str | None]] = []
        self.tables: list[list[list[str]]] = []
        self.paragraphs: list[str] = []
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._paragraph: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "p":
            self._paragraph = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[-1].append(self._row)
            self._row = None
        elif tag == "p" and self._paragraph is not None:
            self.paragraphs.append("".join(self._paragraph))
            self._paragraph = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._paragraph is not None:
            self._paragraph.append(data)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _png(src: str | None) -> Image.Image:
    assert src is not None and src.startswith("data:image/png;base64,")
    raw = base64.b64decode(src.split(",", 1)[1], validate=True)
    image = Image.open(io.BytesIO(raw))
    image.verify()  # a complete, uncorrupted PNG
    return Image.open(io.BytesIO(raw))


def _table_with(page: _Page, header: str) -> list[list[str]]:
    return next(t for t in page.tables if t and header in t[0])


def test_inspect_page_has_three_figures_and_the_tables(inspected):
    page = _parse(inspected / "r.html")
    doc = json.loads((inspected / "r.json").read_text())
    assert len(page.images) == 3
    alts = [img["alt"] for img in page.images]
    assert [a.split(":")[0] for a in alts] == ["Fig. 1", "Fig. 2", "Fig. 3"]
    for img in page.images:
        image = _png(img["src"])
        assert image.format == "PNG" and image.width >= 1000 and image.height >= 400
    kernels = _table_with(page, "accuracy")
    assert kernels[0][:3] == ["k", "set", "accuracy"]
    rows = {int(row[0]): row for row in kernels[1:]}
    assert sorted(rows) == [0, 1, 2, 3, 4]
    for k in doc["kernels"]:
        assert rows[k["index"]][1] == ("S" if k["index"] in doc["fragile"] else "S'")
        assert rows[k["index"]][2] == f"{100 * k['accuracy']:.2f} %"
    fgsm = _table_with(page, "95 % CI (Wilson)")
    assert [row[0] for row in fgsm[1:]] == ["0", "0.05", "0.1"]
    assert [row[1] for row in fgsm[1:]] == [f"{100 * e['accuracy']:.1f} %" for e in doc["fgsm"]]
    targeting = _table_with(page, "attacks S (raw)")
    assert [row[0] for row in targeting[1:]] == ["0.05", "0.1"]
    summary = " ".join(" ".join(row) for table in page.tables for row in table)
    assert "first_conv (Conv)" in summary and "NCHW 8×8×3" in summary
    assert doc["verdict"] in page.paragraphs


def test_plots_folder_holds_pngs_that_open(inspected):
    folder = inspected / "figures"
    assert sorted(p.name for p in folder.iterdir()) == FIGURES
    for name in FIGURES:
        with Image.open(folder / name) as image:
            image.verify()
        with Image.open(folder / name) as image:
            assert image.format == "PNG" and image.width >= 1000


def test_no_attack_has_only_fig1_and_says_why(tiny, tmp_path, capsys):
    model, data = tiny
    code = main(
        ["inspect", str(model), "--data", str(data), "--bootstrap", "20", "--no-attack",
         "--html", str(tmp_path / "r.html"), "--plots", str(tmp_path / "figures")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    page = _parse(tmp_path / "r.html")
    assert len(page.images) == 1 and page.images[0]["alt"].startswith("Fig. 1")
    _png(page.images[0]["src"])
    notes = [p for p in page.paragraphs if "needs the attack" in p]
    assert len(notes) == 2 and notes[0].startswith("Fig. 2") and notes[1].startswith("Fig. 3")
    assert [p.name for p in (tmp_path / "figures").iterdir()] == [FIGURES[0]]
    assert "no data for fig2_accuracy_vs_epsilon.png, fig3_targeting.png" in capsys.readouterr().err


def test_model_strings_are_escaped(tmp_path, capsys):
    model = conv_classifier(out_channels=4, seed=1)
    next(n for n in model.graph.node if n.op_type == "Conv").name = EVIL
    model.producer_name = "<img src=x onerror=alert(1)>"
    path = save(model, tmp_path / "evil.onnx")
    data = random_npz(tmp_path / "d.npz", n=40)
    code = main(
        ["inspect", str(path), "--data", str(data), "--bootstrap", "20", "--eps", "0.1", "-q",
         "--html", str(tmp_path / "r.html")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<script" not in text and "onerror=alert" not in text.replace("onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    page = _parse(tmp_path / "r.html")
    assert len(page.images) == 3  # the "$...$" in the name did not break matplotlib's text rendering
    assert any(EVIL + " (Conv)" in row for table in page.tables for row in table)


def test_harden_page_draws_original_and_hardened(tiny, tmp_path, capsys):
    model, data = tiny
    code = main(
        ["harden", str(model), "--data", str(data), "-o", str(tmp_path / "h.onnx"), "--noise", "10",
         "--sweep", "0.05,0.1", "-q", "--html", str(tmp_path / "h.html"), "--json", str(tmp_path / "h.json"),
         "--plots", str(tmp_path / "figures")]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "h.json").read_text())
    assert len(doc["kernels"]) == 5 and doc["mean_accuracy"] is not None and doc["baseline_accuracy"] is not None
    assert [k["fragile"] for k in doc["kernels"]] == [k in doc["fragile"] for k in range(5)]
    page = _parse(tmp_path / "h.html")
    assert len(page.images) == 4  # Figs. 1-3 and harden's Fig. 4, the candidates' frontier
    worst = _table_with(page, "McNemar p")
    assert [row[0] for row in worst[1:]] == ["clean", "FGSM", "PGD", "transfer", "worst case"]
    change = doc["harden"]["change"]["worst"]
    assert worst[-1][3] == f"{100 * change['difference']:+.1f}" and worst[-1][5] == f"{change['p_value']:.3g}"
    fig4 = plots.frontier_figure(doc)
    offsets = [tuple(p) for c in fig4.axes[0].collections for p in c.get_offsets()]
    for c in doc["harden"]["candidates"]:
        want = (100 * c["val_clean_accuracy"], 100 * c["val_worst_accuracy"])
        assert any(abs(x - want[0]) < 1e-9 and abs(y - want[1]) < 1e-9 for x, y in offsets)
    before_after = _table_with(page, "hardened")
    assert before_after[0] == ["ε", "original", "95 % CI", "hardened", "95 % CI", "Δ points"]
    after = doc["harden"]["after"]["fgsm"]
    assert [row[3] for row in before_after[1:]] == [f"{100 * e['accuracy']:.1f} %" for e in after]
    targeting = _table_with(page, "hardened: attacks S (raw)")
    assert targeting[0][1] == "original: attacks S (raw)"
    assert [row[0] for row in targeting[1:]] == [f"{t['epsilon']:g}" for t in doc["harden"]["after"]["targeting"]]
    fig2 = plots.accuracy_vs_epsilon_figure(doc)
    labels = [t.get_text() for t in fig2.legends[0].get_texts()]
    assert any(label.startswith("original") for label in labels)
    assert any(label.startswith("hardened") for label in labels)
    fig3 = plots.targeting_figure(doc)
    assert {line.get_label().split(",")[0] for line in fig3.axes[0].get_lines()} == {"original", "hardened"}
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == [*FIGURES, "fig4_harden_frontier.png"]


def test_figures_from_a_saved_json_report(inspected, tmp_path):
    doc = json.loads((inspected / "r.json").read_text())
    assert plots.available_figures(doc) == list(plots.FIGURE_FILES)[:3]  # Fig. 4 is harden's
    fig1 = plots.kernel_accuracy_figure(doc)
    ax = fig1.axes[0]
    points = sorted((int(x), y) for c in ax.collections[1:] for x, y in c.get_offsets())  # [0] are the stems
    assert [p[0] for p in points] == list(range(5))
    assert [p[1] for p in points] == pytest.approx([100 * k["accuracy"] for k in doc["kernels"]])
    mean_line = next(line for line in ax.get_lines() if line.get_label().startswith("mean over kernels"))
    assert mean_line.get_ydata()[0] == pytest.approx(100 * doc["mean_accuracy"])
    # An inspect report of a hardened file can be overlaid on the original's.
    overlay = json.loads(json.dumps(doc))
    for entry in overlay["fgsm"]:
        entry["accuracy"] = min(1.0, entry["accuracy"] + 0.1)
    series = plots.attack_series(doc, overlay)
    assert [s.label for s in series] == ["original", "hardened"]
    written = plots.save_figures(doc, tmp_path / "out", overlay)
    assert [p.name for p in written] == FIGURES
    no_attack = {k: v for k, v in doc.items() if k not in ("fgsm", "targeting")}
    assert plots.available_figures(no_attack) == ["kernel_accuracy"]
    with pytest.raises(plots.FigureUnavailable):
        plots.accuracy_vs_epsilon_figure(no_attack)


def test_missing_matplotlib_fails_before_the_audit(tiny, tmp_path, capsys, monkeypatch):
    import kernelscope.audit

    model, data = tiny
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError

    def must_not_run(*args, **kwargs):
        raise AssertionError("the audit ran before the missing extra was reported")

    monkeypatch.setattr(kernelscope.audit, "inspect_model", must_not_run)
    code = main(["inspect", str(model), "--data", str(data), "--html", str(tmp_path / "r.html")])
    err = capsys.readouterr().err
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'pip install "kernelscope[plots]"' in lines[0]
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda t: ["--plots", str(t / "file.txt")], "is a file; give a folder"),
        (lambda t: ["--plots", str(t / "existing")], "already exists; pass --force"),
        (lambda t: ["--html", str(t / "same.json"), "--json", str(t / "same.json")], "also another output"),
        (lambda t: ["--html", str(t / "missing" / "r.html")], "does not exist"),
    ],
)
def test_bad_output_paths_fail_before_the_audit(tiny, tmp_path, capsys, monkeypatch, make_args, message):
    import kernelscope.audit

    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / FIGURES[1]).write_bytes(b"")
    monkeypatch.setattr(kernelscope.audit, "inspect_model", lambda *a, **k: pytest.fail("the audit ran"))
    model, data = tiny
    code = main(["inspect", str(model), "--data", str(data), *make_args(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_render_page_escapes_every_block():
    page = render_page(
        "<b>title</b>",
        [
            Section("<i>s</i>", [Paragraph("<p>x</p>", kind="warning"), KeyValues([("<k>", "<v>")], caption="<c>")]),
            Section("t", [Table(["<h>"], [["<td>"]], caption="<cap>", note="<n>"), PageImage(b"\x89PNG", "<alt>")]),
        ],
        subtitle="<sub>",
        footer="<foot>",
    )
    body = page.split("</style>", 1)[1]
    assert not re.search(r"<(b|i|p>x|k|v|c|h|td>|cap|n|alt|sub|foot)>", body.replace("<td>&lt;td&gt;", ""))
    for text in ("&lt;b&gt;title&lt;/b&gt;", "&lt;i&gt;s&lt;/i&gt;", "&lt;p&gt;x&lt;/p&gt;", "&lt;cap&gt;",
                 'alt="&lt;alt&gt;"', "&lt;foot&gt;"):  # fmt: skip
        assert text in body


def _chromium() -> str | None:
    sys.path.insert(0, str(SCREENSHOT.parent))
    try:
        from screenshot_report import find_chromium
    finally:
        sys.path.pop(0)
    return find_chromium()


@pytest.mark.skipif(
    _chromium() is None, reason="no Chromium on PATH (apt-get install chromium) for the screenshot check"
)
def test_page_renders_in_headless_chromium(inspected, tmp_path):
    # A real browser displays the embedded images: a page with one magenta PNG shows magenta pixels.
    swatch = io.BytesIO()
    Image.new("RGB", (400, 200), (255, 0, 255)).save(swatch, format="PNG")
    probe = tmp_path / "probe.html"
    probe.write_text(render_page("probe", [Section("image", [PageImage(swatch.getvalue(), "swatch")])]))
    shot = tmp_path / "probe.png"
    run = [sys.executable, str(SCREENSHOT), str(probe), str(shot), "--height", "1200"]
    result = subprocess.run(run, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    with Image.open(shot) as image:
        magenta = sum(1 for pixel in image.convert("RGB").getdata() if pixel == (255, 0, 255))
    assert magenta > 20_000
    # The report page itself renders, at the window's width, taller than a screen (figures and tables laid out).
    shot = tmp_path / "report.png"
    run = [sys.executable, str(SCREENSHOT), str(inspected / "r.html"), str(shot)]
    result = subprocess.run(run, capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    with Image.open(shot) as image:
        assert image.width == 1280 and image.height > 2500
        assert len(image.convert("RGB").getcolors(1_000_000) or []) > 50


def test_pgd_reports_are_drawn_under_their_attack(inspected):
    doc = json.loads((inspected / "r.json").read_text())
    doc["pgd"], doc["fgsm"] = doc["fgsm"], None  # the shape `inspect --attack pgd` writes
    doc["attack"] = doc["attack"] | {"name": "pgd", "pgd": {"norm": "l2", "steps": 10}}
    assert plots.available_figures(doc) == list(plots.FIGURE_FILES)[:3]  # Fig. 4 is harden's
    fig2 = plots.accuracy_vs_epsilon_figure(doc)
    assert fig2.axes[0].get_ylabel() == "top-1 accuracy under PGD (%)"
    assert fig2.axes[0].get_xlabel() == plots.EPSILON_LABEL_L2
    page = _Page()
    page.feed(report_page(doc))
    assert len(page.images) == 3 and page.images[1]["alt"].startswith("Fig. 2: accuracy under PGD")
    assert [row[0] for row in _table_with(page, "95 % CI (Wilson)")[1:]] == ["0", "0.05", "0.1"]
