"""Neuron sensitivity on the features of the final linear layer (Suri & Evans, "One Neuron to Fool Them All").

For an image with features f (d of them), logits z = W f + b and predicted class ŷ = argmax z: changing
f_i alone by δ moves z_j − z_ŷ by (W[j,i] − W[ŷ,i]) δ, so the change that makes z_j equal z_ŷ is

    δ_j = (z_ŷ − z_j) / (W[j,i] − W[ŷ,i])        (no δ_j when W[j,i] = W[ŷ,i]: f_i cannot close that gap)

Δ(i, x) is the δ_j of smallest magnitude over j ≠ ŷ; when f is a ReLU output only δ_j with f_i + δ_j >= 0
count (a ReLU cannot go below 0). No valid δ_j: neuron i alone cannot change the prediction (Δ = ∞).
Neurons are ranked per image by (|Δ| − μ_i) / σ_i, with μ_i and σ_i the mean and standard deviation of f_i
over the data, smallest first.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Image-class-neuron triples per chunk of the vectorized computation (about 32 MB of float64 at a time).
_CHUNK_ELEMENTS = 4_000_000


def neuron_deltas(
    features: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, relu: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Δ(i, x) for every image and neuron (N, d; +inf where the neuron cannot flip), and ŷ (N,).

    ``features`` (N, d), ``weight`` (K, d), ``bias`` (K,); computed in float64. Adding Δ(i, x) to f_i makes
    the logit of some other class exactly equal to z_ŷ (a tie), and no smaller change of f_i does.
    """
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    n, d = f.shape
    k = w.shape[0]
    if w.shape[1] != d:
        raise ValueError(f"features have {d} values per image but the weight has {w.shape[1]} columns")
    logits = f @ w.T + b
    predicted = logits.argmax(axis=1)
    deltas = np.full((n, d), np.inf)
    step = max(1, _CHUNK_ELEMENTS // max(1, k * d))
    classes = np.arange(k)
    for start in range(0, n, step):
        rows = slice(start, start + step)
        z, y, fc = logits[rows], predicted[rows], f[rows]
        m = len(y)
        gap = z[np.arange(m), y][:, None] - z  # (m, K): z_ŷ − z_j >= 0
        slope = w[None, :, :] - w[y][:, None, :]  # (m, K, d): W[j,i] − W[ŷ,i]
        # Explicit guard: equal weights give no δ (the gap cannot be closed by f_i), not a division by zero.
        valid = slope != 0
        delta = np.divide(gap[:, :, None], slope, out=np.zeros_like(slope), where=valid)
        valid &= (classes[None, :] != y[:, None])[:, :, None]
        if relu:
            valid &= fc[:, None, :] + delta >= 0
        size = np.where(valid, np.abs(delta), np.inf)
        best = size.argmin(axis=1)  # (m, d): the class reached first
        chosen = np.take_along_axis(delta, best[:, None, :], axis=1)[:, 0, :]
        found = np.isfinite(np.take_along_axis(size, best[:, None, :], axis=1)[:, 0, :])
        deltas[rows] = np.where(found, chosen, np.inf)
    return deltas, predicted


def scaled_sensitivity(deltas: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(|Δ| − μ_i) / σ_i per image and neuron; +inf where Δ is infinite or σ_i = 0 (a constant neuron)."""
    with np.errstate(invalid="ignore", over="ignore"):
        size = np.abs(deltas)
    # Explicit guard: a neuron constant over the data (σ = 0, e.g. a dead ReLU) has no scale and is ranked last.
    usable = (std > 0)[None, :] & np.isfinite(size)
    return np.divide(size - mean[None, :], std[None, :], out=np.full(size.shape, np.inf), where=usable)


@dataclass(frozen=True)
class NeuronStats:
    """One neuron's sensitivity over the data."""

    index: int
    median_abs_delta: float  # median of |Δ(i, x)| over images (inf when most images cannot be flipped)
    mean_scaled_delta: float  # mean of (|Δ| − μ_i)/σ_i over the images where it is finite (nan if none)
    times_most_sensitive: int  # images on which this neuron ranks first
    flippable: int  # images on which the neuron alone can change the prediction
    feature_mean: float  # μ_i
    feature_std: float  # σ_i


@dataclass(frozen=True)
class Sensitivity:
    """Per-image sensitivities and per-neuron statistics."""

    deltas: np.ndarray  # (N, d) signed Δ, +inf where none
    scaled: np.ndarray  # (N, d) ranking score, +inf for unrankable entries
    ranking: np.ndarray  # (N, d) neuron indices, most sensitive first (stable: ties by index)
    predicted: np.ndarray  # (N,) ŷ = argmax (W f + b)
    mean: np.ndarray  # (d,) μ
    std: np.ndarray  # (d,) σ (population)
    neurons: list[NeuronStats]

    @property
    def order(self) -> list[int]:
        """Neurons by how often they are the most sensitive, then by mean scaled Δ, then index."""

        def key(s: NeuronStats) -> tuple[int, float, int]:
            scaled = s.mean_scaled_delta if np.isfinite(s.mean_scaled_delta) else np.inf
            return (-s.times_most_sensitive, scaled, s.index)

        return [s.index for s in sorted(self.neurons, key=key)]

    @property
    def unflippable_images(self) -> int:
        """Images on which no single neuron can change the prediction."""
        return int(np.count_nonzero(~np.isfinite(self.deltas).any(axis=1)))


def neuron_sensitivity(features: np.ndarray, weight: np.ndarray, bias: np.ndarray, *, relu: bool) -> Sensitivity:
    """Δ, the scaled ranking and per-neuron statistics for ``features`` (N, d) under z = W f + b."""
    f = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    deltas, predicted = neuron_deltas(f, weight, bias, relu=relu)
    mean = f.mean(axis=0)
    # A neuron with one value on every image is constant: σ = 0 exactly, not the ~1e-16 rounding of f.std().
    std = np.where(np.ptp(f, axis=0) == 0, 0.0, f.std(axis=0)) if len(f) else np.zeros(f.shape[1])
    scaled = scaled_sensitivity(deltas, mean, std)
    ranking = np.argsort(scaled, axis=1, kind="stable")
    first = ranking[:, 0]
    rankable = np.isfinite(scaled[np.arange(len(f)), first])
    counts = np.bincount(first[rankable], minlength=f.shape[1])
    with np.errstate(invalid="ignore"):
        size = np.abs(deltas)
    neurons = []
    for i in range(f.shape[1]):
        finite = np.isfinite(scaled[:, i])
        neurons.append(
            NeuronStats(
                index=i,
                median_abs_delta=float(np.median(size[:, i])) if len(f) else float("nan"),
                mean_scaled_delta=float(scaled[finite, i].mean()) if finite.any() else float("nan"),
                times_most_sensitive=int(counts[i]),
                flippable=int(np.count_nonzero(np.isfinite(deltas[:, i]))),
                feature_mean=float(mean[i]),
                feature_std=float(std[i]),
            )
        )
    return Sensitivity(deltas, scaled, ranking, predicted, mean, std, neurons)
