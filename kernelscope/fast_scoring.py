"""Fast kernel scorers: a first-order Taylor estimate, and a hybrid that settles the split exactly.

``taylor``: one forward+backward per image batch through the PyTorch mirror gives, for every image and
kernel, the first-order change of the loss when the kernel's channel y_k is zeroed, -Σ y_k·∂L/∂y_k (read at
the same tensor the exact scorer masks). Its magnitude averaged over images is the kernel's importance (the
criterion of Molchanov et al., 2017: signed changes cancel across images and rank kernels poorly). The mean
rule on it (importance above the mean = fragile) gives an estimated S / S'. It is an estimate and is
reported as one.

``hybrid``: Taylor first, then exact scoring (the same one-session engine) of the kernels whose side is in
doubt. The screen runs on a seeded random subset of at most :data:`SCREEN_IMAGES` images: the estimate's
error is its first-order error, not sampling noise (on the reference models 256 random images rank kernels
as well as 1,000-5,000, docs/method.md §10), so a larger screen would only add cost. It is smaller where
256 forward+backward passes would cost more than :data:`SCREEN_SHARE` of the exact job it is meant to
shorten (:func:`screen_size`: a count from the graph's arithmetic, never from timings, so the same run
screens the same images anywhere). The exact accuracies
measured so far calibrate the estimates of the others (a least-squares line, or a parabola where it predicts
left-out kernels better); a kernel not scored exactly counts as settled when its predicted accuracy is
further from the estimated mean than four leave-one-out prediction errors. Rounds of exact scoring continue,
nearest-to-the-mean first, until every kernel is settled or scored; each re-runs the network before the
variants' fork, so they are few (8, 8, then all the doubtful ones when most are, else doubling).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from kernelscope.backends import Backend
from kernelscope.data.preprocessing import PreparedData, select_examples
from kernelscope.errors import ModelError
from kernelscope.model.surgery.kernel_mask import MaskSite
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.scoring import DEFAULT_RUN_SIZE, KernelDropRunner, predict_variants

METHODS = ("exact", "taylor", "hybrid")
SCREEN_IMAGES = 256  # images the hybrid's Taylor screen sees at most (a seeded random subset)
#: ... and at least (fewer only when there are fewer images): below this its ranking loses quality fast
#: (docs/method.md §10).
MIN_SCREEN_IMAGES = 64
#: The screen may cost at most this share of the exact job it is meant to shorten.
SCREEN_SHARE = 0.05
#: One forward+backward of the PyTorch mirror costs about this many onnxruntime forwards of the same image
#: (measured, 2 CPU threads: 7 on the 32-px example CNN, 11 on the 224-px stem example).
GRADIENT_FORWARDS = 10


@dataclass(frozen=True)
class TaylorEstimate:
    """First-order estimate of the mean loss increase when each kernel is dropped."""

    importance: np.ndarray  # (C,) mean |first-order loss change| of zeroing each kernel
    fragile: list[int]
    null: list[int]
    n_images: int
    seconds: float


@dataclass(frozen=True)
class HybridResult:
    """The hybrid scorer's split, with the kernels it scored exactly."""

    fragile: list[int]
    null: list[int]
    exact_kernels: list[int]  # scored exactly
    accuracies: np.ndarray  # (C,) exact where scored, calibrated estimate elsewhere
    baseline_accuracy: float
    taylor: TaylorEstimate
    seconds: float


def _mean_rule(values: np.ndarray, fragile_when_high: bool) -> tuple[list[int], list[int]]:
    mean = float(values.mean())
    fragile = [k for k, v in enumerate(values) if (v > mean if fragile_when_high else v < mean)]
    return fragile, [k for k in range(len(values)) if k not in fragile]


