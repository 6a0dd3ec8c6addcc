"""Fine-tuning the deployed model through its trainable mirror: the loop every fine-tuning method shares.

A method (:mod:`~kernelscope.harden.jacobian`, :mod:`~kernelscope.harden.sensitivity`,
:mod:`~kernelscope.harden.adversarial`) only says what loss one batch has; this module owns the rest: the
seeded pass over the training images, the optimizer, non-finite guards, the epoch checkpoints that become
candidates, and the speed figures. Training images are never the images the result is judged on (the
pipeline refuses that before it gets here).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from kernelscope.data.preprocessing import PreparedData
from kernelscope.errors import UsageError
from kernelscope.progress import NO_PROGRESS, Progress


@dataclass(frozen=True)
class FinetuneSettings:
    """How long and how fast to fine-tune. Defaults: a short, gentle fine-tune of a deployed model."""

    epochs: int = 3
    learning_rate: float = 1e-3  # Adam's usual rate; measured on the example CNN (docs/hardening.md)
    batch_size: int = 128
    seed: int = 0
    device: str = "cpu"
    #: images per forward+backward (the memory budget's); a batch larger than this accumulates its gradient
    #: over parts of at most this many images, so the optimizer still takes one step per ``batch_size``
    micro_batch: int | None = None

    def check(self) -> None:
        """Raise :class:`UsageError` for settings the loop cannot run with."""
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, not {self.epochs}")
        if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise UsageError(f"--lr must be a positive number, not {self.learning_rate}")
        if self.batch_size < 1:
            raise UsageError(f"--batch-size must be positive, not {self.batch_size}")


class TrainingView:
    """The trainable mirror seen from unit pixels: what a method's loss is written against."""

    def __init__(self, mirror, preprocessing, output: str, loss: str, parameters: dict) -> None:
        self.mirror = mirror
        self.preprocessing = preprocessing
        self.output = output
        self.loss_kind = loss  # "cross_entropy" (logits) or "nll_of_probabilities"
        self.parameters = parameters  # initializer name -> nn.Parameter

    def run(self, x01, extra: Sequence[str] = ()) -> dict:
        """The output (reshaped to (B, K)) and any intermediate tensors, for unit pixels x01 (B, H, W, C)."""
        from kernelscope.attacks.gradients import model_input_from_unit_pixels

        feeds = {self.mirror.input_names[0]: model_input_from_unit_pixels(x01, self.preprocessing)}
        values = self.mirror.run(feeds, [self.output, *extra])
        values[self.output] = values[self.output].reshape(x01.shape[0], -1)
        return values

    def scores(self, x01):
        """(B, K) logits, or probabilities for a graph that ends in a softmax."""
        return self.run(x01)[self.output]

    def log_probabilities(self, scores):
        """log p from the scores (log-softmax of logits; the log of probabilities)."""
        import torch

        if self.loss_kind == "nll_of_probabilities":
            return torch.log(scores.clamp_min(1e-30))
        return torch.log_softmax(scores, dim=1)

    def classification_loss(self, scores, labels):
        """Mean cross-entropy of a batch."""
        import torch.nn.functional as F

        return F.nll_loss(self.log_probabilities(scores), labels)

    def state(self) -> dict[str, np.ndarray]:
        """The tuned values now, as float32 arrays (for checkpoints and write-back)."""
        return {name: p.detach().cpu().numpy().copy() for name, p in self.parameters.items()}

    def load(self, state: dict[str, np.ndarray]) -> None:
        """Set the tuned values (inverse of :meth:`state`)."""
        import torch

        with torch.no_grad():
            for name, value in state.items():
                p = self.parameters[name]
                p.copy_(torch.as_tensor(value, dtype=p.dtype, device=p.device))


class Method(Protocol):
    """A fine-tuning method: the loss of one training batch."""

    name: str
    label: str  # e.g. "λ_J = 0.1, λ_S = 0.1": the candidate's setting, for the report
    #: forward+backward passes whose activations one loss holds at once (a double backward, two forwards)
    memory_factor: float

    def loss(self, view: TrainingView, x01, labels, generator: np.random.Generator):
        """Scalar loss to minimize for the batch (torch)."""
        ...


@dataclass
class Checkpoint:
    """The tuned values after one epoch of one method's run."""

    method: str
    label: str
    strength: float
    epoch: int
    state: dict[str, np.ndarray]
    train_loss: float
    train_images: int


