"""The error the mirror raises when a model uses ops it cannot execute."""

from __future__ import annotations

from collections.abc import Sequence

from kernelscope.errors import ModelError

#: Where users find what the mirror covers (generated from the registry by ``kernelscope.mirror.optable``).
SUPPORTED_OPS_DOC = "docs/supported-ops.md"


class UnsupportedOpsError(ModelError):
    """The model uses ops (or op settings) the PyTorch mirror cannot execute; lists every one at once."""

    def __init__(self, unsupported: Sequence[str], hint: str | None = None) -> None:
        self.unsupported = tuple(unsupported)
        message = f"the PyTorch mirror does not support: {', '.join(self.unsupported)}; see {SUPPORTED_OPS_DOC}"
        super().__init__(f"{message}; {hint}" if hint else message)
