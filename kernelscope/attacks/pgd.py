"""Projected gradient descent (Madry et al., 2018) in L∞ or L2, in [0, 1] pixel units.

Unlike FGSM, PGD needs its own optimization for every ε: ``steps`` forward+backward passes per image and
ε (times the restarts). Each step moves the image along the gradient of an objective (its sign for L∞,
its L2-normalized direction for L2), then projects back onto the ε-ball around the clean image and onto
the pixel bounds. The iterate kept is the one with the highest *criterion* (for plain PGD the loss itself,
as the ``robustness`` library's ``use_best``), not simply the last: a step past the peak is not kept.

Both the objective and the criterion come from a callable, so the same loop serves untargeted PGD on the
classification loss and the single-neuron attack of :mod:`kernelscope.neurons` (which descends a feature
loss but keeps the iterate with the highest cross-entropy).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from kernelscope.errors import UsageError

if TYPE_CHECKING:  # torch loads only when PGD runs: validating settings must stay cheap
    import torch

NORMS = ("linf", "l2")

#: x01 (B, H, W, C) with gradients enabled -> (objective to *ascend*, criterion to keep the best iterate), each (B,).
#: The iterates stay on the CPU (a batch of images is small next to the activations); an objective moves x01 to
#: its module's device (``.to`` carries the gradient back) and returns the criterion on the CPU.
Objective = Callable[["torch.Tensor"], tuple["torch.Tensor", "torch.Tensor"]]


@dataclass(frozen=True)
class PgdSettings:
    """How PGD runs. ε itself is not here: a sweep runs the same settings for every ε.

    Defaults follow common practice for CIFAR-size models: 10 steps of 2.5·ε/steps (so the iterate can
    cross the ball and come back, Madry et al.'s rule), a uniformly random start inside the ball, one run.
    """

    norm: str = "linf"
    steps: int = 10
    #: absolute step size in [0, 1] pixel units; ``None``: ``relative_step`` · ε / steps
    step_size: float | None = None
    relative_step: float = 2.5
    random_start: bool = True
    restarts: int = 1

    def step_for(self, epsilon: float) -> float:
        """The step size used at ``epsilon``."""
        if self.step_size is not None:
            return float(self.step_size)
        return self.relative_step * float(epsilon) / self.steps

    def check(self) -> None:
        """Raise :class:`UsageError` for settings PGD cannot run with."""
        if self.norm not in NORMS:
            raise UsageError(f"the PGD norm must be linf or l2, not {self.norm!r}")
        if self.steps < 1:
            raise UsageError(f"PGD needs at least 1 step, not {self.steps}")
        if self.restarts < 1:
            raise UsageError(f"PGD needs at least 1 restart (1 = a single run), not {self.restarts}")
        if self.step_size is not None and not (np.isfinite(self.step_size) and self.step_size > 0):
            raise UsageError(f"the PGD step size must be positive, not {self.step_size}")
        if not (np.isfinite(self.relative_step) and self.relative_step > 0):
            raise UsageError(f"the relative PGD step must be positive, not {self.relative_step}")

    def describe(self, epsilon: float | None = None) -> str:
        """A short human description, e.g. "L∞ PGD, 10 steps of 2.5·ε/10, random start, 1 restart"."""
        size = f"{self.step_size:g}" if self.step_size is not None else f"{self.relative_step:g}·ε/{self.steps}"
        start = "random start" if self.random_start else "no random start"
        runs = f"{self.restarts} restart{'s' if self.restarts != 1 else ''}"
        name = "L∞" if self.norm == "linf" else "L2"
        text = f"{name} PGD, {self.steps} steps of {size}, {start}, {runs}"
        return text if epsilon is None else f"{text}, ε = {epsilon:g}"


@dataclass(frozen=True)
class PgdResult:
    """The kept iterate of each example and its criterion value."""

    adversarial: np.ndarray  # (B, H, W, C) float32, inside the ε-ball and the bounds
    criterion: np.ndarray  # (B,) float64; -inf where no iterate gave a finite value


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    """Per-example L2 norm, shaped to broadcast against ``t``."""
    return t.flatten(1).norm(dim=1).view(-1, *([1] * (t.dim() - 1)))


def random_start(x: torch.Tensor, epsilon: float, norm: str, generator: np.random.Generator) -> torch.Tensor:
    """A uniformly random point of the ε-ball around each example (before clipping to the bounds).

    Drawn with numpy's generator so a seeded run is reproducible whatever torch's global state.
    """
    import torch

    shape = tuple(x.shape)
    if norm == "linf":
        noise = generator.uniform(-epsilon, epsilon, size=shape)
        return torch.as_tensor(noise, dtype=x.dtype)
    # Uniform in the L2 ball: a uniform direction (normalized Gaussian) and radius ε·U^(1/d).
    direction = torch.as_tensor(generator.standard_normal(size=shape), dtype=x.dtype)
    direction = direction / _flat_norm(direction).clamp_min(1e-12)
    d = int(np.prod(shape[1:]))
    radius = epsilon * generator.uniform(0.0, 1.0, size=shape[0]) ** (1.0 / d)
    return direction * torch.as_tensor(radius, dtype=x.dtype).view(-1, *([1] * (len(shape) - 1)))


def project(x: torch.Tensor, adversarial: torch.Tensor, epsilon: float, norm: str, bounds: tuple[float, float]):
    """``adversarial`` moved back into the ε-ball around ``x`` and then into ``bounds``.

    Clipping to the bounds after the ball keeps the point in the ball: with ``x`` inside the bounds, clipping
    shrinks every coordinate of the perturbation towards 0, which shrinks its L∞ and its L2 norm.
    """
    import torch

    delta = adversarial - x
    if norm == "linf":
        delta = delta.clamp(-epsilon, epsilon)
    else:
        length = _flat_norm(delta)
        # An explicit guard: a zero perturbation has norm 0 and needs no scaling (no 0/0).
        factor = torch.where(length > epsilon, epsilon / length.clamp_min(1e-30), torch.ones_like(length))
        delta = delta * factor
    low, high = bounds
    return (x + delta).clamp(low, high)


def pgd(
    objective: Objective,
    x01: np.ndarray,
    epsilon: float,
    settings: PgdSettings,
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    generator: np.random.Generator | None = None,
    done_at: float | None = None,
    restrict: Callable[[np.ndarray], Objective] | None = None,
) -> PgdResult:
    """One PGD run from ``x01`` (B, H, W, C in [0, 1]) at ``epsilon``: ascend the objective, keep the best criterion.

    ``settings.restarts`` is not applied here (a restart is judged by the deployed model, which the caller
    owns); call this once per restart. ``generator`` draws the random start (default: seed 0).

    Early stopping: with ``done_at`` and ``restrict`` (rows -> the objective of those rows of the batch only),
    an example whose best criterion reaches ``done_at`` stops there: its best iterate is final, and the
    remaining steps run on the other examples only. Examples do not interact (the objective is a per-example
    sum), so the others follow the same path as without stopping.
    """
    import torch

    x = torch.as_tensor(np.asarray(x01, dtype=np.float32))
    if epsilon <= 0:
        with torch.no_grad():
            _, criterion = objective(x)
        return PgdResult(x.numpy().copy(), _finite_or_minus_inf(criterion))
    generator = generator if generator is not None else np.random.default_rng(0)
    step = settings.step_for(epsilon)
    start = x + random_start(x, epsilon, settings.norm, generator) if settings.random_start else x.clone()
    current = project(x, start, epsilon, settings.norm, bounds)
    best = current.clone()
    best_value = torch.full((x.shape[0],), -float("inf"), dtype=torch.float64)
    active = torch.arange(x.shape[0])  # examples still searching (all of them without early stopping)
    everyone = True
    for iteration in range(settings.steps + 1):
        last = iteration == settings.steps  # the final iterate only needs its criterion, not a gradient
        point = (current if everyone else current[active]).detach().requires_grad_(not last)
        with torch.set_grad_enabled(not last):
            value, criterion = objective(point)
        criterion = criterion.detach().double()
        better = criterion > best_value[active]  # NaN compares False: a non-finite criterion never wins
        rows = active[better]
        best[rows] = point.detach()[better]
        best_value[rows] = criterion[better]
        if last:
            break
        (gradient,) = torch.autograd.grad(value.sum(), point)
        gradient = torch.nan_to_num(gradient, nan=0.0, posinf=0.0, neginf=0.0)
        if settings.norm == "linf":
            moved = point.detach() + step * gradient.sign()
        else:
            length = _flat_norm(gradient)
            # Zero gradient: no direction to move in (explicit guard instead of 0/0).
            direction = torch.where(length > 0, gradient / length.clamp_min(1e-30), torch.zeros_like(gradient))
            moved = point.detach() + step * direction
        if everyone:
            current = project(x, moved, epsilon, settings.norm, bounds)
        else:
            current[active] = project(x[active], moved, epsilon, settings.norm, bounds)
        if done_at is not None and restrict is not None:
            finished = best_value[active] >= done_at
            if bool(finished.any()):
                active = active[~finished]
                if len(active) == 0:
                    break
                everyone = False
                objective = restrict(active.numpy())
    return PgdResult(best.numpy().astype(np.float32, copy=False), best_value.numpy())


def _finite_or_minus_inf(values: torch.Tensor) -> np.ndarray:
    out = values.detach().double().numpy().copy()
    out[~np.isfinite(out)] = -np.inf
    return out
