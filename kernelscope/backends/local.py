"""The local backend: every task in this process, on the runner's own onnxruntime session."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from kernelscope.backends import ScoringTask
from kernelscope.data.preprocessing import PreparedData
from kernelscope.model.memory import MAX_BLOCK_BYTES
from kernelscope.progress import Progress


class LocalBackend:
    """Runs tasks shard by shard: each image batch is preprocessed once and shared by its variant groups.

    For a runner that goes variant by variant (the ``sessions`` mechanism), the shards come in blocks of about
    ``block_bytes`` (the memory budget's, :func:`kernelscope.model.memory.block_bytes`): each block is
    preprocessed once and each variant's session (built once per block) runs over all of it.
    """

    name = "local"

    def __init__(self, block_bytes: int = MAX_BLOCK_BYTES) -> None:
        self.block_bytes = int(block_bytes)

    def predict(
        self,
        runner,
        data: PreparedData,
        masks: np.ndarray,
        tasks: Sequence[ScoringTask],
        batch_size: int,
        progress: Progress,
        description: str,
    ) -> tuple[np.ndarray, int]:
        """Predictions (V, N) and the onnxruntime runs they took; see :class:`kernelscope.backends.Backend`."""
        runs_before = runner.session_runs
        preds = np.empty((masks.shape[0], len(data)), dtype=np.int64)
        by_shard: dict[int, list[ScoringTask]] = {}
        for task in tasks:
            by_shard.setdefault(task.shard, []).append(task)
        with progress.task(description, total=sum(t.evaluations for t in tasks)) as bar:
            if getattr(runner, "variant_major", False):
                blocks = _blocks(data.batches(batch_size), self.block_bytes)
                block = next(blocks, None)
                while block is not None:
                    for task in (t for t in tasks if t.shard in block):
                        preds[task.group, task.start : task.stop] = runner.predict(block[task.shard], masks[task.group])
                        bar.advance(task.evaluations)
                    # Let go of this block before the next is decoded: a for loop would hold both at once.
                    block = None
                    block = next(blocks, None)
                return preds, runner.session_runs - runs_before
            for shard, (x, _) in enumerate(data.batches(batch_size)):
                for task in by_shard.get(shard, ()):
                    preds[task.group, task.start : task.stop] = runner.predict(x, masks[task.group])
                    bar.advance(task.evaluations)
        return preds, runner.session_runs - runs_before

    def close(self) -> None:
        """Nothing to release."""


def _blocks(batches, block_bytes: int) -> Iterator[dict[int, np.ndarray]]:
    """Consecutive preprocessed shards, {shard index: model input}, about ``block_bytes`` per block."""
    block: dict[int, np.ndarray] = {}
    size = 0
    for shard, (x, _) in enumerate(batches):
        block[shard] = x
        size += x.nbytes
        if size >= block_bytes:
            yield block
            block, size = {}, 0
    if block:
        yield block
