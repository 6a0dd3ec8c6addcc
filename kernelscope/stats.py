"""Significance figures for kernel scores: paired exact McNemar tests and a bootstrap of the S / S' split."""

from __future__ import annotations

import numpy as np
from scipy.stats import binomtest


def mcnemar_exact(correct_to_wrong: int, wrong_to_correct: int) -> float:
    """Two-sided exact McNemar p-value for paired predictions (a binomial test on the discordant pairs).

    ``correct_to_wrong`` counts images the baseline got right and the variant got wrong; the reverse for
    ``wrong_to_correct``. With no discordant pair the two are indistinguishable: p = 1.
    """
    discordant = correct_to_wrong + wrong_to_correct
    if discordant == 0:
        return 1.0
    return float(binomtest(min(correct_to_wrong, wrong_to_correct), discordant, 0.5).pvalue)


def holm_adjust(p_values: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (family-wise error control across all kernels of a layer)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(adjusted_sorted, 1.0)
    return adjusted


def split_stability(correct: np.ndarray, resamples: int, seed: int, chunk: int = 50) -> np.ndarray:
    """For each kernel, the share of bootstrap resamples of the images in which it lands on the same
    side of the mean rule (S if accuracy < mean, else S') as on the full data.

    ``correct`` is a (C_out, N) boolean matrix: whether image n is classified correctly with kernel k
    dropped. Resampling images with replacement is done through multinomial counts, so each resample
    costs one matrix product instead of a re-run of the model.
    """
    kernels, n = correct.shape
    if resamples <= 0 or n == 0:
        return np.ones(kernels)
    as_float = correct.astype(np.float32).T  # (N, C)
    full = as_float.mean(axis=0)
    full_side = full < full.mean()
    rng = np.random.default_rng(seed)
    agree = np.zeros(kernels)
    done = 0
    while done < resamples:
        size = min(chunk, resamples - done)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=size).astype(np.float32)  # (size, N)
        accuracy = counts @ as_float / n  # (size, C)
        side = accuracy < accuracy.mean(axis=1, keepdims=True)
        agree += (side == full_side).sum(axis=0)
        done += size
    return agree / resamples


def wilson_interval(successes: int, trials: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95 % Wilson score interval for a binomial proportion (well-behaved at 0 and 1, unlike Wald's)."""
    if trials <= 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))
