"""The candidate search of ``harden``: every method's candidates, judged on validation by the worst case.

A candidate is one concrete model: an SVD noise level (the paper's transform), or one epoch checkpoint of
one fine-tuning run (a method at one strength). Each is attacked on the validation images at the audit ε
(FGSM, PGD, transfer from the original) and ranked by worst-case accuracy within the clean-accuracy
budget; candidates that change nothing (an SVD level that keeps every singular value) are shown but never
chosen. The held-out images are not touched here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import onnx

from kernelscope.data.preprocessing import PreparedData
from kernelscope.harden.adversarial import AdversarialTraining
from kernelscope.harden.evaluate import AttackSuite, Robustness, Twin, evaluate_robustness
from kernelscope.harden.finetune import (
    Checkpoint,
    FinetuneRun,
    FinetuneSettings,
    TrainingView,
    finetune,
    trainable_copy,
)
from kernelscope.harden.jacobian import JacobianRegularization, relu_outputs
from kernelscope.harden.sensitivity import SensitivityRegularization, head_weight
from kernelscope.model.memory import release_memory
from kernelscope.progress import NO_PROGRESS, Progress

#: ``harden --method`` values; ``all`` runs every one of the others.
METHODS = ("svd", "jacobian", "sensitivity", "adversarial", "all")
FINETUNE_METHODS = ("jacobian", "sensitivity", "adversarial")

#: Default strength grids. jacobian: the regularizer's weight relative to the clean loss at the start
#: (λ_J = r · CE₀ / (½‖J‖²_F)₀, so the grid means the same thing for any model and input scale);
#: sensitivity: a factor on (δ₁, δ₂) = (10, 100); adversarial: β of the TRADES-style KL term.
DEFAULT_STRENGTHS = {"jacobian": (0.1, 1.0, 10.0), "sensitivity": (0.1, 1.0, 10.0), "adversarial": (1.0, 3.0, 6.0)}


@dataclass
class Candidate:
    """One model tried on the validation split."""

    method: str  # "svd", "jacobian", "sensitivity" or "adversarial"
    label: str  # its setting in words, e.g. "ε_n = 0.012" or "FGSM-RS, β = 3, ε = 0.01"
    val_clean_accuracy: float
    val_fgsm_accuracy: float
    val_pgd_accuracy: float
    val_transfer_accuracy: float
    val_worst_accuracy: float
    within_budget: bool
    no_op: bool = False  # the candidate's weights equal the original's
    # SVD candidates
    noise_level: float | None = None
    source: str = ""  # "grid", "gavish-donoho unknown noise", "forced", or "fine-tuning"
    tau: float | None = None
    alpha: float | None = None
    kept_singular_values: int | None = None
    # fine-tuning candidates
    strength: float | None = None
    epoch: int | None = None
    train_images: int | None = None
    train_loss: float | None = None
    seconds: float | None = None  # fine-tuning time of this run up to this checkpoint
    payload: object = field(default=None, repr=False, compare=False)  # the proto or the tuned state

    @property
    def key(self) -> tuple:
        """Ranking key: worst case, then clean accuracy, then the gentler change."""
        gentle = -(self.noise_level or 0.0) if self.method == "svd" else -(self.epoch or 0)
        return (self.val_worst_accuracy, self.val_clean_accuracy, gentle)


def from_robustness(method: str, label: str, r: Robustness, original_clean: float, budget: float, **extra) -> Candidate:
    """A candidate from its validation outcomes."""
    clean = r.accuracy("clean")
    return Candidate(
        method=method,
        label=label,
        val_clean_accuracy=clean,
        val_fgsm_accuracy=r.accuracy("fgsm"),
        val_pgd_accuracy=r.accuracy("pgd"),
        val_transfer_accuracy=r.accuracy("transfer"),
        val_worst_accuracy=r.accuracy("worst"),
        within_budget=clean >= original_clean - budget - 1e-12,
        **extra,
    )


def choose(candidates: Sequence[Candidate], original_worst: float) -> Candidate | None:
    """The best candidate within the budget that beats the original's worst case on validation."""
    eligible = [c for c in candidates if c.within_budget and not c.no_op and c.val_worst_accuracy > original_worst]
    return max(eligible, key=lambda c: c.key, default=None)


def release_unchosen(candidates: Sequence[Candidate], chosen: Candidate | None) -> None:
    """Drop the payload of every candidate but ``chosen``.

    A fine-tuning candidate's payload is a copy of every tuned weight (a ResNet-50: 100 MB), one per epoch
    and strength. :func:`choose` is a maximum by key among candidates judged one by one (ties keep the
    first), so a candidate that is not its choice now never becomes it: releasing the others after each
    judgement keeps one copy, not one per candidate."""
    for candidate in candidates:
        if candidate is not chosen:
            candidate.payload = None


@dataclass(frozen=True)
class FinetuneSetup:
    """What every fine-tuning method needs."""

    mirror: object  # the original's parity-checked OnnxMirror
    proto: onnx.ModelProto  # the graph the mirror runs (initializer names as in the file)
    output: str
    loss: str
    tunable: Sequence[str]
    train: PreparedData
    settings: FinetuneSettings
    epsilon: float
    bounds: tuple[float, float]
    head: object | None = None  # kernelscope.model.linear_head.LinearHead, for the sensitivity method
    lambda_s: float = 0.1
    strengths: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_STRENGTHS))
    memory: object | None = None  # kernelscope.model.memory.MemoryPlan: sizes each method's micro-batches


