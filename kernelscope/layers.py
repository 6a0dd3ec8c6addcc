"""Every layer (``inspect --layers``): the paper's scoring, S / S' split and targeting, layer by layer.

The paper audits the first Conv and notes that the framework applies to any layer. Each selected convolution
gets its own kernel-mask session (one per layer, built when its turn comes and released after), is scored
exactly or by the hybrid (Taylor screening, exact scoring of the doubtful kernels), and split by the mean rule
within the layer. The attack runs once; its adversarial images serve every layer's targeting
(:func:`kernelscope.robustness.run_attack` with ``layer_targets``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from kernelscope.attacks.sweep import EpsilonTargeting
from kernelscope.backends import Backend
from kernelscope.data.preprocessing import PreparedData
from kernelscope.fast_scoring import FastScoring, fast_score, with_agreement
from kernelscope.model.first_conv import ConvLayer
from kernelscope.progress import Progress
from kernelscope.scoring import KernelDropRunner, ScoringResult, score_kernels
from kernelscope.stats import holm_adjust


@dataclass
class LayerAudit:
    """One convolution's scores, split and (after the attack) targeting."""

    layer: ConvLayer
    method: str  # "exact", "taylor" or "hybrid"
    scoring: ScoringResult | None  # exact scores (None for a fast method without --compare-exact)
    fast: FastScoring | None
    holm_p_values: list[float]
    seconds: float
    stacking_note: str | None = None
    targeting: list[EpsilonTargeting] = field(default_factory=list)
    variants_fork_at: str | None = None  # the tensor tiled V times when the mask site cannot fork the variants

    @property
    def fragile(self) -> list[int]:
        """S by the chosen method."""
        return self.fast.fragile if self.method != "exact" and self.fast else self.scoring.fragile

    @property
    def null(self) -> list[int]:
        """S' by the chosen method."""
        return self.fast.null if self.method != "exact" and self.fast else self.scoring.null

    @property
    def baseline_accuracy(self) -> float | None:
        """Clean accuracy, from the exact runs (None for the Taylor estimate alone)."""
        if self.scoring is not None:
            return self.scoring.baseline_accuracy
        return self.fast.baseline_accuracy if self.fast is not None else None

    @property
    def accuracies(self) -> list[float] | None:
        """Accuracy with each kernel dropped: exact, else the hybrid's (exact where scored); None for Taylor."""
        if self.scoring is not None and (self.method == "exact" or self.fast is None or self.fast.accuracies is None):
            return [k.accuracy for k in self.scoring.kernels]
        return list(self.fast.accuracies) if self.fast is not None and self.fast.accuracies is not None else None

    @property
    def fragile_share(self) -> float:
        """|S| / C_out."""
        return len(self.fragile) / self.layer.out_channels

    @property
    def drops(self) -> np.ndarray | None:
        """Baseline accuracy minus accuracy with each kernel dropped (positive: the kernel helps)."""
        accuracies, base = self.accuracies, self.baseline_accuracy
        if accuracies is None or base is None:
            return None
        return base - np.asarray(accuracies, dtype=np.float64)

    @property
    def mean_drop(self) -> float | None:
        """Mean of :attr:`drops`."""
        drops = self.drops
        return float(drops.mean()) if drops is not None else None

    @property
    def worst_kernel(self) -> int | None:
        """The kernel whose drop costs most (lowest index among ties)."""
        drops = self.drops
        return int(np.argmax(drops)) if drops is not None else None

    @property
    def worst_drop(self) -> float | None:
        """The largest of :attr:`drops`."""
        drops = self.drops
        return float(drops.max()) if drops is not None else None


def score_layer(
    runner: KernelDropRunner,
    data: PreparedData,
    *,
    method: str,
    compare_exact: bool,
    batch_size: int,
    run_size: int,
    seed: int,
    bootstrap: int,
    loss: str,
    backend: Backend,
    progress: Progress,
    gradient_batch: int | None = None,
    device: str = "cpu",
) -> LayerAudit:
    """Score ``runner``'s layer exactly and/or by a fast method, as ``inspect --method`` says
    (``gradient_batch``: images per forward+backward of a fast method, the memory budget's; ``device``: where
    its mirror runs)."""
    started = time.perf_counter()
    scoring = None
    if method == "exact" or compare_exact:
        scoring = score_kernels(
            runner, data, batch_size=batch_size, run_size=run_size, seed=seed, bootstrap=bootstrap,
            progress=progress, backend=backend,
        )  # fmt: skip
    fast = None
    if method != "exact":
        fast = fast_score(
            method, runner, data, batch_size=batch_size, run_size=run_size, loss=loss, progress=progress,
            backend=backend, seed=seed, gradient_batch=gradient_batch, device=device,
        )  # fmt: skip
        if scoring is not None:
            fast = with_agreement(fast, [k.accuracy for k in scoring.kernels], scoring.fragile)
    holm = holm_adjust(np.array([k.p_value for k in scoring.kernels])).tolist() if scoring else []
    fork = runner.expansion.tensor if runner.expansion is not None else None
    return LayerAudit(
        runner.layer, method, scoring, fast, holm, time.perf_counter() - started, runner.stacking_note,
        variants_fork_at=fork,
    )  # fmt: skip


def most_damaging(layers: list[LayerAudit], count: int = 10) -> list[tuple[LayerAudit, int, float]]:
    """The ``count`` kernels network-wide whose drop costs most: (layer, kernel, drop), largest first."""
    entries = []
    for audit in layers:
        drops = audit.drops
        if drops is None:
            continue
        entries.extend((audit, int(k), float(drops[k])) for k in range(len(drops)))
    # Ties: the earlier layer, then the lower kernel index (a stable, documented order).
    order = {id(a): i for i, a in enumerate(layers)}
    entries.sort(key=lambda e: (-e[2], order[id(e[0])], e[1]))
    return entries[:count]
