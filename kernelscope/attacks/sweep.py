"""Attack ε sweeps (FGSM, PGD) with adversarial targeting, judged by the deployed model in onnxruntime.

FGSM, per image batch: one forward+backward through the differentiable twin gives sign(∇ₓ loss); then, for
every ε, one onnxruntime run of the deployed model gives the prediction and the first Conv's output (for
targeting). PGD needs its own optimization per ε (steps x forward+backward), then the same onnxruntime run.
The clean run (ε = 0) is shared by all ε.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from kernelscope.attacks.fgsm import fgsm_perturb
from kernelscope.attacks.pgd import Objective, PgdSettings, pgd
from kernelscope.data.preprocessing import PreparedData
from kernelscope.errors import UsageError
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.stats import wilson_interval
from kernelscope.targeting import attacks_fragile, kernel_distances, kernel_norms

GradientFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
#: labels (B,) -> the PGD objective for a batch with those labels (see :mod:`kernelscope.attacks.pgd`)
ObjectiveFactory = Callable[[np.ndarray], Objective]


@dataclass(frozen=True)
class EpsilonAccuracy:
    """Top-1 accuracy of the deployed model on adversarial images of one ε, with a 95 % Wilson interval."""

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
    site: str = "conv"  # the tensor compared: "conv" (the Conv's output) or "activation" (after BN / bias / act.)

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
    """The whole sweep of one attack (``name``: "fgsm" or "pgd")."""

    epsilons: list[float]
    bounds: tuple[float, float]
    accuracy: list[EpsilonAccuracy]
    targeting: list[EpsilonTargeting]
    zero_gradient_images: int
    nonfinite_gradient_images: int
    seconds_gradient: float
    seconds_evaluation: float
    name: str = "fgsm"
    pgd: PgdSettings | None = None  # the settings, for a PGD sweep
    #: images per attack loss at the clean images (keys of ``gradients.ATTACK_LOSSES``: ``cross_entropy``,
    #: ``cross_entropy_float64``, ``logit_margin``, ``none``); None when the gradient function does not count
    loss_usage: dict[str, int] | None = None
    #: targeting of each of the evaluator's extra sites (further layers), in their order
    layer_targeting: list[list[EpsilonTargeting]] = field(default_factory=list)

    @property
    def fgsm(self) -> list[EpsilonAccuracy]:
        """Accuracy per ε of an FGSM sweep (refuses a PGD sweep rather than mislabel its numbers)."""
        if self.name != "fgsm":
            raise ValueError(f"this sweep ran {self.name.upper()}, not FGSM: use .accuracy")
        return self.accuracy


def check_epsilons(epsilons: Sequence[float], bounds: tuple[float, float]) -> list[float]:
    """Sorted unique ε with 0 included; negative or non-finite values are a usage error."""
    values = sorted({float(e) for e in epsilons} | {0.0})
    if any(not np.isfinite(e) or e < 0 for e in values):
        raise UsageError(f"epsilons must be finite and >= 0, not {list(epsilons)}")
    low, high = bounds
    if not (np.isfinite(low) and np.isfinite(high) and low < high):
        raise UsageError(f"pixel bounds must satisfy lo < hi, not {bounds}")
    return values


@dataclass
class _Clock:
    """Seconds spent making adversarial images vs running the deployed model."""

    attack: float = 0.0
    evaluation: float = 0.0

    def evaluate(self, evaluator: OnnxEvaluator, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]]:
        started = time.perf_counter()
        try:
            return evaluator.run_all(x)
        finally:
            self.evaluation += time.perf_counter() - started


#: Per batch: (x01, labels, clean scores) -> for each ε > 0 in order, (adversarial scores, site tensors: the
#: evaluator's site, None without one, then its extra sites).
_BatchAttack = Callable[[np.ndarray, np.ndarray, np.ndarray], Iterator[tuple[np.ndarray, list[np.ndarray | None]]]]


def _sweep(
    name: str,
    attack: _BatchAttack,
    clock: _Clock,
    gradient_stats: list[int],
    evaluator: OnnxEvaluator,
    data: PreparedData,
    eps: list[float],
    *,
    fragile: list[int],
    null: list[int],
    bounds: tuple[float, float],
    batch_size: int,
    progress: Progress,
    description: str,
    pgd_settings: PgdSettings | None = None,
    targeting_at: str = "conv",
    gradient: object = None,
    layer_targets: Sequence[tuple[list[int], list[int]]] = (),
) -> SweepResult:
    """Accuracy and targeting counts of every ε; ``attack`` yields the deployed model's outputs per ε > 0.

    ``gradient``: the clean-point gradient function; when it counts the losses it used (a ``usage`` attribute,
    see :class:`kernelscope.attacks.gradients.InputGradient`), the sweep reports this sweep's share of them.
    ``layer_targets``: (fragile, null) of each of the evaluator's extra sites; their targeting is counted from
    the same adversarial images (one attack serves every layer)."""
    usage = getattr(gradient, "usage", None)
    usage_before = usage.snapshot() if usage is not None else None
    targets = [(fragile, null), *layer_targets]
    correct = np.zeros(len(eps), dtype=np.int64)
    raw_hits = np.zeros((len(targets), len(eps)), dtype=np.int64)
    normalized_hits = np.zeros((len(targets), len(eps)), dtype=np.int64)
    normalize = data.preprocessing.normalize
    with progress.task(description, total=len(data) * len(eps)) as task:
        for pixels, labels in data.pixel_batches(batch_size):
            x01 = pixels.astype(np.float32) / np.float32(255.0)
            clean_scores, clean_sites = clock.evaluate(evaluator, normalize(x01 * np.float32(255.0)))
            clean_norms = [kernel_norms(site) if site is not None else None for site in clean_sites]
            correct[0] += int(np.count_nonzero(clean_scores.argmax(axis=1) == labels))
            task.advance(len(labels))
            for i, (scores, sites) in enumerate(attack(x01, labels, clean_scores), start=1):
                for j, site in enumerate(sites):
                    if site is None:
                        continue
                    distances = kernel_distances(clean_sites[j], site)
                    raw, rel = attacks_fragile(distances, clean_norms[j], *targets[j])
                    raw_hits[j, i] += int(raw.sum())
                    normalized_hits[j, i] += int(rel.sum())
                correct[i] += int(np.count_nonzero(scores.argmax(axis=1) == labels))
                task.advance(len(labels))
    n = len(data)

    def targeting(j: int) -> list[EpsilonTargeting]:
        return [
            EpsilonTargeting(e, n, int(r), int(z), targeting_at)
            for e, r, z in zip(eps, raw_hits[j], normalized_hits[j], strict=True)
            if e > 0
        ]

    return SweepResult(
        epsilons=eps,
        bounds=bounds,
        accuracy=[
            EpsilonAccuracy(e, int(c), n, float(c / n), wilson_interval(int(c), n))
            for e, c in zip(eps, correct, strict=True)
        ],
        targeting=targeting(0) if evaluator.site is not None else [],
        layer_targeting=[targeting(j) for j in range(1, len(targets))],
        zero_gradient_images=gradient_stats[0],
        nonfinite_gradient_images=gradient_stats[1],
        seconds_gradient=clock.attack,
        seconds_evaluation=clock.evaluation,
        name=name,
        pgd=pgd_settings,
        loss_usage=(
            {k: v - usage_before.get(k, 0) for k, v in usage.snapshot().items()} if usage is not None else None
        ),
    )


def _clean_gradient(gradient: GradientFn, x01: np.ndarray, labels: np.ndarray, stats: list[int]) -> np.ndarray:
    """The input gradient at the clean images, with non-finite entries zeroed; counts the odd images in ``stats``."""
    grad, _ = gradient(x01, labels)
    rows = grad.reshape(len(labels), -1)
    stats[1] += int(np.count_nonzero(~np.isfinite(rows).all(axis=1)))
    grad = np.where(np.isfinite(grad), grad, 0.0)
    stats[0] += int(np.count_nonzero(~grad.reshape(len(labels), -1).any(axis=1)))
    return grad


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
    targeting_at: str = "conv",
    layer_targets: Sequence[tuple[list[int], list[int]]] = (),
) -> SweepResult:
    """Accuracy under FGSM and the targeting counts for every ε of ``epsilons`` (ε = 0 is the clean run).

    Targeting compares the evaluator's site tensor; ``targeting_at`` names it in the result (``conv`` or
    ``activation``).
    """
    eps = check_epsilons(epsilons, bounds)
    clock, stats = _Clock(), [0, 0]
    normalize = data.preprocessing.normalize

    def attack(x01: np.ndarray, labels: np.ndarray, clean_scores: np.ndarray):
        started = time.perf_counter()
        sign = np.sign(_clean_gradient(gradient, x01, labels, stats)).astype(np.float32)
        clock.attack += time.perf_counter() - started
        for epsilon in eps[1:]:
            adversarial = fgsm_perturb(x01, sign, epsilon, bounds)
            yield clock.evaluate(evaluator, normalize(adversarial * np.float32(255.0)))

    return _sweep(
        "fgsm", attack, clock, stats, evaluator, data, eps, fragile=fragile, null=null, bounds=bounds,
        batch_size=batch_size, progress=progress,
        description=f"FGSM sweep, {len(eps)} epsilons on {len(data)} images", targeting_at=targeting_at,
        gradient=gradient, layer_targets=layer_targets,
    )  # fmt: skip


def pgd_sweep(
    objective: ObjectiveFactory,
    gradient: GradientFn,
    evaluator: OnnxEvaluator,
    data: PreparedData,
    epsilons: Sequence[float],
    *,
    settings: PgdSettings,
    fragile: list[int],
    null: list[int],
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    seed: int = 0,
    loss: str = "cross_entropy",
    progress: Progress = NO_PROGRESS,
    targeting_at: str = "conv",
    layer_targets: Sequence[tuple[list[int], list[int]]] = (),
) -> SweepResult:
    """Accuracy under PGD and the targeting counts for every ε (a separate optimization per ε).

    ``objective(labels)`` gives the loss to ascend for a batch (its criterion picks the kept iterate);
    ``gradient`` is used once per image at the clean point, only to count all-zero and non-finite input
    gradients as FGSM does. With several restarts, each image keeps the first restart that fools the
    deployed model, else the one with the highest loss *of the deployed model*.
    """
    settings.check()
    eps = check_epsilons(epsilons, bounds)
    clock, stats = _Clock(), [0, 0]
    normalize = data.preprocessing.normalize
    generator = np.random.default_rng(seed)

    def attack(x01: np.ndarray, labels: np.ndarray, clean_scores: np.ndarray):
        started = time.perf_counter()
        _clean_gradient(gradient, x01, labels, stats)
        batch_objective = objective(labels)
        clock.attack += time.perf_counter() - started
        for epsilon in eps[1:]:
            best_scores = best_sites = None
            fooled = np.zeros(len(labels), dtype=bool)
            best_loss = np.full(len(labels), -np.inf)
            for restart in range(settings.restarts):
                started = time.perf_counter()
                run = pgd(batch_objective, x01, epsilon, settings, bounds=bounds, generator=generator)
                clock.attack += time.perf_counter() - started
                scores, sites = clock.evaluate(evaluator, normalize(run.adversarial * np.float32(255.0)))
                now_fooled = scores.argmax(axis=1) != labels
                now_loss = _deployed_loss(scores, labels, loss)
                # Keep the first restart that fools the deployed model; until one does, the highest loss.
                take = ~fooled & (now_fooled | (now_loss > best_loss))
                if restart == 0:
                    take[:] = True  # even a NaN loss: the first run is the fallback
                best_scores = scores if best_scores is None else np.where(take[:, None], scores, best_scores)
                if best_sites is None:
                    best_sites = list(sites)
                else:
                    best_sites = [
                        None if site is None else np.where(take.reshape(-1, *([1] * (site.ndim - 1))), site, best)
                        for site, best in zip(sites, best_sites, strict=True)
                    ]
                fooled |= now_fooled
                best_loss = np.where(take, now_loss, best_loss)
            yield best_scores, best_sites

    description = f"PGD sweep ({settings.describe()}), {len(eps)} epsilons on {len(data)} images"
    return _sweep(
        "pgd", attack, clock, stats, evaluator, data, eps, fragile=fragile, null=null, bounds=bounds,
        batch_size=batch_size, progress=progress, description=description, pgd_settings=settings,
        targeting_at=targeting_at, gradient=gradient, layer_targets=layer_targets,
    )  # fmt: skip


def _deployed_loss(scores: np.ndarray, labels: np.ndarray, loss: str) -> np.ndarray:
    """The attack loss of the deployed model's outputs per image: ranks restarts that fool nobody.

    ``loss`` is the pre-flight's choice: cross-entropy on logits, or -log p[label] for a model that outputs
    probabilities.
    """
    scores = scores.astype(np.float64)
    rows = np.arange(len(labels))
    if loss == "nll_of_probabilities":
        return -np.log(np.clip(scores[rows, labels], 1e-300, None))
    shifted = scores - scores.max(axis=1, keepdims=True)
    return np.log(np.exp(shifted).sum(axis=1)) - shifted[rows, labels]
