"""The worst-case judgement of a (hardened) model: clean, FGSM, PGD with restarts, transfer, and their worst case.

FGSM alone cannot tell robustness from gradient masking: a model whose gradients became useless looks robust
to it. So every model is attacked at the audit ε by

- **FGSM** (white-box, gradients of the model itself),
- **PGD** (L∞, random start, restarts; an image counts as robust only if no restart fools the model),
- the **transfer** attack: PGD images crafted on the *original* model, judged by this one — a masked
  gradient does not protect against them,

and the **worst case** counts an image only if the model classifies it correctly clean and under every
attack. Predictions come from a *judge* (onnxruntime running the file, or the torch twin during the search);
gradients always come from the model's own differentiable twin. AutoAttack's sanity checks are applied:
PGD weaker than FGSM, or white-box gains without transfer gains, are flagged as likely gradient masking.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from kernelscope.attacks.fgsm import fgsm_perturb
from kernelscope.attacks.gradients import InputGradient
from kernelscope.attacks.pgd import PgdSettings, pgd
from kernelscope.data.preprocessing import PreparedData
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.stats import PairedComparison, paired_comparison

#: The attacks of the judgement, in report order ("worst" is their conjunction with "clean").
ATTACK_NAMES = ("clean", "fgsm", "pgd", "transfer", "worst")

#: Judge: unit pixels (B, H, W, C) -> class scores (B, K).
Judge = Callable[[np.ndarray], np.ndarray]

#: PGD of the held-out judgement (the issue's "20 steps, random start, restarts").
HELD_OUT_PGD = PgdSettings(norm="linf", steps=20, random_start=True, restarts=2)
#: PGD of the validation search: cheaper, the same kind.
SEARCH_PGD = PgdSettings(norm="linf", steps=10, random_start=True, restarts=1)


@dataclass(frozen=True)
class Twin:
    """A differentiable stand-in for the model: a torch module taking the model's input."""

    module: object  # torch.nn.Module
    preprocessing: object  # kernelscope.data.preprocessing.Preprocessing
    loss: str = "cross_entropy"  # the pre-flight's choice: "cross_entropy" or "nll_of_probabilities"
    chunk: int | None = None  # fixed-batch graphs: images per module call

    def gradient(self) -> Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        """(x01, labels) -> (∇ of the loss w.r.t. x01, outputs)."""
        from kernelscope.robustness import _FixedBatchGradient

        inner = InputGradient(self.module, self.preprocessing, self.loss)
        return inner if self.chunk is None else _FixedBatchGradient(inner, self.chunk)

    def objective(self, labels: np.ndarray):
        """The PGD objective (loss to ascend, float64 criterion) for a batch with ``labels``."""
        from kernelscope.robustness import LossObjective

        return LossObjective(self.module, self.preprocessing, self.loss, self.chunk)(labels)

    def scores(self, x01: np.ndarray) -> np.ndarray:
        """The twin's own class scores (used as the judge during the search)."""
        import torch

        from kernelscope.attacks.gradients import module_device
        from kernelscope.robustness import LossObjective

        with torch.no_grad():
            out = LossObjective(self.module, self.preprocessing, self.loss, self.chunk).outputs(
                torch.as_tensor(x01, dtype=torch.float32, device=module_device(self.module))
            )
        return out.double().cpu().numpy()


@dataclass(frozen=True)
class AttackSuite:
    """The attacks' settings: one ε, L∞."""

    epsilon: float
    pgd: PgdSettings = HELD_OUT_PGD
    bounds: tuple[float, float] = (0.0, 1.0)
    seed: int = 0
    batch_size: int = 128

    def describe(self) -> str:
        """E.g. "ε = 0.01: FGSM; L∞ PGD, 20 steps of 2.5·ε/20, random start, 2 restarts; transfer"."""
        return f"ε = {self.epsilon:g}: FGSM; {self.pgd.describe()}; transfer of PGD from the original"


@dataclass
class Robustness:
    """Per-image outcomes of one model on one split at one ε."""

    epsilon: float
    n: int
    correct: dict[str, np.ndarray]  # attack name -> (N,) bool: classified correctly
    warnings: list[str] = field(default_factory=list)

    def accuracy(self, attack: str) -> float:
        """Share of images the model got right under ``attack`` (nan when it was not run)."""
        values = self.correct.get(attack)
        return float(values.mean()) if values is not None and self.n else float("nan")

    def count(self, attack: str) -> int:
        """Images the model got right under ``attack``."""
        return int(self.correct[attack].sum())

    @property
    def attacks(self) -> list[str]:
        """The attacks that were run, in report order."""
        return [a for a in ATTACK_NAMES if a in self.correct]


