"""The attack choices every command validates before any work (kept free of torch, so checking them is cheap)."""

from __future__ import annotations

from kernelscope.errors import UsageError

#: The attacks ``inspect --attack`` offers.
ATTACKS = ("fgsm", "pgd")

#: Where Algorithm 1 reads the first layer (``--targeting-at``): the convolution's own output (the paper's), or
#: the tensor after the bias / BatchNormalization / activation that directly follow it (what ``--drop channel``
#: masks). Each maps to the drop mode whose mask site is that tensor.
TARGETING_SITES = {"conv": "weights", "activation": "channel"}


def check_targeting_at(value: str) -> str:
    """``value`` if it names a targeting site (``conv`` or ``activation``), else a usage error."""
    if value not in TARGETING_SITES:
        raise UsageError(f"--targeting-at must be one of {', '.join(TARGETING_SITES)}, not {value!r}")
    return value
