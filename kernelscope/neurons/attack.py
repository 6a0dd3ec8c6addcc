"""The single-neuron attack (Suri & Evans) and the untargeted PGD it is compared with.

For an image x, a neuron i and its sensitivity Δ(i, x), the target features are t = f(x) + Δ(i, x)·e_i
(the features at which neuron i alone ties the predicted class with another). The attack minimises

    ‖f(x′) − t‖₂ / ‖t‖₂ + λ · |f_i(x′) − t_i| / |t_i|

over x′ in the ε-ball with PGD, keeping the iterate with the highest cross-entropy of the logits against
the clean prediction (computed in float64: in float32 it is exactly 0 on confident images, and every
iterate would tie) — except that an iterate the mirror already classifies differently ends the search of
its (image, neuron) pair: it is kept, and the pair's remaining steps are not run (the other pairs carry on).
It succeeds when the deployed model's prediction changes. The comparison is an untargeted PGD with the same
norm, ε, steps and step size that ascends that cross-entropy directly, stopped the same way.
Gradients come from the parity-checked PyTorch mirror; success is judged by onnxruntime.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from kernelscope.attacks.gradients import model_input_from_unit_pixels, module_device, precise_cross_entropy
from kernelscope.attacks.pgd import PgdSettings, pgd
from kernelscope.data.preprocessing import PreparedData, Preprocessing
from kernelscope.neurons.sensitivity import Sensitivity
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.stats import wilson_interval

#: A zero target norm or target value is replaced by this (explicit guard against 0/0): the term then
#: dominates and pushes the feature to exactly its (zero) target.
_TINY = 1e-12
#: Added to the criterion of an iterate the mirror classifies differently from the clean prediction: above any
#: cross-entropy, so PGD keeps the first such iterate and stops that example there (``pgd(done_at=...)``).
FOOLED = 1e12


@dataclass
class HeadTwin:
    """The mirror's features f and logits z of the final linear layer for unit pixels x01 (N, H, W, C)."""

    mirror: object  # kernelscope.mirror.OnnxMirror (torch module)
    preprocessing: Preprocessing
    image_input: str
    feature_tensor: str
    logits_tensor: str
    chunk: int | None = None  # a fixed batch the graph needs, else None

    def __call__(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.chunk is None:
            return self._run(x01)
        features, logits = [], []
        for start in range(0, x01.shape[0], self.chunk):
            piece = x01[start : start + self.chunk]
            real = piece.shape[0]
            if real < self.chunk:
                # Padding copies of the last image; their outputs are dropped, so they add no gradient.
                piece = torch.cat([piece, piece[-1:].expand(self.chunk - real, *piece.shape[1:])])
            f, z = self._run(piece)
            features.append(f[:real])
            logits.append(z[:real])
        return torch.cat(features), torch.cat(logits)

    def _run(self, x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The mirror's device computes; f and z come back to x01's (PGD's iterates stay on the CPU).
        model_input = model_input_from_unit_pixels(x01.to(module_device(self.mirror)), self.preprocessing)
        out = self.mirror.run({self.image_input: model_input}, [self.feature_tensor, self.logits_tensor])
        n = x01.shape[0]
        features, logits = out[self.feature_tensor].reshape(n, -1), out[self.logits_tensor].reshape(n, -1)
        return features.to(x01.device), logits.to(x01.device)


@dataclass(frozen=True)
class AttackSettings:
    """The neuron attack's PGD (defaults: L2, ε = 0.5 in [0, 1] pixel units, 50 steps of 2.5·ε/50, no random
    start) and its weight λ on the targeted neuron."""

    epsilon: float = 0.5
    pgd: PgdSettings = field(default_factory=lambda: PgdSettings(norm="l2", steps=50, random_start=False))
    lam: float = 10.0
    ks: tuple[int, ...] = (1, 4, 8, 16)


@dataclass(frozen=True)
class RateAtK:
    """Success over images when any of the first k ranked neurons is attacked."""

    k: int
    successes: int
    n: int
    rate: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class SingleNeuronResult:
    """The single-neuron attack over the data."""

    rates: list[RateAtK]
    attacks: int  # (image, neuron) attacks run (later groups of ranks are skipped once an image is fooled)
    skipped_infinite: int  # ranked neurons not attacked because they cannot flip the prediction alone
    moved_toward_target: int  # attacks that left f_i closer to t_i than the clean image was
    seconds: float


@dataclass(frozen=True)
class PgdComparison:
    """Untargeted PGD with the same budget, on the same images."""

    successes: int
    n: int
    rate: float
    ci95: tuple[float, float]
    seconds: float


class FeatureRunner(Protocol):
    """What the attacks need from the deployed model: predictions and features of unit-pixel images."""

    def __call__(self, x01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores (N, K) of the scored output, features (N, d)) of the deployed model."""


def single_neuron_attack(
    twin: HeadTwin,
    deployed: FeatureRunner,
    data: PreparedData,
    sensitivity: Sensitivity,
    features: np.ndarray,
    clean_predictions: np.ndarray,
    settings: AttackSettings,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    seed: int = 0,
    progress: Progress = NO_PROGRESS,
) -> SingleNeuronResult:
    """Attack the first max(k) ranked neurons of every image, one neuron at a time (see the module docstring).

    Success at k counts the images fooled by any of their first k neurons. The ranks are attacked in the
    groups the k values delimit (1; 2-4; 5-8; 9-16 by default), each group's (image, neuron) pairs together in
    batches of ``batch_size``; an image already fooled by an earlier group is not attacked again. That changes
    no success rate at any k and saves most of the work when the first neurons succeed.
    ``features`` and ``clean_predictions`` are the deployed model's; ``seed`` draws the random starts (with
    ``random_start``), as ``--seed`` does for ``inspect --attack pgd``.
    """
    started = time.perf_counter()
    n, width = len(data), sensitivity.ranking.shape[1]
    bounds_k = [k for k in sorted(set(settings.ks)) if k <= width] or [width]
    groups = list(zip([0, *bounds_k[:-1]], bounds_k, strict=True))
    fooled_at = np.full(n, -1)  # rank (0-based) of the first successful attack on each image, -1: none
    attacks = skipped = moved = 0
    generator = np.random.default_rng(seed)
    label = f"Single-neuron attack, {bounds_k[-1]} ranked neurons on {n} images"
    with progress.task(label, total=n * bounds_k[-1]) as task:
        offset = 0
        for pixels, _ in data.pixel_batches(batch_size):
            x01 = pixels.astype(np.float32) / np.float32(255.0)
            rows = np.arange(offset, offset + len(x01))
            for first, stop in groups:
                open_rows = rows[fooled_at[rows] < 0]
                image = np.repeat(open_rows, stop - first)  # (image, rank) pairs of this group
                rank = np.tile(np.arange(first, stop), len(open_rows))
                neuron = sensitivity.ranking[image, rank]
                delta = sensitivity.deltas[image, neuron]
                finite = np.isfinite(delta)
                skipped += int(np.count_nonzero(~finite))
                image, rank, neuron, delta = image[finite], rank[finite], neuron[finite], delta[finite]
                success = np.zeros(len(image), dtype=bool)
                for start in range(0, len(image), batch_size):
                    part = slice(start, start + batch_size)
                    hits, closer = _attack_pairs(
                        twin, deployed, x01[image[part] - offset], features[image[part]], neuron[part], delta[part],
                        clean_predictions[image[part]], settings, bounds, generator,
                    )  # fmt: skip
                    success[part] = hits
                    moved += closer
                attacks += len(image)
                for i, r in zip(image[success], rank[success], strict=True):
                    fooled_at[i] = r if fooled_at[i] < 0 else min(fooled_at[i], r)
                task.advance(len(rows) * (stop - first))
            offset += len(x01)
    rates = []
    for k in sorted(set(settings.ks)):
        hits = int(np.count_nonzero((fooled_at >= 0) & (fooled_at < k)))
        rates.append(RateAtK(k, hits, n, hits / n if n else float("nan"), wilson_interval(hits, n)))
    return SingleNeuronResult(rates, attacks, skipped, moved, time.perf_counter() - started)


def _attack_pairs(
    twin: HeadTwin,
    deployed: FeatureRunner,
    x01: np.ndarray,
    features: np.ndarray,
    neurons: np.ndarray,
    deltas: np.ndarray,
    labels: np.ndarray,
    settings: AttackSettings,
    bounds: tuple[float, float],
    generator: np.random.Generator,
) -> tuple[np.ndarray, int]:
    """One PGD run on (image, neuron) pairs: which changed the deployed prediction, and how many moved f_i closer."""
    rows = np.arange(len(neurons))
    target = features.astype(np.float64).copy()
    target[rows, neurons] += deltas
    objective = _neuron_objective(twin, target, neurons, labels, settings.lam)

    def restrict(keep: np.ndarray):
        return _neuron_objective(twin, target[keep], neurons[keep], labels[keep], settings.lam)

    run = pgd(
        objective, x01, settings.epsilon, settings.pgd, bounds=bounds, generator=generator, done_at=FOOLED,
        restrict=restrict,
    )  # fmt: skip
    scores, reached = deployed(run.adversarial)
    gap = np.abs(reached[rows, neurons].astype(np.float64) - target[rows, neurons])
    return scores.argmax(axis=1) != labels, int(np.count_nonzero(gap < np.abs(deltas)))


def _neuron_objective(twin: HeadTwin, target: np.ndarray, neurons: np.ndarray, labels: np.ndarray, lam: float):
    """PGD objective: ascend minus the feature loss; criterion: cross-entropy of the logits against ``labels``,
    plus :data:`FOOLED` where the mirror's prediction already differs from ``labels``."""
    t = torch.as_tensor(target, dtype=torch.float32)
    picked = torch.as_tensor(neurons, dtype=torch.long)
    rows = torch.arange(len(neurons))
    t_i = t[rows, picked]
    t_norm = t.norm(dim=1).clamp_min(_TINY)  # explicit guards against a zero target
    t_i_size = t_i.abs().clamp_min(_TINY)
    y = torch.as_tensor(labels, dtype=torch.long)

    def objective(x01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, z = twin(x01)
        loss = (f - t).norm(dim=1) / t_norm + lam * (f[rows, picked] - t_i).abs() / t_i_size
        return -loss, fooled_criterion(z, y)

    return objective


def fooled_criterion(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Float64 cross-entropy of logits ``z`` against ``y``, plus :data:`FOOLED` where argmax z differs from y."""
    return precise_cross_entropy(z, y) + FOOLED * (z.detach().argmax(dim=1) != y).double()


def pgd_comparison(
    twin: HeadTwin,
    deployed: FeatureRunner,
    data: PreparedData,
    clean_predictions: np.ndarray,
    settings: AttackSettings,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    seed: int = 0,
    progress: Progress = NO_PROGRESS,
) -> PgdComparison:
    """Untargeted PGD on the cross-entropy against the clean prediction, same norm, ε, steps and step size.

    ``seed`` draws the random starts (with ``random_start``).
    """
    started = time.perf_counter()
    n = len(data)
    hits = 0
    generator = np.random.default_rng(seed)
    with progress.task(f"Untargeted PGD on {n} images", total=n) as task:
        offset = 0
        for pixels, _ in data.pixel_batches(batch_size):
            x01 = pixels.astype(np.float32) / np.float32(255.0)
            labels = torch.as_tensor(clean_predictions[offset : offset + len(x01)], dtype=torch.long)

            def objective(x: torch.Tensor, labels: torch.Tensor = labels) -> tuple[torch.Tensor, torch.Tensor]:
                logits = twin(x)[1]
                return F.cross_entropy(logits, labels, reduction="none"), fooled_criterion(logits, labels)

            def restrict(keep: np.ndarray, labels: torch.Tensor = labels):
                return lambda x: objective(x, labels[torch.as_tensor(keep)])

            run = pgd(
                objective, x01, settings.epsilon, settings.pgd, bounds=bounds, generator=generator, done_at=FOOLED,
                restrict=restrict,
            )  # fmt: skip
            scores, _ = deployed(run.adversarial)
            hits += int(np.count_nonzero(scores.argmax(axis=1) != labels.numpy()))
            offset += len(x01)
            task.advance(len(x01))
    return PgdComparison(
        hits, n, hits / n if n else float("nan"), wilson_interval(hits, n), time.perf_counter() - started
    )
