"""Gates a CI can state: ``--fail-under clean=0.90,fgsm@0.01=0.30`` on an audit, ``--max-drop`` between audits.

A gate names a metric of an ``inspect`` report (its JSON document, so saved reports are gated the same way),
an optional ε, and a threshold. Lower bounds (``--fail-under``): ``clean`` (baseline top-1 accuracy),
``fgsm@ε`` / ``pgd@ε`` (accuracy under that attack at ε; the attack must be the one the audit runs),
``worst@ε`` (the lowest accuracy of the attacks run at ε). An upper bound: ``fragile-share`` (|S| / number of
kernels). Every threshold is a fraction in [0, 1]. The regression form (``--max-drop``) bounds how much a
metric may fall from the first report to the last (for ``fragile-share``: how much it may rise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kernelscope.errors import UsageError

#: metric -> whether it takes an ε
METRICS = {"clean": False, "fgsm": True, "pgd": True, "worst": True, "fragile-share": False}


@dataclass(frozen=True)
class Gate:
    """One condition, as the user wrote it: ``metric[@epsilon]=threshold``."""

    metric: str
    epsilon: float | None
    threshold: float

    @property
    def name(self) -> str:
        """``metric`` or ``metric@ε``, as written in messages and the JSON."""
        return self.metric if self.epsilon is None else f"{self.metric}@{self.epsilon:g}"

    @property
    def upper_bound(self) -> bool:
        """True when the metric must stay at or below the threshold (the share of fragile kernels)."""
        return self.metric == "fragile-share"


@dataclass(frozen=True)
class GateOutcome:
    """A gate and what the report measured: ``value`` is ``None`` when the report lacks the metric."""

    gate: Gate
    value: float | None
    passed: bool
    kind: str = "fail-under"  # or "max-drop"

    def summary(self) -> str:
        """``fgsm@0.01 = 0.230 < 0.300`` (or ``drop 0.050 > 0.020`` for the regression form)."""
        if self.value is None:
            return f"{self.gate.name}: not measured"
        if self.kind == "max-drop":
            word = "rise" if self.gate.upper_bound else "drop"
            sign = ">" if not self.passed else "<="
            return f"{self.gate.name} {word} {self.value:.6g} {sign} {self.gate.threshold:g}"
        signs = ("<=", ">") if self.gate.upper_bound else (">=", "<")
        sign = signs[0] if self.passed else signs[1]
        return f"{self.gate.name} = {self.value:.6g} {sign} {self.gate.threshold:g}"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``gates`` in the report)."""
        return {
            "gate": self.gate.name,
            "kind": self.kind,
            "metric": self.gate.metric,
            "epsilon": self.gate.epsilon,
            "threshold": self.gate.threshold,
            "bound": "upper" if self.gate.upper_bound or self.kind == "max-drop" else "lower",
            "value": self.value,
            "passed": self.passed,
        }