@dataclass
class FinetuneRun:
    """One method run from the original weights: its epoch checkpoints and its cost."""

    method: str
    label: str
    strength: float
    checkpoints: list[Checkpoint] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    skipped_batches: int = 0  # batches whose loss was not finite (not applied)


def finetune(
    view: TrainingView,
    method: Method,
    strength: float,
    train: PreparedData,
    settings: FinetuneSettings,
    *,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    progress: Progress = NO_PROGRESS,
    keep_states: bool = True,
) -> FinetuneRun:
    """Fine-tune ``view``'s parameters from their current values with ``method``; one checkpoint per epoch.

    The view is left holding the last epoch's values. Batches are drawn in a seeded order per epoch; a
    batch whose loss or gradient is not finite is skipped (counted), never applied. ``keep_states=False``:
    the run's checkpoints keep their figures but not the tuned values, which only ``on_checkpoint`` receives
    (each is a copy of the tuned weights: on a large model a few of them are gigabytes).
    """
    import torch

    settings.check()
    parameters = list(view.parameters.values())
    optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate)
    generator = np.random.default_rng(settings.seed)
    run = FinetuneRun(method.name, method.label, strength)
    n = len(train)
    started = time.perf_counter()
    seen = 0
    description = f"Fine-tuning ({method.name}, {method.label}) on {n} training images"
    with progress.task(description, total=n * settings.epochs) as task:
        for epoch in range(1, settings.epochs + 1):
            order = generator.permutation(n)
            total, batches = 0.0, 0
            for begin in range(0, n, settings.batch_size):
                chosen = np.sort(order[begin : begin + settings.batch_size])
                pixels = train.preprocessing.fit(train.dataset.images[chosen])
                x01 = torch.as_tensor(pixels, dtype=torch.float32, device=settings.device) / 255.0
                labels = torch.as_tensor(train.dataset.labels[chosen], dtype=torch.long, device=settings.device)
                optimizer.zero_grad(set_to_none=True)
                loss = _accumulate(method, view, x01, labels, generator, settings.micro_batch)
                grads = [p.grad for p in parameters if p.grad is not None]
                # one device-to-host read for all the gradients (a GPU would wait once per tensor otherwise)
                if loss is None or (grads and not bool(torch.stack([torch.isfinite(g).all() for g in grads]).all())):
                    run.skipped_batches += 1
                    optimizer.zero_grad(set_to_none=True)
                    task.advance(len(chosen))
                    continue
                optimizer.step()
                total += loss
                batches += 1
                seen += len(chosen)
                task.advance(len(chosen))
            checkpoint = Checkpoint(
                method.name, method.label, strength, epoch, view.state(), total / max(batches, 1), n * epoch
            )
            run.checkpoints.append(checkpoint if keep_states else replace(checkpoint, state={}))
            if on_checkpoint is not None:
                on_checkpoint(checkpoint)
    run.seconds = time.perf_counter() - started
    run.images_per_second = seen / run.seconds if run.seconds > 0 else 0.0
    return run


def _accumulate(method: Method, view: TrainingView, x01, labels, generator, micro_batch: int | None) -> float | None:
    """Backpropagate the batch's loss, in parts of at most ``micro_batch`` images; the loss, or None (and no
    gradient applied) when a part's loss is not finite.

    Every method's loss is a batch mean of per-image terms plus terms of the weights alone, so the parts'
    losses weighted by their share of the batch sum to the whole batch's loss, and their gradients to its
    gradient: a model too large for the batch in memory is tuned as if it had fitted. (The random draws of a
    method — FGSM-RS starts, the Jacobian's projections — come part by part, so they differ from one draw
    for the whole batch, as any other seed would.)"""
    import torch

    n = x01.shape[0]
    step = n if micro_batch is None or micro_batch >= n else max(1, micro_batch)
    total = 0.0
    for begin in range(0, n, step):
        part = slice(begin, begin + step)
        share = (min(begin + step, n) - begin) / n  # exactly 1.0 for an unsplit batch
        loss = method.loss(view, x01[part], labels[part], generator) * share
        if not torch.isfinite(loss):
            return None
        loss.backward()
        total += float(loss.detach())
    return total


def trainable_copy(mirror, names: Sequence[str], device: str = "cpu"):
    """A deep copy of ``mirror`` whose named initializers are parameters (the original stays untouched)."""
    twin = copy.deepcopy(mirror).to(device)
    parameters = twin.make_trainable(names)
    return twin, parameters