def taylor_estimate(
    runner: KernelDropRunner, data: PreparedData, *, batch_size: int = 128, loss: str = "cross_entropy",
    progress: Progress = NO_PROGRESS, gradient_batch: int | None = None, device: str = "cpu",
) -> TaylorEstimate:  # fmt: skip
    """One forward+backward per image batch through the mirror (see module docstring).

    ``gradient_batch``: at most this many images per forward+backward (the memory budget's; see
    :class:`kernelscope.model.memory.MemoryPlan`); the estimate is a per-image sum, so it does not change.
    ``device``: where the mirror runs (the attack's, ``--device``)."""
    import torch
    import torch.nn.functional as F

    from kernelscope.mirror import OnnxMirror

    started = time.perf_counter()
    site, output = runner.site.tensor, runner.output
    mirror = OnnxMirror(runner.batching.proto, outputs=[output]).to(device)
    if not mirror.computes(site):
        raise ModelError(f"the mirror cannot expose the tensor {site!r} needed by the Taylor estimate")
    if not runner.batchable:
        batch_size = runner.fixed_batch or 1
    total = np.zeros(runner.channels, dtype=np.float64)
    n = 0
    with progress.task(f"Taylor estimate for {runner.channels} kernels on {len(data)} images", len(data)) as task:
        for x, labels in data.batches(batch_size):
            if len(labels) != batch_size and not runner.batchable:
                break  # a fixed-batch graph cannot take the short last batch; the estimate uses the full ones
            step = len(labels) if gradient_batch is None or not runner.batchable else max(1, gradient_batch)
            for begin in range(0, len(labels), step):
                part = slice(begin, begin + step)
                # The input must require a gradient: the mirror's weights are constants, not parameters.
                feeds = {runner.image_input: torch.from_numpy(x[part]).to(device).requires_grad_(True)}
                values = mirror.run(feeds, [site, output])
                channel, scores = values[site], values[output].reshape(len(labels[part]), -1)
                target = torch.from_numpy(labels[part]).to(device)
                if loss == "nll_of_probabilities":
                    value = F.nll_loss(torch.log(scores.clamp_min(1e-30)), target, reduction="sum")
                else:
                    value = F.cross_entropy(scores, target, reduction="sum")
                (grad,) = torch.autograd.grad(value, channel)
                # Per image: the first-order loss change of zeroing channel k is -sum(y_k * dL/dy_k); its
                # magnitude, averaged over images, is the importance (signed sums cancel across images).
                change = (channel * grad).flatten(2).sum(2).detach().double().abs()
                total += change.sum(0).cpu().numpy()
            n += len(labels)
            task.advance(len(labels))
    if n == 0:
        raise ModelError("the Taylor estimate saw no image (a fixed-batch model needs at least one full batch)")
    importance = total / n
    fragile, null = _mean_rule(importance, fragile_when_high=True)
    return TaylorEstimate(importance, fragile, null, n, time.perf_counter() - started)


def screen_subset(data: PreparedData, images: int, seed: int = 0) -> PreparedData:
    """A seeded random subset of at most ``images`` of ``data`` (kept in data order), for the hybrid's screen.

    Random, not the first images: image folders come sorted by class, and a screen on one class would rank
    kernels by what that class needs."""
    if len(data) <= images:
        return data
    return PreparedData(select_examples(data.dataset, images, seed), data.preprocessing)


def screen_size(runner: KernelDropRunner, images: int, cap: int = SCREEN_IMAGES) -> int:
    """How many images the hybrid's screen sees: at most ``cap``, and at most :data:`SCREEN_SHARE` of the
    exact job in forward-pass equivalents — (C_out + 1) x N variants, each running the part of the network
    after the variants' fork — at :data:`GRADIENT_FORWARDS` per screened image; never under
    :data:`MIN_SCREEN_IMAGES` (or all the images, when fewer)."""
    share = runner.share_after_fork()
    if share is None:
        return min(cap, images)
    job = (runner.channels + 1) * images * share
    affordable = int(SCREEN_SHARE * job / GRADIENT_FORWARDS)
    return min(images, cap, max(MIN_SCREEN_IMAGES, affordable))