def craft_transfer(
    twin: Twin, judge: Judge, data: PreparedData, suite: AttackSuite, progress: Progress = NO_PROGRESS
) -> np.ndarray:
    """PGD images (N, H, W, C) float32 crafted on the original model, for the transfer attack.

    Each image keeps the first restart that fools the original model, else the last restart.
    """
    generator = np.random.default_rng(suite.seed + 104729)
    parts = []
    with progress.task(f"Transfer attack: PGD on the original model, {len(data)} images", len(data)) as task:
        for pixels, labels in data.pixel_batches(suite.batch_size):
            x01 = pixels.astype(np.float32) / np.float32(255.0)
            kept = None
            fooled = np.zeros(len(labels), dtype=bool)
            for _ in range(suite.pgd.restarts):
                run = pgd(
                    twin.objective(labels), x01, suite.epsilon, suite.pgd, bounds=suite.bounds, generator=generator
                )
                now = judge(run.adversarial).argmax(axis=1) != labels
                take = ~fooled
                kept = run.adversarial if kept is None else np.where(take[:, None, None, None], run.adversarial, kept)
                fooled |= now
            parts.append(kept)
            task.advance(len(labels))
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def evaluate_robustness(
    judge: Judge,
    twin: Twin,
    data: PreparedData,
    suite: AttackSuite,
    transfer: np.ndarray | None = None,
    progress: Progress = NO_PROGRESS,
    description: str = "Worst-case judgement",
) -> Robustness:
    """Clean, FGSM, PGD (and transfer, when ``transfer`` images are given) outcomes per image, and the worst case."""
    generator = np.random.default_rng(suite.seed + 15485863)
    gradient = twin.gradient()
    outcomes: dict[str, list[np.ndarray]] = {name: [] for name in ("clean", "fgsm", "pgd", "transfer")}
    zero_gradient = 0
    start = 0
    with progress.task(f"{description}: {len(data)} images, {suite.describe()}", len(data)) as task:
        for pixels, labels in data.pixel_batches(suite.batch_size):
            x01 = pixels.astype(np.float32) / np.float32(255.0)
            outcomes["clean"].append(judge(x01).argmax(axis=1) == labels)
            grad, _ = gradient(x01, labels)
            grad = np.where(np.isfinite(grad), grad, 0.0)
            zero_gradient += int(np.count_nonzero(~grad.reshape(len(labels), -1).any(axis=1)))
            adversarial = fgsm_perturb(x01, np.sign(grad).astype(np.float32), suite.epsilon, suite.bounds)
            outcomes["fgsm"].append(judge(adversarial).argmax(axis=1) == labels)
            survived = np.ones(len(labels), dtype=bool)
            for _ in range(suite.pgd.restarts):
                run = pgd(
                    twin.objective(labels), x01, suite.epsilon, suite.pgd, bounds=suite.bounds, generator=generator
                )
                survived &= judge(run.adversarial).argmax(axis=1) == labels
            outcomes["pgd"].append(survived)
            if transfer is not None:
                crafted = transfer[start : start + len(labels)]
                outcomes["transfer"].append(judge(crafted).argmax(axis=1) == labels)
            start += len(labels)
            task.advance(len(labels))
    correct = {name: np.concatenate(v) for name, v in outcomes.items() if v}
    worst = np.logical_and.reduce([correct[name] for name in correct])
    correct["worst"] = worst
    result = Robustness(suite.epsilon, len(data), correct)
    if zero_gradient:
        result.warnings.append(
            f"{zero_gradient} of {len(data)} images had an all-zero input gradient: white-box attacks cannot move them"
        )
    if result.accuracy("pgd") > result.accuracy("fgsm") + 1e-12:
        result.warnings.append(
            f"PGD ({result.accuracy('pgd'):.1%}) is weaker than FGSM ({result.accuracy('fgsm'):.1%}): likely gradient "
            "masking; trust the transfer and worst-case numbers"
        )
    return result


@dataclass(frozen=True)
class RobustnessChange:
    """Before vs after on the same images: one paired comparison per attack."""

    epsilon: float
    comparisons: dict[str, PairedComparison]  # attack name -> paired comparison (after − before)
    warnings: list[str]


def compare_robustness(before: Robustness, after: Robustness) -> RobustnessChange:
    """Paired comparisons (exact McNemar, CI of the difference) per attack, and the gradient-masking checks."""
    comparisons = {
        name: paired_comparison(before.correct[name], after.correct[name])
        for name in before.attacks
        if name in after.correct
    }
    warnings = []
    white = comparisons.get("pgd")
    transfer = comparisons.get("transfer")
    if white is not None and transfer is not None and white.difference > 0 and transfer.difference <= 0:
        warnings.append(
            f"white-box PGD accuracy rose ({white.difference:+.1%}) but transfer accuracy did not "
            f"({transfer.difference:+.1%}): likely gradient masking, not robustness"
        )
    return RobustnessChange(before.epsilon, comparisons, warnings)
