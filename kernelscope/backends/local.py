"""The local backend: every task in this process, on the runner's own onnxruntime session."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from kernelscope.backends import ScoringTask
from kernelscope.data.preprocessing import PreparedData
from kernelscope.progress import Progress


class LocalBackend:
    """Runs tasks shard by shard: each image batch is preprocessed once and shared by its variant groups."""

    name = "local"

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
            for shard, (x, _) in enumerate(data.batches(batch_size)):
                for task in by_shard.get(shard, ()):
                    preds[task.group, task.start : task.stop] = runner.predict(x, masks[task.group])
                    bar.advance(task.evaluations)
        return preds, runner.session_runs - runs_before

    def close(self) -> None:
        """Nothing to release."""