def hybrid_split(
    runner: KernelDropRunner,
    data: PreparedData,
    *,
    batch_size: int = 128,
    run_size: int = DEFAULT_RUN_SIZE,
    round_size: int = 8,
    screen_images: int | None = None,
    seed: int = 0,
    loss: str = "cross_entropy",
    progress: Progress = NO_PROGRESS,
    backend: Backend | None = None,
    gradient_batch: int | None = None,
    device: str = "cpu",
) -> HybridResult:
    """Taylor screening plus exact scoring of the doubtful kernels until the split is settled.

    ``screen_images``: the screen's size (default: :func:`screen_size`); ``device``: the screen's mirror's."""
    started = time.perf_counter()
    if screen_images is None:
        screen_images = screen_size(runner, len(data))
    screen = screen_subset(data, screen_images, seed)
    estimate = taylor_estimate(
        runner, screen, batch_size=batch_size, loss=loss, progress=progress, gradient_batch=gradient_batch,
        device=device,
    )  # fmt: skip
    channels = runner.channels
    labels = data.labels
    exact: dict[int, float] = {}
    baseline = None

    def score(kernels: list[int]) -> None:
        nonlocal baseline
        # The unmasked model (the baseline) is one more variant of the first round only.
        extra = 1 if baseline is None else 0
        masks = np.ones((len(kernels) + extra, channels), dtype=np.float32)
        masks[np.arange(extra, len(kernels) + extra), kernels] = 0.0
        preds, _ = predict_variants(
            runner, data, masks, batch_size=batch_size, run_size=run_size, progress=progress,
            description=f"Exact scoring of {len(kernels)} kernel(s)", backend=backend,
        )  # fmt: skip
        accuracy = (preds == labels[None, :]).mean(axis=1)
        if extra:
            baseline = float(accuracy[0])
        exact.update({k: float(a) for k, a in zip(kernels, accuracy[extra:], strict=True)})

    # First round: kernels spread over the Taylor ranking, so the calibration sees its whole range.
    order = np.argsort(-estimate.importance)
    first = sorted({int(order[i]) for i in np.linspace(0, channels - 1, min(round_size, channels)).round().astype(int)})
    score(first)
    while True:
        predicted, residual = _calibrate(estimate.importance, exact)
        mean = float(predicted.mean())
        # The mean itself is uncertain by the unscored kernels' residuals; a side is settled beyond both.
        unscored = [k for k in range(channels) if k not in exact]
        margin = 4 * residual + 4 * residual * np.sqrt(len(unscored)) / channels
        doubtful = [k for k in unscored if abs(predicted[k] - mean) <= margin]
        near_line = [k for k in exact if abs(exact[k] - mean) <= 4 * residual * np.sqrt(len(unscored)) / channels]
        if not doubtful and not (near_line and unscored):
            break
        pool = doubtful or unscored
        pool.sort(key=lambda k: abs(predicted[k] - mean))
        # Each round re-runs the network before the variants' fork once per image, so rounds are few: once
        # two rounds have calibrated the fit, a pool of three quarters of the unscored kernels or more is
        # scored at once (they would be, one round after the other); else the round doubles the kernels
        # scored so far, nearest the mean first.
        if len(exact) >= 2 * round_size and len(pool) * 4 >= len(unscored) * 3:
            score(pool)
        else:
            score(pool[: max(round_size, len(exact))])
    predicted, _ = _calibrate(estimate.importance, exact)
    fragile, null = _mean_rule(predicted, fragile_when_high=False)
    return HybridResult(
        fragile=fragile,
        null=null,
        exact_kernels=sorted(exact),
        accuracies=predicted,
        baseline_accuracy=float(baseline if baseline is not None else np.nan),
        taylor=estimate,
        seconds=time.perf_counter() - started,
    )


def _loo_fit(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, float] | None:
    """Least-squares polynomial coefficients of ``degree`` and the root-mean-square leave-one-out error
    (r_i / (1 - h_ii), the prediction error for a point the fit did not see); None when underdetermined."""
    design = np.vander(x, degree + 1)
    if len(x) < degree + 3 or np.linalg.matrix_rank(design) <= degree:
        return None
    coefficients, *_ = np.linalg.lstsq(design, y, rcond=None)
    leverage = np.einsum("ij,ij->i", design @ np.linalg.pinv(design.T @ design), design)
    if np.any(leverage > 1 - 1e-9):
        return None
    loo = (y - design @ coefficients) / (1 - leverage)
    return coefficients, float(np.sqrt(np.mean(loo**2)))


