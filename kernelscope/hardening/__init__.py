"""Hardening transforms (DESIGN.md §2.7): null-kernel SVD filtering and fragile-kernel amplification."""

from kernelscope.hardening.svd import (
    SVD_MODES,
    NullFilter,
    filter_weights,
    gd_lambda,
    gd_omega,
    noise_grid,
    unknown_noise_level,
)

__all__ = [
    "SVD_MODES",
    "NullFilter",
    "filter_weights",
    "gd_lambda",
    "gd_omega",
    "noise_grid",
    "unknown_noise_level",
]
