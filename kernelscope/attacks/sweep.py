"""The FGSM ε sweep with adversarial targeting, judged by the deployed model in onnxruntime.

Per image batch: one forward+backward through the differentiable twin gives sign(∇ₓ loss); then, for
every ε, one onnxruntime run of the deployed model gives the prediction and the first Conv's output
(for targeting). The clean run (ε = 0) is shared by all ε.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from kernelscope.attacks.fgsm import fgsm_perturb
from kernelscope.data.preprocessing import PreparedData
from kernelscope.errors import UsageError
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.stats import wilson_interval
from kernelscope.targeting import attacks_fragile, kernel_distances, kernel_norms

GradientFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class EpsilonAccuracy:
    """Top-1 accuracy of the deployed model on FGSM images of one ε, with a 95 % Wilson interval."""

    epsilon: float
    correct: int
    n: int
    accuracy: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class EpsilonTargeting:
    """How many examples' attacks move the fragile kernels more than the null ones, at one ε."""

    epsilon: float
    n: int
    attacking_fragile: int
    attacking_fragile_normalized: int

    @property
    def fraction(self) -> float:
        """Share of examples with S_f > S_n on raw distances."""
        return self.attacking_fragile / self.n if self.n else float("nan")

    @property
    def fraction_normalized(self) -> float:
        """Share of examples with S_f > S_n on distances relative to the clean output norms."""
        return self.attacking_fragile_normalized / self.n if self.n else float("nan")


@dataclass(frozen=True)
class SweepResult:
    """The whole sweep."""

    epsilons: list[float]
    bounds: tuple[float, float]
    fgsm: list[EpsilonAccuracy]
    targeting: list[EpsilonTargeting]
    zero_gradient_images: int
    nonfinite_gradient_images: int
    seconds_gradient: float
    seconds_evaluation: float


def check_epsilons(epsilons: Sequence[float], bounds: tuple[float, float]) -> list[float]:
    """Sorted unique ε with 0 included; negative or non-finite values are a usage error."""
    values = sorted({float(e) for e in epsilons} | {0.0})
    if any(not np.isfinite(e) or e < 0 for e in values):
        raise UsageError(f"epsilons must be finite and >= 0, not {list(epsilons)}")
    low, high = bounds
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise UsageError(f"pixel bounds must satisfy lo < hi, not {bounds}")
    return values


def fgsm_sweep(
    gradient: GradientFn,
    evaluator: OnnxEvaluator,
    data: PreparedData,
    epsilons: Sequence[float],
    *,
    fragile: list[int],
    null: list[int],
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    progress: Progress = NO_PROGRESS,
) -> SweepResult:
    """Accuracy under FGSM and the targeting counts for every ε of ``epsilons`` (ε = 0 is the clean run)."""
    eps = check_epsilons(epsilons, bounds)
    correct = np.zeros(len(eps), dtype=np.int64)
    raw_hits = np.zeros(len(eps), dtype=np.int64)
    normalized_hits = np.zeros(len(eps), dtype=np.int64)
    zero_grad = nonfinite = 0
    grad_seconds = eval_seconds = 0.0
    normalize = data.preprocessing.normalize
    with progress.task(f"FGSM sweep, {len(eps)} epsilons on {len(data)} images", total=len(data) * len(eps)) as task:
        for pixels, labels in data.pixel_batches(batch_size):
            x01 = pixels.astype(np.float32) / np.float32(255.0)
            started = time.perf_counter()
            grad, _ = gradient(x01, labels)
            grad_seconds += time.perf_counter() - started
            finite = np.isfinite(grad).reshape(len(labels), -1).all(axis=1)
            nonfinite += int(np.count_nonzero(~finite))
            grad = np.where(np.isfinite(grad), grad, 0.0)
            zero_grad += int(np.count_nonzero(~grad.reshape(len(labels), -1).any(axis=1)))
            sign = np.sign(grad).astype(np.float32)
            started = time.perf_counter()
            clean_scores, clean_site = evaluator.run(normalize(x01 * np.float32(255.0)))
            clean_norms = kernel_norms(clean_site) if clean_site is not None else None
            for i, epsilon in enumerate(eps):
                if epsilon == 0.0:
                    scores, site = clean_scores, clean_site
                else:
                    adversarial = fgsm_perturb(x01, sign, epsilon, bounds)
                    scores, site = evaluator.run(normalize(adversarial * np.float32(255.0)))
                    if site is not None:
                        distances = kernel_distances(clean_site, site)
                        raw, rel = attacks_fragile(distances, clean_norms, fragile, null)
                        raw_hits[i] += int(raw.sum())
                        normalized_hits[i] += int(rel.sum())
                correct[i] += int(np.count_nonzero(scores.argmax(axis=1) == labels))
                task.advance(len(labels))
            eval_seconds += time.perf_counter() - started
    n = len(data)
    return SweepResult(
        epsilons=eps,
        bounds=bounds,
        fgsm=[
            EpsilonAccuracy(e, int(c), n, float(c / n), wilson_interval(int(c), n))
            for e, c in zip(eps, correct, strict=True)
        ],
        targeting=[
            EpsilonTargeting(e, n, int(r), int(z))
            for e, r, z in zip(eps, raw_hits, normalized_hits, strict=True)
            if e > 0 and evaluator.site is not None
        ],
        zero_gradient_images=zero_grad,
        nonfinite_gradient_images=nonfinite,
        seconds_gradient=grad_seconds,
        seconds_evaluation=eval_seconds,
    )
