"""Null-kernel SVD filtering and fragile amplification (DESIGN.md §2.7), on matrices with known spectra."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kernelscope.harden.svd import NullFilter, filter_weights, gd_lambda, gd_omega, noise_grid, unknown_noise_level

# Weight (C_out=7, C_in=2, 3, 3): K' is |null| x 18. The null rows are deliberately out of order.
SHAPE = (7, 2, 3, 3)
NULL = (5, 1, 3, 6)
FRAGILE = (0, 4)
OTHER = (2,)
SIGMAS = np.array([5.0, 3.0, 2.0, 0.5])
M, N = 4, 18


def _orthonormal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q


def _known(sigmas: np.ndarray = SIGMAS, dtype: type = np.float64, seed: int = 0):
    """A weight whose null rows (in NULL order) are U diag(sigmas) Vᵀ; returns (weight, U, V)."""
    rng = np.random.default_rng(seed)
    u = _orthonormal(rng, M, M)
    v = _orthonormal(rng, N, M)
    weight = rng.standard_normal(SHAPE)
    flat = weight.reshape(SHAPE[0], -1)
    flat[list(NULL)] = (u * sigmas) @ v.T
    return flat.reshape(SHAPE).astype(dtype), u, v


def _noise_for_tau(tau: float) -> float:
    return tau / (gd_lambda(M / N) * math.sqrt(N))


def _rows(weight: np.ndarray, rows: tuple[int, ...]) -> np.ndarray:
    return weight.reshape(weight.shape[0], -1)[list(rows)]


def test_lambda_closed_form_values():
    assert gd_lambda(1.0) == pytest.approx(4 / math.sqrt(3), abs=1e-12)
    # Worked by hand from λ(β) = √(2(β+1) + 8β / ((β+1) + √(β² + 14β + 1))), e.g. β = 0.5:
    # √8.25 = 2.872281, 4 / 4.372281 = 0.914854, √(3 + 0.914854) = 1.978599.
    expected = {0.05: 1.5066, 0.1: 1.5816, 0.25: 1.7580, 0.5: 1.9786, 0.75: 2.1561}
    for beta, value in expected.items():
        assert gd_lambda(beta) == pytest.approx(value, abs=1e-4)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError):
            gd_lambda(bad)


def test_omega_polynomial():
    for beta in (0.1, 0.5, 1.0):
        assert gd_omega(beta) == pytest.approx(0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43, abs=1e-12)
    assert gd_omega(1.0) == pytest.approx(2.86, abs=1e-12)
    assert gd_omega(0.5) == pytest.approx(2.1725, abs=1e-12)
    with pytest.raises(ValueError):
        gd_omega(0.0)


def test_hard_threshold_zeroes_small_singular_values_and_alpha_is_spectral():
    weight, u, v = _known()
    before = weight.copy()
    out, info = filter_weights(weight, FRAGILE, NULL, _noise_for_tau(2.5), "hard")

    assert isinstance(info, NullFilter)
    assert (info.m, info.n, info.beta, info.rank) == (M, N, M / N, 4)
    assert info.tau == pytest.approx(2.5, abs=1e-12)
    assert info.kept_singular_values == 2
    assert info.singular_values == pytest.approx((5.0, 3.0, 2.0, 0.5), abs=1e-12)
    assert info.filtered_singular_values == pytest.approx((5.0, 3.0, 0.0, 0.0), abs=1e-12)
    np.testing.assert_allclose(_rows(out, NULL), (u * [5.0, 3.0, 0.0, 0.0]) @ v.T, atol=1e-12)

    # The difference is U diag(0, 0, 2, 0.5) Vᵀ: spectral norm 2, Frobenius norm √4.25 ≈ 2.06.
    assert info.alpha == pytest.approx(1 + 2.0, abs=1e-12)
    assert abs(info.alpha - (1 + math.sqrt(4.25))) > 0.05

    np.testing.assert_array_equal(_rows(out, FRAGILE), _rows(before, FRAGILE) * info.alpha)
    np.testing.assert_array_equal(_rows(out, OTHER), _rows(before, OTHER))
    np.testing.assert_array_equal(weight, before)
    assert (info.fragile, info.null, info.svd_mode) == (FRAGILE, NULL, "hard")


def test_cap_clamps_large_singular_values_to_tau():
    weight, u, v = _known()
    out, info = filter_weights(weight, FRAGILE, NULL, _noise_for_tau(2.5), "cap")

    assert info.kept_singular_values == 2  # 2.0 and 0.5 are left as they are
    assert info.filtered_singular_values == pytest.approx((2.5, 2.5, 2.0, 0.5), abs=1e-12)
    np.testing.assert_allclose(_rows(out, NULL), (u * [2.5, 2.5, 2.0, 0.5]) @ v.T, atol=1e-12)
    # Difference U diag(2.5, 0.5, 0, 0) Vᵀ: spectral 2.5, Frobenius √6.5 ≈ 2.55.
    assert info.alpha == pytest.approx(3.5, abs=1e-12)
    assert abs(info.alpha - (1 + math.sqrt(6.5))) > 0.04
    np.testing.assert_array_equal(_rows(out, FRAGILE), _rows(weight, FRAGILE) * info.alpha)


def test_float32_in_float32_out_with_fragile_scaled_in_float64():
    weight, _, _ = _known(dtype=np.float32)
    before = weight.copy()
    out, info = filter_weights(weight, FRAGILE, NULL, _noise_for_tau(2.5))
    assert out.dtype == np.float32 and out.shape == weight.shape and out is not weight
    expected = (_rows(before, FRAGILE).astype(np.float64) * info.alpha).astype(np.float32)
    np.testing.assert_array_equal(_rows(out, FRAGILE), expected)
    np.testing.assert_array_equal(_rows(out, OTHER), _rows(before, OTHER))
    np.testing.assert_array_equal(weight, before)


def test_zero_noise_is_the_identity_in_hard_mode():
    weight = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
    out, info = filter_weights(weight, FRAGILE, NULL, 0.0, "hard")
    assert info.tau == 0.0 and info.alpha == 1.0 and info.kept_singular_values == M
    np.testing.assert_array_equal(out, weight)
    # cap at τ = 0 removes everything: the null kernels become zero.
    out, info = filter_weights(weight, FRAGILE, NULL, 0.0, "cap")
    assert info.kept_singular_values == 0
    np.testing.assert_allclose(_rows(out, NULL), 0.0, atol=1e-6)


def test_tall_null_matrix_uses_the_larger_dimension_for_n():
    rng = np.random.default_rng(1)
    weight = rng.standard_normal((30, 1, 2, 2))  # K' is 20 x 4: m = 4, n = 20
    null = tuple(range(20))
    _, info = filter_weights(weight, (25,), null, 0.01)
    assert (info.m, info.n) == (4, 20)
    assert info.tau == pytest.approx(gd_lambda(0.2) * math.sqrt(20) * 0.01, rel=1e-12)


def test_unknown_noise_level_reproduces_omega_times_median():
    weight, _, _ = _known()
    level = unknown_noise_level(weight, NULL)
    tau = gd_omega(M / N) * 2.5  # median of (5, 3, 2, 0.5)
    assert level * gd_lambda(M / N) * math.sqrt(N) == pytest.approx(tau, rel=1e-12)
    _, info = filter_weights(weight, FRAGILE, NULL, level)
    assert info.tau == pytest.approx(tau, rel=1e-12)


def test_noise_grid_is_ascending_and_spans_keep_all_to_remove_all():
    weight, _, _ = _known(np.array([5.0, 3.0, 2.0, 0.0]))  # rank 3: the grid ignores the zero σ
    grid = noise_grid(weight, NULL, count=8)
    assert len(grid) == 8 and grid == sorted(grid) and len(set(grid)) == 8
    assert grid == noise_grid(weight, NULL, count=8)
    ratios = np.diff(np.log(grid))
    np.testing.assert_allclose(ratios, ratios[0], rtol=1e-9)
    taus = [filter_weights(weight, FRAGILE, NULL, e)[1] for e in grid]
    assert 1.5 < taus[0].tau < 2.0 and 5.0 < taus[-1].tau < 6.0
    assert taus[0].kept_singular_values == 3 == taus[0].rank
    assert taus[-1].kept_singular_values == 0
    assert noise_grid(np.zeros(SHAPE), NULL) == [0.0]
    with pytest.raises(ValueError):
        noise_grid(weight, NULL, count=0)


@pytest.mark.parametrize(
    ("fragile", "null", "noise", "mode"),
    [
        ((), NULL, 0.1, "hard"),
        (FRAGILE, (), 0.1, "hard"),
        (FRAGILE, NULL, -0.1, "hard"),
        (FRAGILE, NULL, float("nan"), "hard"),
        (FRAGILE, NULL, 0.1, "soft"),
        ((0, 5), NULL, 0.1, "hard"),
        (FRAGILE, (1, 1), 0.1, "hard"),
        (FRAGILE, (1, 7), 0.1, "hard"),
    ],
)
def test_invalid_inputs_raise_value_error(fragile, null, noise, mode):
    weight, _, _ = _known()
    with pytest.raises(ValueError):
        filter_weights(weight, fragile, null, noise, mode)
