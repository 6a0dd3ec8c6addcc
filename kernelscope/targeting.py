"""Adversarial targeting (the paper's Algorithm 1): does the attack move the fragile kernels' outputs more?

For an example with clean first-Conv output y and adversarial output y': d_k = ‖y_k − y'_k‖₂ per output
kernel; S_f = mean of d_k over S (fragile), S_n = mean over S' (null); the example "attacks S" when
S_f > S_n. Raw distances favour kernels with large outputs, so the same count is also reported with d_k
divided by ‖y_k‖₂ (the clean output norm of that kernel on that example).

Where y is read (``--targeting-at``): ``conv``, the convolution's own output (the paper's), or
``activation``, the tensor after the bias / BatchNormalization / activation that directly follow it. At the
Conv output, y − y' = conv_W(x − x') (the bias cancels): under FGSM, x' − x = ε·sign(∇ₓ) wherever clipping
does not bite, so every d_k scales with ε and the S-vs-S' comparison does not depend on ε. After a
non-linearity it does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: The finding behind ``--targeting-at``, for captions: why the curve at the Conv output is (nearly) flat.
LINEAR_NOTE = (
    "At the Conv output, y − y′ = conv_W(x − x′) (the bias cancels): under FGSM x′ − x = ε·sign(∇ₓ), so every "
    "kernel's distance scales with ε and the S-vs-S′ comparison changes only where clipping at the pixel bounds "
    "(or, for PGD, the ε-dependent direction) changes the perturbation; a flat line is the expected result, not "
    "a fault. --targeting-at activation compares the tensor after the ops that follow the Conv, where the "
    "non-linearity can make it depend on ε."
)


def site_description(at: str, tensor: str | None, after: Sequence[str] = ()) -> str:
    """Plain words for the tensor targeting compared: ``at`` is ``conv`` or ``activation``; ``after`` the
    ``"OpType:name"`` entries of the nodes passed after the convolution to reach ``tensor``."""
    ops = [str(entry).split(":", 1)[0] for entry in after]
    name = f" {tensor!r}" if tensor else ""
    if at == "activation":
        if not ops:
            return f"the Conv output{name} (no op after the Conv to pass: the same tensor as conv)"
        return f"the activation{name}, after {', '.join(ops)}"
    return f"the Conv output{name}" + (f" (after its {', '.join(ops)} tail)" if ops else "")


def kernel_norms(outputs: np.ndarray) -> np.ndarray:
    """Per-example, per-kernel L2 norm (N, C) of (N, C, H, W) conv outputs."""
    n, c = outputs.shape[:2]
    rows = np.ascontiguousarray(outputs, dtype=np.float32).reshape(n * c, 1, -1)
    # A batched dot product per (example, kernel) runs through BLAS: several times faster than
    # np.linalg.norm or einsum on these shapes, with no squared temporary.
    with np.errstate(over="ignore", invalid="ignore"):  # huge activations saturate to inf, without a warning
        squares = np.matmul(rows, rows.transpose(0, 2, 1)).reshape(n, c)
    return np.sqrt(squares.astype(np.float64))


def kernel_distances(clean: np.ndarray, adversarial: np.ndarray) -> np.ndarray:
    """Per-example, per-kernel L2 distance (N, C) between two (N, C, H, W) conv outputs."""
    with np.errstate(over="ignore", invalid="ignore"):
        delta = adversarial.astype(np.float32, copy=False) - clean.astype(np.float32, copy=False)
    return kernel_norms(delta)


def attacks_fragile(
    distances: np.ndarray, norms: np.ndarray, fragile: list[int], null: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Boolean (N,) arrays: S_f > S_n on raw distances, and on distances divided by the clean norms."""
    if not fragile or not null:
        none = np.zeros(distances.shape[0], dtype=bool)
        return none, none
    raw = distances[:, fragile].mean(axis=1) > distances[:, null].mean(axis=1)
    # A kernel whose clean output is exactly zero everywhere has zero distance too (it is a zero kernel).
    with np.errstate(invalid="ignore", over="ignore"):  # inf / inf on overflowing activations: NaN, no warning
        relative = np.divide(distances, norms, out=np.zeros_like(distances), where=norms > 0)
    normalized = relative[:, fragile].mean(axis=1) > relative[:, null].mean(axis=1)
    return raw, normalized
