"""Op families of the mirror; importing this package registers every implementation."""

from __future__ import annotations

from kernelscope.mirror.ops import (  # noqa: F401  (imported for their registrations)
    activation,
    contrib,
    conv,
    elementwise,
    linear,
    misc,
    normalization,
    pooling,
    quantization,
    reduce,
    resize,
    shape,
)
