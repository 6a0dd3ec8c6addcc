"""FGSM (Goodfellow et al., 2015): x' = clip(x + ε · sign(∇ₓ loss), lo, hi).

The gradient does not depend on ε, so a whole sweep costs one forward+backward per image plus one
forward of the deployed model per ε.
"""

from __future__ import annotations

import numpy as np


def fgsm_perturb(x01: np.ndarray, gradient_sign: np.ndarray, epsilon: float, bounds: tuple[float, float]) -> np.ndarray:
    """One FGSM step of size ``epsilon`` in [0, 1] pixel units, clipped to ``bounds``."""
    low, high = bounds
    return np.clip(x01 + np.float32(epsilon) * gradient_sign, low, high).astype(np.float32, copy=False)


def default_epsilons(kind: str, sweep: str = "lin", norm: str = "linf") -> list[float]:
    """Default ε sweeps (ε = 0 included): small for CIFAR-like colour images, large for MNIST-like digits.

    L∞ (FGSM, L∞ PGD): ``lin`` follows the paper's Fig. 2 (left): 0 to 0.03 (about 8/255) for colour images,
    0 to 0.3 for digits, the customary upper ends; ``log`` its Fig. 2 (right), up to 0.1 / 0.3.
    L2 (L2 PGD; the norm of the whole perturbation in [0, 1] pixel units): 0 to 0.5 for colour images and
    0 to 2 for digits, again the customary upper ends (Madry et al.'s CIFAR-10 and MNIST L2 budgets).
    """
    if sweep not in ("lin", "log"):
        raise ValueError(f"sweep must be 'lin' or 'log', not {sweep!r}")
    if norm not in ("linf", "l2"):
        raise ValueError(f"norm must be 'linf' or 'l2', not {norm!r}")
    if norm == "l2":
        if kind == "mnist":
            return [round(0.2 * i, 4) for i in range(11)] if sweep == "lin" else [0.0, 0.03, 0.1, 0.3, 1.0, 2.0, 3.0]
        return [round(0.05 * i, 4) for i in range(11)] if sweep == "lin" else [0.0, 0.01, 0.03, 0.1, 0.3, 0.5, 1.0]
    if kind == "mnist":
        return [round(0.03 * i, 4) for i in range(11)] if sweep == "lin" else [0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3]
    return [round(0.003 * i, 4) for i in range(11)] if sweep == "lin" else [0.0, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1]