def make_method(name: str, strength: float, setup: FinetuneSetup, view: TrainingView, generator):
    """The loss object of method ``name`` at one grid strength."""
    if name == "adversarial":
        return AdversarialTraining(beta=strength, epsilon=setup.epsilon, bounds=setup.bounds)
    if name == "sensitivity":
        return SensitivityRegularization(head_weight(setup.proto, setup.head), strength=strength)
    if name == "jacobian":
        probe = JacobianRegularization(1.0, 0.0, setup.epsilon, bounds=setup.bounds)
        lambda_j = strength * _jacobian_scale(probe, view, setup, generator)
        return JacobianRegularization(lambda_j, setup.lambda_s, setup.epsilon, relu_outputs(setup.proto), setup.bounds)
    raise ValueError(f"unknown fine-tuning method {name!r}")


def _micro_batched(setup: FinetuneSetup, memory_factor: float):
    """``setup.settings`` with the micro-batch the memory budget allows a method holding ``memory_factor``
    passes' activations (the optimizer's batch stays ``--batch-size``)."""
    if setup.memory is None:
        return setup.settings
    micro = setup.memory.gradient_batch(setup.settings.batch_size, memory_factor)
    return replace(setup.settings, micro_batch=micro) if micro < setup.settings.batch_size else setup.settings


def _jacobian_scale(probe: JacobianRegularization, view: TrainingView, setup: FinetuneSetup, generator) -> float:
    """CE₀ / (½‖J‖²_F)₀ on the first training batch: λ_J that makes the regularizer start at the clean loss.

    Both are batch means, taken over the memory budget's micro-batches (weighted by their size)."""
    import torch

    batch = min(len(setup.train), setup.settings.batch_size)
    step = _micro_batched(setup, probe.memory_factor).micro_batch or batch
    ce = total = 0.0
    for begin in range(0, batch, step):
        stop = min(begin + step, batch)
        pixels = setup.train.preprocessing.fit(setup.train.dataset.images[begin:stop])
        x01 = torch.as_tensor(pixels, dtype=torch.float32, device=setup.settings.device) / 255.0
        labels = torch.as_tensor(setup.train.dataset.labels[begin:stop], dtype=torch.long, device=setup.settings.device)
        share = (stop - begin) / batch  # exactly 1.0 for an unsplit batch
        with torch.no_grad():
            ce += share * float(view.classification_loss(view.scores(x01), labels))
        total += share * float(probe.loss(view, x01, labels, generator).detach())
    jacobian = max(total - ce, 1e-12)
    return max(ce, 1e-6) / jacobian


def finetune_candidates(
    methods: Sequence[str],
    setup: FinetuneSetup,
    val: PreparedData,
    suite: AttackSuite,
    transfer: np.ndarray,
    original_clean: float,
    budget: float,
    preprocessing,
    progress: Progress = NO_PROGRESS,
    on_candidate: Callable[[Candidate], None] | None = None,
    keep: Callable[[list[Candidate]], Candidate | None] | None = None,
) -> tuple[list[Candidate], list[FinetuneRun]]:
    """Run every method at every strength from the original weights; every epoch is a candidate.

    Each candidate's payload is its tuned values; the runs' checkpoints do not keep them. With ``keep`` (the
    caller's choice among the candidates so far, e.g. :func:`choose` with the original's worst case), only
    that candidate's payload is kept as the search goes (see :func:`release_unchosen`)."""
    candidates: list[Candidate] = []
    runs: list[FinetuneRun] = []
    for name in methods:
        for strength in setup.strengths[name]:
            mirror, parameters = trainable_copy(setup.mirror, setup.tunable, setup.settings.device)
            view = TrainingView(mirror, preprocessing, setup.output, setup.loss, parameters)
            generator = np.random.default_rng(setup.settings.seed + 31)
            method = make_method(name, strength, setup, view, generator)
            settings = _micro_batched(setup, method.memory_factor)
            started = time.perf_counter()
            twin = Twin(mirror, preprocessing, setup.loss)

            def judge(
                checkpoint: Checkpoint, method=method, twin=twin, started=started, name=name, strength=strength
            ) -> None:
                spent = time.perf_counter() - started
                result = evaluate_robustness(twin.scores, twin, val, suite, transfer)
                candidate = from_robustness(
                    name, f"{method.label}, epoch {checkpoint.epoch}", result, original_clean, budget,
                    source="fine-tuning", strength=strength, epoch=checkpoint.epoch,
                    train_images=checkpoint.train_images, train_loss=checkpoint.train_loss, seconds=spent,
                    payload=checkpoint.state,
                )  # fmt: skip
                candidates.append(candidate)
                if keep is not None:
                    release_unchosen(candidates, keep(candidates))
                if on_candidate is not None:
                    on_candidate(candidate)

            run = finetune(
                view, method, strength, setup.train, settings, on_checkpoint=judge, progress=progress,
                keep_states=False,
            )  # fmt: skip
            runs.append(run)
            # This strength's trainable copy (weights, gradients) goes before the next one is made.
            del mirror, parameters, view, method, twin, judge
            release_memory()
    return candidates, runs