def _calibrate(increase: np.ndarray, exact: dict[int, float]) -> tuple[np.ndarray, float]:
    """Accuracies: exact where known, a least-squares line or parabola in the Taylor estimate elsewhere; and
    the leave-one-out prediction error of that fit on the exact ones (conservative while points are few).

    The parabola is used only where it predicts left-out kernels better than the line: a kernel's accuracy
    falls faster than its first-order estimate grows (example CNN: error 0.018 against 0.032)."""
    known = np.array(sorted(exact))
    values = np.array([exact[k] for k in known])
    fits = [fit for degree in (1, 2) if (fit := _loo_fit(increase[known], values, degree)) is not None]
    if fits:
        coefficients, residual = min(fits, key=lambda fit: fit[1])
        fitted = np.polyval(coefficients, increase)
    else:
        fitted = np.full(increase.shape, values.mean())
        residual = float(values.std())
    if len(known) < 4:  # too few points to trust the fit's own error estimate
        residual = max(residual, float(values.std()))
    predicted = fitted.copy()
    predicted[known] = values
    return predicted, residual


@dataclass(frozen=True)
class Agreement:
    """How a fast scorer's result compares with exact scoring of the same data."""

    spearman: float  # rank correlation of importance (or hybrid accuracy) with exact accuracy, oriented so 1 = same
    split_agreement: float  # share of kernels with the same S / S' side


@dataclass(frozen=True)
class FastScoring:
    """The result of ``--method taylor`` or ``--method hybrid``, in one shape for reports."""

    method: str
    importance: list[float]
    fragile: list[int]
    null: list[int]
    exact_kernels: list[int]
    accuracies: list[float] | None  # hybrid: exact where scored, calibrated estimate elsewhere
    baseline_accuracy: float | None
    n_images: int
    seconds: float
    drop_mode: str
    mask_site: MaskSite
    agreement: Agreement | None = None
    screened_images: int | None = None  # images the Taylor pass saw (the hybrid screens a random subset)


def fast_score(
    method: str, runner: KernelDropRunner, data: PreparedData, *, batch_size: int = 128,
    run_size: int = DEFAULT_RUN_SIZE, loss: str = "cross_entropy", progress: Progress = NO_PROGRESS,
    backend: Backend | None = None, seed: int = 0, screen_images: int | None = None,
    gradient_batch: int | None = None, device: str = "cpu",
) -> FastScoring:  # fmt: skip
    """Run the ``taylor`` or ``hybrid`` scorer and package its result (``gradient_batch``, ``device``: see
    :func:`taylor_estimate`)."""
    if method == "taylor":
        t = taylor_estimate(
            runner, data, batch_size=batch_size, loss=loss, progress=progress, gradient_batch=gradient_batch,
            device=device,
        )  # fmt: skip
        return FastScoring(
            "taylor", t.importance.tolist(), t.fragile, t.null, [], None, None, t.n_images, t.seconds, runner.drop,
            runner.site, screened_images=t.n_images,
        )  # fmt: skip
    if method == "hybrid":
        h = hybrid_split(
            runner, data, batch_size=batch_size, run_size=run_size, screen_images=screen_images, seed=seed,
            loss=loss, progress=progress, backend=backend, gradient_batch=gradient_batch, device=device,
        )  # fmt: skip
        return FastScoring(
            "hybrid", h.taylor.importance.tolist(), h.fragile, h.null, h.exact_kernels, h.accuracies.tolist(),
            h.baseline_accuracy, len(data), h.seconds, runner.drop, runner.site, screened_images=h.taylor.n_images,
        )  # fmt: skip
    raise ValueError(f"unknown fast method {method!r}")


def with_agreement(fast: FastScoring, exact_accuracies: list[float], exact_fragile: list[int]) -> FastScoring:
    """``fast`` with its agreement against exact scores of the same kernels and data."""
    from dataclasses import replace

    from scipy.stats import spearmanr

    exact = np.asarray(exact_accuracies)
    # Taylor importance grows as accuracy falls: compare ranks of -importance with accuracy.
    ours = np.asarray(fast.accuracies) if fast.accuracies is not None else -np.asarray(fast.importance)
    rho = float(spearmanr(ours, exact).statistic) if np.ptp(exact) > 0 and np.ptp(ours) > 0 else float("nan")
    same = np.mean([(k in fast.fragile) == (k in exact_fragile) for k in range(len(exact))])
    return replace(fast, agreement=Agreement(rho, float(same)))
