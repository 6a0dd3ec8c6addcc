"""Null-kernel SVD filtering and fragile-kernel amplification (DESIGN.md §2.7).

Let ``K'`` be the ``|S'| × (C_in·kh·kw)`` matrix whose rows are the flattened null kernels, in the order of
``null``. With the thin SVD ``K' = U Σ Vᵀ``, ``m = min`` and ``n = max`` of its two dimensions and
``β = m / n``:

- Gavish–Donoho threshold for a known noise level ``ε_n``: ``τ = λ(β) · √n · ε_n`` with
  ``λ(β) = √( 2(β+1) + 8β / ( (β+1) + √(β² + 14β + 1) ) )``  (``λ(1) = 4/√3``).
- ``hard`` (default): ``σ̃_i = σ_i`` if ``σ_i ≥ τ`` else ``0`` — the Gavish–Donoho hard threshold.
- ``cap``: ``σ̃_i = min(σ_i, τ)`` — the other reading of the paper's "clamping".
- ``K̃' = U Σ̃ Vᵀ`` replaces the null kernels.
- ``α = 1 + ‖K' − K̃'‖₂`` (spectral norm) and every fragile kernel's weights are multiplied by ``α``.

The noise level is searched, not guessed: :func:`noise_grid` gives log-spaced candidates that run from
"keep everything" to "remove everything", and :func:`unknown_noise_level` gives the Gavish–Donoho
unknown-noise rule ``τ = ω(β) · median σ`` expressed as an equivalent ``ε_n``.

Pure numpy. Errors are :class:`ValueError`; the caller (``kernelscope.harden``) checks user options first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SVD_MODES = ("hard", "cap")

# The grid's end points sit this factor outside [smallest nonzero σ, largest σ], so that the first
# candidate's τ is strictly below every nonzero σ (hard keeps everything) and the last one's strictly above
# the largest σ (hard removes everything), with no candidate landing exactly on a σ by rounding.
_GRID_MARGIN = 1.05


def gd_lambda(beta: float) -> float:
    """Gavish–Donoho optimal hard-threshold coefficient for a known noise level.

    ``λ(β) = √( 2(β+1) + 8β / ( (β+1) + √(β² + 14β + 1) ) )`` for an aspect ratio ``0 < β ≤ 1``;
    ``λ(1) = 4/√3``. The threshold is then ``τ = λ(β) · √n · ε_n``.
    """
    beta = _check_beta(beta)
    return math.sqrt(2.0 * (beta + 1.0) + 8.0 * beta / ((beta + 1.0) + math.sqrt(beta * beta + 14.0 * beta + 1.0)))


def gd_omega(beta: float) -> float:
    """Gavish–Donoho coefficient for an unknown noise level: ``ω(β) ≈ 0.56β³ − 0.95β² + 1.82β + 1.43``.

    The threshold is then ``τ = ω(β) · median σ`` (``0 < β ≤ 1``).
    """
    beta = _check_beta(beta)
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


@dataclass(frozen=True)
class NullFilter:
    """What :func:`filter_weights` did.

    ``m``/``n`` are the min/max dimensions of ``K'`` and ``beta = m / n``; ``tau = λ(β)·√n·noise_level``.
    ``rank`` is the numerical rank of ``K'`` (numpy's default tolerance ``σ_max · n · eps``).
    ``kept_singular_values`` counts the singular values the filter left unchanged: for ``hard`` the ones
    with ``σ ≥ τ`` (the rest were set to 0), for ``cap`` the ones with ``σ ≤ τ`` (the rest were lowered to
    ``τ``). ``singular_values`` (descending) and ``filtered_singular_values`` are the ``m`` values of
    ``Σ`` and ``Σ̃``. ``alpha = 1 + ‖K' − K̃'‖₂`` (spectral norm) multiplied every fragile kernel.
    """

    noise_level: float
    svd_mode: str
    tau: float
    alpha: float
    beta: float
    m: int
    n: int
    rank: int
    kept_singular_values: int
    singular_values: tuple[float, ...]
    filtered_singular_values: tuple[float, ...]
    fragile: tuple[int, ...]
    null: tuple[int, ...]


def filter_weights(
    weight: np.ndarray,
    fragile: Sequence[int],
    null: Sequence[int],
    noise_level: float,
    mode: str = "hard",
) -> tuple[np.ndarray, NullFilter]:
    """Filter the null kernels by SVD thresholding and amplify the fragile kernels.

    ``weight`` is the Conv weight ``(C_out, C_in, kh, kw)`` (any float dtype; any ``ndim ≥ 2`` works, the
    kernels are the rows of ``weight.reshape(C_out, -1)``). With ``K'`` the flattened null kernels in the
    order of ``null`` and ``K' = U Σ Vᵀ`` (float64, thin SVD), ``τ = λ(β)·√n·noise_level`` and

    - ``hard``: ``σ̃_i = σ_i if σ_i ≥ τ else 0``;  ``cap``: ``σ̃_i = min(σ_i, τ)``;
    - the null kernels become ``K̃' = U Σ̃ Vᵀ``;
    - ``α = 1 + ‖K' − K̃'‖₂`` (largest singular value of the difference) and the fragile kernels are
      multiplied by ``α`` (computed in float64, then cast back). The bias is not an input: it is untouched.

    Returns a new array of the input dtype (the input is not modified) and a :class:`NullFilter`.
    ``noise_level = 0`` with ``hard`` is the identity (``τ = 0`` keeps every σ, ``α = 1``); with ``cap`` it
    removes every null kernel (everything is capped at 0).

    Raises ``ValueError`` for an empty ``fragile`` or ``null`` set (there is nothing to harden: a filter
    without null kernels has no ``K'`` and an amplification without fragile kernels changes nothing the
    method cares about, so the caller must decide rather than get a silent no-op), overlapping or repeated
    or out-of-range indices, a negative or non-finite noise level, an unknown mode, or non-finite weights.
    """
    if mode not in SVD_MODES:
        raise ValueError(f"mode must be one of {SVD_MODES}, not {mode!r}")
    noise_level = float(noise_level)
    if not math.isfinite(noise_level) or noise_level < 0:
        raise ValueError(f"noise_level must be a finite number >= 0, not {noise_level}")
    weight = _check_weight(weight)
    c_out = weight.shape[0]
    fragile_t = _check_indices(fragile, c_out, "fragile")
    null_t = _check_indices(null, c_out, "null")
    if set(fragile_t) & set(null_t):
        raise ValueError(f"fragile and null kernels overlap: {sorted(set(fragile_t) & set(null_t))}")

    flat = weight.reshape(c_out, -1).astype(np.float64)
    k = flat[list(null_t)]
    u, s, vt = np.linalg.svd(k, full_matrices=False)
    m, n = min(k.shape), max(k.shape)
    beta = m / n
    tau = gd_lambda(beta) * math.sqrt(n) * noise_level

    if mode == "hard":
        keep = s >= tau
        s_new = np.where(keep, s, 0.0)
        kept = int(np.count_nonzero(keep))
    else:
        s_new = np.minimum(s, tau)
        kept = int(np.count_nonzero(s <= tau))

    # Build the difference D = K' − K̃' = U diag(σ − σ̃) Vᵀ and subtract it, rather than rebuilding U Σ̃ Vᵀ:
    # unchanged singular values then contribute exactly nothing, so a filter that changes no σ (noise 0 in
    # hard mode) returns the null kernels bit for bit instead of an SVD round trip.
    diff = (u * (s - s_new)) @ vt
    k_new = k - diff
    # α uses the SPECTRAL norm (the largest singular value of D, i.e. the largest change made to any σ), as
    # the method defines it: the worst-case gain removed from the null kernels along any input direction.
    # The Frobenius norm (what torch.norm(A, p=2) returns for a matrix) would instead sum every removed σ in
    # quadrature and over-amplify whenever more than one σ is changed.
    alpha = 1.0 + float(np.linalg.norm(diff, 2))

    out_flat = flat.copy()
    out_flat[list(null_t)] = k_new
    out_flat[list(fragile_t)] *= alpha
    out = out_flat.reshape(weight.shape).astype(weight.dtype)
    # Rows the filter did not touch (neither fragile nor null) are copied from the input, not round-tripped.
    touched = set(fragile_t) | set(null_t)
    others = [i for i in range(c_out) if i not in touched]
    if others:
        out[others] = weight[others]

    info = NullFilter(
        noise_level=noise_level,
        svd_mode=mode,
        tau=float(tau),
        alpha=alpha,
        beta=beta,
        m=m,
        n=n,
        rank=int(np.linalg.matrix_rank(k)),
        kept_singular_values=kept,
        singular_values=tuple(float(v) for v in s),
        filtered_singular_values=tuple(float(v) for v in s_new),
        fragile=fragile_t,
        null=null_t,
    )
    return out, info


def unknown_noise_level(weight: np.ndarray, null: Sequence[int]) -> float:
    """The Gavish–Donoho unknown-noise rule as a noise level.

    The rule's threshold ``τ = ω(β) · median σ`` (median over the ``m`` singular values of ``K'``) is returned
    as the equivalent ``ε_n = τ / (λ(β) · √n)``, so that :func:`filter_weights` reproduces that ``τ`` and
    the rule can be scored like any other candidate.
    """
    s, m, n = _null_spectrum(weight, null)
    beta = m / n
    tau = gd_omega(beta) * float(np.median(s))
    return tau / (gd_lambda(beta) * math.sqrt(n))


def noise_grid(weight: np.ndarray, null: Sequence[int], count: int = 8) -> list[float]:
    """``count`` log-spaced noise levels whose thresholds span the singular values of ``K'``, ascending.

    The thresholds run geometrically from ``σ_min / 1.05`` to ``σ_max · 1.05`` (``σ_min`` the smallest
    singular value above numpy's rank tolerance), i.e. from "hard keeps everything" to "hard removes
    everything"; each is converted to ``ε_n = τ / (λ(β) · √n)``. ``count = 1`` gives the geometric middle.
    If ``K'`` is zero there is nothing to filter and the grid is ``[0.0]``. Deterministic.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    s, m, n = _null_spectrum(weight, null)
    tol = s[0] * n * np.finfo(np.float64).eps if s.size else 0.0
    nonzero = s[s > tol]
    if nonzero.size == 0:
        return [0.0]
    lo, hi = float(nonzero[-1]) / _GRID_MARGIN, float(nonzero[0]) * _GRID_MARGIN
    taus = np.geomspace(lo, hi, count) if count > 1 else np.array([math.sqrt(lo * hi)])
    scale = gd_lambda(m / n) * math.sqrt(n)
    return [float(t / scale) for t in taus]


def _null_spectrum(weight: np.ndarray, null: Sequence[int]) -> tuple[np.ndarray, int, int]:
    """Singular values (descending, float64) of ``K'`` and its min/max dimensions."""
    weight = _check_weight(weight)
    c_out = weight.shape[0]
    null_t = _check_indices(null, c_out, "null")
    k = weight.reshape(c_out, -1).astype(np.float64)[list(null_t)]
    return np.linalg.svd(k, compute_uv=False), min(k.shape), max(k.shape)


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not 0.0 < beta <= 1.0:
        raise ValueError(f"the aspect ratio beta must satisfy 0 < beta <= 1, not {beta}")
    return beta


def _check_weight(weight: np.ndarray) -> np.ndarray:
    weight = np.asarray(weight)
    if weight.ndim < 2 or 0 in weight.shape:
        raise ValueError(f"expected a non-empty Conv weight (C_out, C_in, kh, kw), got shape {weight.shape}")
    if not np.issubdtype(weight.dtype, np.floating):
        raise ValueError(f"expected a floating-point weight, got {weight.dtype}")
    if not np.all(np.isfinite(weight)):
        raise ValueError("the weight contains NaN or infinite values")
    return weight


def _check_indices(indices: Sequence[int], c_out: int, name: str) -> tuple[int, ...]:
    values = tuple(int(i) for i in indices)
    if not values:
        raise ValueError(f"the {name} kernel set is empty; there is nothing to harden")
    if len(set(values)) != len(values):
        raise ValueError(f"the {name} kernel indices repeat: {list(values)}")
    bad = [i for i in values if not 0 <= i < c_out]
    if bad:
        raise ValueError(f"{name} kernel indices out of range 0..{c_out - 1}: {bad}")
    return values


def first_change_level(weight: np.ndarray, null: Sequence[int], mode: str = "hard") -> float:
    """The noise level at which the filter starts to change anything (below it, ``hard`` is a no-op).

    ``hard`` keeps σ ≥ τ, so the smallest non-zero singular value of ``K'`` is first dropped once
    ``ε_n > σ_min / (λ(β)·√n)``; ``cap`` lowers σ > τ, so it changes the largest one as soon as
    ``ε_n < σ_max / (λ(β)·√n)``: the value returned is that boundary, in either mode.
    """
    s, m, n = _null_spectrum(weight, null)
    tol = s[0] * n * np.finfo(np.float64).eps if s.size else 0.0
    nonzero = s[s > tol]
    if nonzero.size == 0:
        return math.inf if mode == "hard" else 0.0
    scale = gd_lambda(m / n) * math.sqrt(n)
    return float((nonzero[-1] if mode == "hard" else nonzero[0]) / scale)


def is_identity(info: NullFilter) -> bool:
    """Whether the filter left every singular value as it was and α = 1: the weights did not change."""
    return info.alpha == 1.0 and info.singular_values == info.filtered_singular_values
