"""Significance figures for kernel scores: paired exact McNemar tests and a bootstrap of the S / S' split."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Up to this many discordant pairs the binomial tail is summed in exact integer arithmetic.
_EXACT_TAIL_LIMIT = 2000


def mcnemar_exact(correct_to_wrong: int, wrong_to_correct: int) -> float:
    """Two-sided exact McNemar p-value for paired predictions (a binomial test on the discordant pairs).

    ``correct_to_wrong`` counts images the baseline got right and the variant got wrong; the reverse for
    ``wrong_to_correct``. With no discordant pair the two are indistinguishable: p = 1.

    Under H0 the smaller count k of n discordant pairs is Binomial(n, 1/2), a symmetric law, so the two-sided
    p-value is min(1, 2 P(X <= k)) (what ``scipy.stats.binomtest`` gives; written out here so that scoring
    does not import ``scipy.stats``, a second of start-up, for one test).
    """
    n = int(correct_to_wrong) + int(wrong_to_correct)
    if n == 0:
        return 1.0
    k = min(int(correct_to_wrong), int(wrong_to_correct))
    if 2 * k >= n:
        return 1.0
    return min(1.0, 2.0 * _binomial_half_cdf(k, n))


def _binomial_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2): exact integers up to :data:`_EXACT_TAIL_LIMIT`, else log space."""
    if n <= _EXACT_TAIL_LIMIT:
        term = total = 1
        for i in range(1, k + 1):
            term = term * (n - i + 1) // i  # C(n, i), exactly
            total += term
        return total / (1 << n)  # int / int rounds correctly, even for huge values
    i = np.arange(1, k + 1, dtype=np.float64)
    log_terms = np.concatenate([[0.0], np.cumsum(np.log(n - i + 1) - np.log(i))])  # log C(n, i), i = 0..k
    top = float(log_terms.max())
    return math.exp(top + math.log(float(np.exp(log_terms - top).sum())) - n * math.log(2.0))


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


@dataclass(frozen=True)
class PairedComparison:
    """Two models judged on the same images: accuracy before and after, and whether the change is real.

    ``p_value`` is the two-sided exact McNemar test on the discordant images; ``ci95`` the Agresti–Min
    adjusted Wald interval for the difference of the paired proportions (after − before), which keeps its
    coverage with few discordant pairs (Agresti & Min, 2005).
    """

    n: int
    before: int  # images right before
    after: int  # images right after
    gained: int  # wrong before, right after
    lost: int  # right before, wrong after
    p_value: float
    ci95: tuple[float, float]

    @property
    def difference(self) -> float:
        """after − before, as a share of the images."""
        return (self.after - self.before) / self.n if self.n else 0.0

    @property
    def significant(self) -> bool:
        """Whether the change is significant at the 5 % level (McNemar)."""
        return self.p_value < 0.05

    def describe(self) -> str:
        """E.g. "+3.2 points (95 % CI +1.0 to +5.4; McNemar p = 0.004, significant)"."""
        low, high = self.ci95
        verdict = "significant" if self.significant else "not significant"
        return (
            f"{100 * self.difference:+.1f} points (95 % CI {100 * low:+.1f} to {100 * high:+.1f}; McNemar p = "
            f"{self.p_value:.3g}, {verdict})"
        )


def paired_comparison(before: np.ndarray, after: np.ndarray, z: float = 1.959963984540054) -> PairedComparison:
    """Compare per-image correctness (two boolean arrays over the same images)."""
    before = np.asarray(before, dtype=bool)
    after = np.asarray(after, dtype=bool)
    if before.shape != after.shape:
        raise ValueError(f"paired outcomes need the same images, got {before.shape} and {after.shape}")
    n = int(before.size)
    gained = int(np.count_nonzero(~before & after))
    lost = int(np.count_nonzero(before & ~after))
    # Agresti–Min: add 1/2 to every cell of the 2x2 table (so 2 to n) before the Wald interval.
    g, c, m = gained + 0.5, lost + 0.5, n + 2.0
    d = (g - c) / m
    se = np.sqrt(max((g + c) - (g - c) ** 2 / m, 0.0)) / m
    low, high = max(-1.0, d - z * se), min(1.0, d + z * se)
    return PairedComparison(
        n=n,
        before=int(before.sum()),
        after=int(after.sum()),
        gained=gained,
        lost=lost,
        p_value=mcnemar_exact(lost, gained),
        ci95=(float(low), float(high)),
    )
