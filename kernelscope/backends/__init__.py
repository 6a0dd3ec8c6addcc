"""Where the kernel variants are evaluated: this process (``local``) or a Ray cluster (``ray``).

Scoring is a list of tasks, each (one layer's session, a group of kernel variants, a shard of images), whose
result is the predicted class of every image of the shard under every variant of the group. A backend runs
such a list and returns the predictions; nothing above it knows which backend ran. Both run the same tasks
in the same shapes, so their predictions, and every report built on them, are equal.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from kernelscope.errors import UsageError

if TYPE_CHECKING:
    from kernelscope.data.preprocessing import PreparedData
    from kernelscope.progress import Progress
    from kernelscope.scoring import KernelDropRunner

#: Names of ``--backend``.
BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class ScoringTask:
    """One unit of scoring work: the variants ``group`` (rows of the mask matrix) on images ``start:stop``."""

    group: np.ndarray
    start: int
    stop: int
    shard: int  # index of the image shard (``start:stop``) among the data's batches

    @property
    def evaluations(self) -> int:
        """Variant-image evaluations this task performs."""
        return len(self.group) * (self.stop - self.start)


def plan_tasks(
    groups: Sequence[np.ndarray], n: int, batch_size: int, *, variant_major: bool = False
) -> list[ScoringTask]:
    """Every (image shard, variant group) pair, shard by shard (or, ``variant_major``, group by group: each
    variant's own session then serves all its shards before the next is built)."""
    shards = [(shard, start, min(start + batch_size, n)) for shard, start in enumerate(range(0, n, batch_size))]
    if variant_major:
        return [ScoringTask(group, start, stop, shard) for group in groups for shard, start, stop in shards]
    return [ScoringTask(group, start, stop, shard) for shard, start, stop in shards for group in groups]


class Backend(Protocol):
    """Runs scoring tasks for one layer's runner and returns the (V, N) predicted classes."""

    name: str

    def predict(
        self,
        runner: KernelDropRunner,
        data: PreparedData,
        masks: np.ndarray,
        tasks: Sequence[ScoringTask],
        batch_size: int,
        progress: Progress,
        description: str,
    ) -> tuple[np.ndarray, int]:
        """Predictions (V, N) of every image under every row of ``masks`` from running ``tasks``, and the number
        of onnxruntime runs that took (the stacking checks included)."""
        ...

    def close(self) -> None:
        """Release what the backend holds (a Ray connection it opened)."""
        ...


def get_backend(
    name: str, address: str | None = None, threads: int | None = None, memory: int | None = None
) -> Backend:
    """The backend called ``name``: ``local`` or ``ray`` (``address``: a running cluster; None starts a local one).

    ``memory``: the process budget, which sizes the local backend's blocks of preprocessed images."""
    if name == "local":
        if address is not None:
            raise UsageError("--ray-address only applies to --backend ray")
        from kernelscope.backends.local import LocalBackend
        from kernelscope.model.memory import MAX_BLOCK_BYTES, block_bytes

        return LocalBackend(block_bytes(memory) if memory is not None else MAX_BLOCK_BYTES)
    if name == "ray":
        from kernelscope.backends.ray import RayBackend

        return RayBackend(address, threads)
    raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {name!r}")
