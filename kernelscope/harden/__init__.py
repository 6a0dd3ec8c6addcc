"""``harden``: make the deployed file more robust, and measure honestly whether it is.

One file per step, so each paper's method is one file:

- :mod:`~kernelscope.harden.svd` — the paper's transform (Pravin et al.): Gavish–Donoho filtering of the
  null kernels of the first Conv, amplification of the fragile ones;
- :mod:`~kernelscope.harden.pipeline` — the ``harden`` command as one library call: data splits, the
  candidate search, the before/after on held-out images, the verdict.
"""

from kernelscope.harden.pipeline import (
    AUDIT_EPSILON,
    META_HARDEN,
    Candidate,
    HardenConfig,
    HardenReport,
    Measurement,
    harden_model,
    split_indices,
    write_hardened,
)
from kernelscope.harden.svd import SVD_MODES, NullFilter, filter_weights, noise_grid, unknown_noise_level

__all__ = [
    "AUDIT_EPSILON",
    "META_HARDEN",
    "SVD_MODES",
    "Candidate",
    "HardenConfig",
    "HardenReport",
    "Measurement",
    "NullFilter",
    "filter_weights",
    "harden_model",
    "noise_grid",
    "split_indices",
    "unknown_noise_level",
    "write_hardened",
]