def parse_gates(specs: Iterable[str], option: str = "--fail-under") -> list[Gate]:
    """Parse ``metric[@eps]=threshold`` conditions (comma-separated, the option repeatable)."""
    gates: list[Gate] = []
    for spec in specs:
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            gates.append(_parse_one(part, option))
    names = [g.name for g in gates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise UsageError(f"{option} names {', '.join(repeated)} more than once")
    return gates


def _parse_one(part: str, option: str) -> Gate:
    metric_part, sep, threshold_text = part.partition("=")
    example = "e.g. clean=0.9, fgsm@0.01=0.3, worst@0.01=0.2, fragile-share=0.5"
    if not sep:
        raise UsageError(f"{option} takes metric[@eps]=threshold, not {part!r} ({example})")
    metric, at, eps_text = metric_part.strip().lower().partition("@")
    if metric not in METRICS:
        raise UsageError(f"{option}: unknown metric {metric!r} in {part!r}; one of {', '.join(METRICS)}")
    if METRICS[metric] and not at:
        raise UsageError(f"{option}: {metric} needs an ε, e.g. {metric}@0.01=0.3 (in {part!r})")
    if not METRICS[metric] and at:
        raise UsageError(f"{option}: {metric} takes no ε (in {part!r})")
    epsilon = _number(eps_text, part, option, "ε") if at else None
    if epsilon is not None and not epsilon > 0:
        raise UsageError(f"{option}: ε must be positive in {part!r} (clean accuracy is the gate 'clean')")
    threshold = _number(threshold_text, part, option, "threshold")
    if not 0 <= threshold <= 1:
        raise UsageError(f"{option}: the threshold is a fraction in [0, 1], not {threshold_text.strip()!r} in {part!r}")
    return Gate(metric, epsilon, threshold)


def _number(text: str, part: str, option: str, what: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise UsageError(f"{option}: the {what} in {part!r} is not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"{option}: the {what} in {part!r} is not finite")
    return value


def check_runnable(gates: Sequence[Gate], *, attack: bool, attack_method: str, option: str = "--fail-under") -> None:
    """Refuse, before any work, a gate on an attack the audit will not run."""
    for gate in gates:
        if not METRICS[gate.metric]:
            continue
        if not attack:
            raise UsageError(f"{option} {gate.name} needs the attack: drop --no-attack")
        if gate.metric in ("fgsm", "pgd") and gate.metric != attack_method:
            raise UsageError(
                f"{option} {gate.name} needs the {gate.metric.upper()} attack, and this audit runs "
                f"{attack_method.upper()}: pass --attack {gate.metric}, or gate on worst@{gate.epsilon:g}"
            )


def gate_epsilons(gates: Sequence[Gate]) -> tuple[float, ...]:
    """The ε values the gates read: the attack's sweep must include them."""
    return tuple(sorted({g.epsilon for g in gates if g.epsilon is not None}))


def measure(gate: Gate, report: Mapping[str, Any]) -> float | None:
    """The value ``gate`` reads from an ``inspect`` JSON report, or ``None`` when the report lacks it."""
    if gate.metric == "clean":
        return report.get("baseline_accuracy")
    if gate.metric == "fragile-share":
        kernels = report.get("kernels") or []
        fragile = report.get("fragile")
        return len(fragile) / len(kernels) if kernels and fragile is not None else None
    attack = (report.get("attack") or {}).get("name")
    if gate.metric in ("fgsm", "pgd") and attack != gate.metric:
        return None
    for entry in report.get(attack or "fgsm") or []:  # the sweep of the attack that ran: fgsm[] or pgd[]
        if math.isclose(entry["epsilon"], gate.epsilon, rel_tol=1e-9, abs_tol=1e-12):
            return entry["accuracy"]
    return None


def evaluate(gates: Sequence[Gate], report: Mapping[str, Any]) -> list[GateOutcome]:
    """Each gate against one report; a gate whose metric is missing fails."""
    outcomes = []
    for gate in gates:
        value = measure(gate, report)
        if value is None:
            passed = False
        elif gate.upper_bound:
            passed = value <= gate.threshold
        else:
            passed = value >= gate.threshold
        outcomes.append(GateOutcome(gate, value, passed))
    return outcomes


def evaluate_drops(gates: Sequence[Gate], first: Mapping[str, Any], last: Mapping[str, Any]) -> list[GateOutcome]:
    """The regression form: how far each metric moved the wrong way from ``first`` to ``last``."""
    outcomes = []
    for gate in gates:
        before, after = measure(gate, first), measure(gate, last)
        if before is None or after is None:
            outcomes.append(GateOutcome(gate, None, False, "max-drop"))
            continue
        moved = (after - before) if gate.upper_bound else (before - after)
        outcomes.append(GateOutcome(gate, moved, moved <= gate.threshold + 1e-12, "max-drop"))
    return outcomes


def failure_line(outcomes: Sequence[GateOutcome]) -> str | None:
    """One line naming every failed gate, or ``None`` when all passed."""
    failed = [o.summary() for o in outcomes if not o.passed]
    return f"{len(failed)} gate(s) failed: " + "; ".join(failed) if failed else None
