"""Output that survives a log: no table cell of any command is ever cut short.

Each command's report is rendered twice: as in a pipe (not a terminal, no COLUMNS: tables take the width
their content needs) and at a fixed 80 columns (a terminal, or COLUMNS=80: cells wrap). Neither may hold an
ellipsis, the 80-column one fits 80 columns, both carry exactly the same digits (wrapping moves digits,
never drops one), and the numbers of the JSON report appear whole in the pipe.
"""

from __future__ import annotations

import io
import json
import re
from collections import Counter

import pytest

import kernelscope.cli.render as render
from kernelscope.cli.app import main
from kernelscope.cli.context import WholeConsole

from builders import conv_classifier, random_npz, save

COMMANDS = {
    "inspect": ("render_inspect", ["--eps", "0.0025,0.0125,0.05", "--bootstrap", "20"]),
    "harden": ("render_harden", ["--noise", "10", "--sweep", "0.0025,0.0125,0.05", "-o", "{out}/h.onnx"]),
    "neurons": ("render_neurons", ["--steps", "3"]),
    "inspect-layers": ("render_inspect", ["--eps", "0.0025,0.0125,0.05", "--bootstrap", "20", "--layers", "all"]),
}


def _render(renderer, report, *, pipe: bool) -> str:
    buffer = io.StringIO()
    console = WholeConsole(file=buffer, width=80, highlight=False, color_system=None)
    console.fit_to_content = pipe
    renderer(console, report)
    return buffer.getvalue()


def _digits(text: str) -> Counter:
    return Counter(ch for ch in text if ch.isdigit())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each command once on a small model: its report object and its JSON."""
    folder = tmp_path_factory.mktemp("logs")
    model = save(conv_classifier(out_channels=5, seed=2), folder / "model.onnx")
    data = random_npz(folder / "data.npz", n=60)
    results = {}
    for command, (name, extra) in COMMANDS.items():
        captured = {}
        original = getattr(render, name)

        def keep(console, report, *args, _original=original, _captured=captured, **kwargs):
            _captured["report"] = report
            return _original(console, report, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(render, name, keep)
            cli = command.split("-")[0]
            args = [cli, str(model), "--data", str(data), "--json", str(folder / f"{command}.json"), "--force"]
            code = main(args + [a.format(out=folder) for a in extra])
        assert code == 0, command
        doc = json.loads((folder / f"{command}.json").read_text())
        results[command] = (getattr(render, name), captured["report"], doc)
    return results


@pytest.mark.parametrize("command", list(COMMANDS))
def test_no_cell_is_cut_in_a_pipe_or_at_80_columns(runs, command):
    renderer, report, _ = runs[command]
    pipe, narrow = _render(renderer, report, pipe=True), _render(renderer, report, pipe=False)
    assert "…" not in pipe and "…" not in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert _digits(pipe) == _digits(narrow)


def test_the_json_numbers_appear_whole_in_a_pipe(runs):
    for command in ("inspect", "harden"):
        renderer, report, doc = runs[command]
        pipe = _render(renderer, report, pipe=True)
        tokens = set(re.findall(r"[-+]?\d[\d.,]*%?", pipe))
        fgsm = doc["harden"]["before"]["fgsm"] if command == "harden" else doc["fgsm"]
        for row in fgsm:
            assert f"{row['epsilon']:g}" in tokens, (command, row["epsilon"])
        if command == "inspect":
            for kernel in doc["kernels"]:
                assert f"{100 * kernel['accuracy']:.2f}%" in tokens, kernel


def test_compare_tables_are_whole_too(runs):
    from kernelscope.compare import compare_reports

    _, _, doc = runs["inspect"]
    labels = [f"a_checkpoint_with_a_rather_long_file_name_epoch_{e}.json" for e in (1, 50, 100)]
    comparison = compare_reports([doc, doc, doc], labels)
    pipe = _render(render.render_compare, comparison, pipe=True)
    narrow = _render(render.render_compare, comparison, pipe=False)
    assert "…" not in pipe and "…" not in narrow
    assert max(len(line) for line in narrow.splitlines()) <= 80
    assert _digits(pipe) == _digits(narrow)
    assert all(label in pipe for label in labels)
