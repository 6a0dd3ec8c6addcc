"""Follow the first layer's kernels across audits: checkpoints, versions, an original and its hardened copy.

The paper's Fig. 4 follows the kernels across training: some are fragile at every checkpoint, others at one.
:func:`compare_reports` takes ``inspect`` report documents (the ``--json`` form, audited on the spot or saved
earlier), in the order given, and says for each kernel its side (S / S') in each, which kernels are fragile in
all of them, in some, in none, and per report the fragile share, the baseline and the attack's accuracy per ε.

The reports must audit the same layer shape (out channels, in channels, kernel shape) — a kernel index means
the same position in the layer only then — and, unless ``allow_different_data``, the same images (data set,
split, number of images, seed): otherwise a kernel that "changes side" may only have met other images.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kernelscope.errors import DataError, UsageError

SCHEMA_VERSION = 1

Report = Mapping[str, Any]


def read_report(path: str | Path) -> dict[str, Any]:
    """A saved ``inspect --json`` report; a one-line error for anything else."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UsageError(f"{path} is not a readable JSON report: {exc}") from None
    if not isinstance(doc, dict) or doc.get("command") != "inspect" or not isinstance(doc.get("kernels"), list):
        what = doc.get("command") if isinstance(doc, dict) else None
        raise UsageError(
            f"{path} is not an inspect report (command {what!r}); compare reads `kernelscope inspect --json` files"
        )
    return doc


def _layer_shape(report: Report) -> tuple[Any, ...]:
    layer = report.get("layer") or {}
    return (layer.get("out_channels"), layer.get("in_channels"), tuple(layer.get("kernel_shape") or ()))


def _data_key(report: Report) -> tuple[Any, ...]:
    data = report.get("data") or {}
    return (data.get("name"), data.get("split"), data.get("n"), data.get("seed"))


def _sweep(report: Report) -> list[dict[str, Any]]:
    attack = (report.get("attack") or {}).get("name") or "fgsm"
    return [{"epsilon": e["epsilon"], "accuracy": e["accuracy"]} for e in report.get(attack) or []]


def _targeting(report: Report) -> list[dict[str, Any]]:
    return [
        {"epsilon": t["epsilon"], "fraction_attacking_fragile": t.get("fraction_attacking_fragile")}
        for t in report.get("targeting") or []
    ]


