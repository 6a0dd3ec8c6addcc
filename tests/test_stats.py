import numpy as np
import pytest
from scipy.stats import binomtest

from kernelscope.stats import holm_adjust, mcnemar_exact, split_stability


@pytest.mark.parametrize(
    ("b", "c"),
    [(0, 1), (1, 1), (3, 9), (9, 3), (0, 30), (40, 41), (7, 300), (500, 620), (1200, 1350), (10, 4000), (3000, 3100)],
)
def test_mcnemar_equals_scipys_binomial_test(b, c):
    # Exact integers up to 2,000 pairs, log space beyond: both against scipy's own two-sided test.
    assert mcnemar_exact(b, c) == pytest.approx(binomtest(min(b, c), b + c, 0.5).pvalue, rel=1e-9, abs=1e-300)


def test_mcnemar_matches_binomial_test_and_is_symmetric():
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(10, 2) == pytest.approx(binomtest(2, 12, 0.5).pvalue)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)
    # 0 vs 10 discordant pairs: p = 2 * 0.5**10
    assert mcnemar_exact(10, 0) == pytest.approx(2 * 0.5**10)


def test_holm_adjustment_known_values():
    adjusted = holm_adjust(np.array([0.01, 0.04, 0.03, 0.5]))
    # sorted p: 0.01*4=0.04, 0.03*3=0.09, 0.04*2=0.08 -> monotone 0.09, 0.5*1 -> 0.5
    assert adjusted.tolist() == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm_adjust(np.array([0.9, 0.9])).max() <= 1.0


def test_split_stability_is_one_for_clear_split_and_low_for_ties():
    n = 400
    clear = np.zeros((4, n), dtype=bool)
    clear[0, :100] = True  # 25 % accuracy: clearly below the others
    clear[1:, :300] = True  # 75 %
    assert split_stability(clear, 200, seed=0).tolist() == [1.0, 1.0, 1.0, 1.0]
    rng = np.random.default_rng(0)
    noisy = rng.random((6, 50)) < 0.5
    stability = split_stability(noisy, 200, seed=0)
    assert stability.min() < 0.95
    assert np.array_equal(stability, split_stability(noisy, 200, seed=0))  # seeded


def test_wilson_interval_known_values():
    from kernelscope.stats import wilson_interval

    low, high = wilson_interval(81, 263)  # textbook example: 0.2553 .. 0.3662
    assert low == pytest.approx(0.2553, abs=1e-3) and high == pytest.approx(0.3662, abs=1e-3)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