def compare_reports(
    reports: Sequence[Report],
    labels: Sequence[str],
    *,
    sources: Sequence[str] | None = None,
    allow_different_data: bool = False,
) -> dict[str, Any]:
    """The ``compare`` report document (JSON types) of ``reports`` in the given order.

    ``labels`` name the inputs (file names); ``sources`` says for each whether it was a ``"model"`` audited
    now or a saved ``"report"``. Raises a one-line :class:`UsageError` for fewer than two reports or reports
    of different layer shapes, and a :class:`DataError` for reports of different images unless
    ``allow_different_data``.
    """
    if len(reports) < 2:
        raise UsageError("compare needs at least two models or reports")
    if len(labels) != len(reports):
        raise ValueError("one label per report")
    shapes = [_layer_shape(r) for r in reports]
    if len(set(shapes)) > 1:
        listed = "; ".join(
            f"{label}: {s[0]} x {s[1]} x {'x'.join(map(str, s[2]))}" for label, s in zip(labels, shapes, strict=True)
        )
        raise UsageError(f"the reports audit layers of different shapes ({listed}); kernel indices would not match")
    data = [_data_key(r) for r in reports]
    different_data = len(set(data)) > 1
    if different_data and not allow_different_data:
        listed = "; ".join(
            f"{label}: {d[0]} [{d[1]}], {d[2]} images, seed {d[3]}" for label, d in zip(labels, data, strict=True)
        )
        raise DataError(
            f"the reports were measured on different images ({listed}); pass --allow-different-data to compare "
            "them anyway"
        )
    count = int(shapes[0][0] or len(reports[0]["kernels"]))
    fragile_sets = [set(r.get("fragile") or []) for r in reports]
    kernels = []
    for k in range(count):
        kernels.append(
            {
                "index": k,
                "sides": ["S" if k in f else "S'" for f in fragile_sets],
                "accuracies": [_accuracy_of(r, k) for r in reports],
            }
        )
    times = [sum(k in f for f in fragile_sets) for k in range(count)]
    inputs = []
    for i, (report, label) in enumerate(zip(reports, labels, strict=True)):
        inputs.append(
            {
                "label": label,
                "source": sources[i] if sources else "report",
                "model": (report.get("model") or {}).get("path"),
                "layer": (report.get("layer") or {}).get("name"),
                "data": report.get("data"),
                "baseline_accuracy": report.get("baseline_accuracy"),
                "mean_accuracy": report.get("mean_accuracy"),
                "fragile": sorted(fragile_sets[i]),
                "fragile_share": len(fragile_sets[i]) / count if count else None,
                "attack": (report.get("attack") or {}).get("name"),
                "sweep": _sweep(report),
                "targeting": _targeting(report),
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "compare",
        "inputs": inputs,
        "layer_shape": {"out_channels": shapes[0][0], "in_channels": shapes[0][1], "kernel_shape": list(shapes[0][2])},
        "different_data": different_data,
        "kernels": kernels,
        "fragile_in_all": [k for k in range(count) if times[k] == len(reports)],
        "fragile_in_some": [k for k in range(count) if 0 < times[k] < len(reports)],
        "fragile_in_none": [k for k in range(count) if times[k] == 0],
        "side_changes": sum(
            kernel["sides"][i] != kernel["sides"][i - 1] for kernel in kernels for i in range(1, len(reports))
        ),
    }


def _accuracy_of(report: Report, k: int) -> float | None:
    for kernel in report.get("kernels") or []:
        if kernel.get("index") == k:
            value = kernel.get("accuracy")
            return None if value is None or (isinstance(value, float) and math.isnan(value)) else value
    return None


def common_epsilons(doc: Report) -> list[float]:
    """The ε values every input's sweep measured, ascending."""
    sets = [{e["epsilon"] for e in item["sweep"]} for item in doc["inputs"]]
    return sorted(set.intersection(*sets)) if sets else []


def verdict(doc: Report) -> str:
    """One paragraph: what stayed fragile, what moved, how robustness changed from the first to the last."""
    n, count = len(doc["inputs"]), len(doc["kernels"])
    first, last = doc["inputs"][0], doc["inputs"][-1]
    always, some = doc["fragile_in_all"], doc["fragile_in_some"]
    text = (
        f"{len(always)} of {count} kernels are fragile in all {n} inputs"
        + (f" ({', '.join(map(str, always))})" if always else "")
        + f", {len(some)} in some"
        + (f" ({', '.join(map(str, some))})" if some else "")
        + f", {len(doc['fragile_in_none'])} in none; kernels changed side {doc['side_changes']} time(s) between "
        "consecutive inputs."
    )
    if first.get("baseline_accuracy") is not None and last.get("baseline_accuracy") is not None:
        text += (
            f" Baseline accuracy {100 * first['baseline_accuracy']:.1f}% ({first['label']}) -> "
            f"{100 * last['baseline_accuracy']:.1f}% ({last['label']})"
        )
        shared = [e for e in common_epsilons(doc) if e > 0]
        if shared and first.get("attack") == last.get("attack"):
            eps = shared[len(shared) // 2]
            before = next(e["accuracy"] for e in first["sweep"] if e["epsilon"] == eps)
            after = next(e["accuracy"] for e in last["sweep"] if e["epsilon"] == eps)
            text += f"; under {str(first['attack']).upper()} at ε = {eps:g}: {100 * before:.1f}% -> {100 * after:.1f}%"
        text += "."
    if doc.get("different_data"):
        text += " The inputs were measured on different images (--allow-different-data)."
    return text
