"""Exact kernel scoring by dropout (DESIGN §2.3): accuracy with each first-layer kernel dropped.

One onnxruntime session serves the baseline and every dropped-kernel variant: the model is rewritten once
with a kernel-mask input (:mod:`kernelscope.model.surgery.kernel_mask`), each image batch is preprocessed
once, and several variants share one run, so the cost stays close to (C_out + 1) x N forward passes.

Stacking V variants makes every op after the mask see a batch of V x N. A graph whose shapes are computed from
the image input's batch (torch.export's ``Shape -> Gather(0) -> ... -> Reshape``, a constant Reshape target
that encodes the batch) can fail or, worse, mix images at that batch. So each (V, N) shape is checked the first
time it runs: the stacked run must reproduce the V one-variant runs; if it fails or differs, every run of that
shape takes one variant at a time (the batch the original graph sees) and
:attr:`KernelDropRunner.stacking_note` says so. Each shape is decided on its own, so the decisions do not
depend on the order the shapes come in (backends that check shapes in parallel agree).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from kernelscope.backends import Backend, plan_tasks
from kernelscope.backends.local import LocalBackend
from kernelscope.data.preprocessing import PreparedData
from kernelscope.devices import onnxruntime_device
from kernelscope.errors import ModelError
from kernelscope.model.batching import Batching, fixed_chunks, resolve_batching
from kernelscope.model.cost import share_before
from kernelscope.model.first_conv import ConvLayer
from kernelscope.model.graph import GraphIndex
from kernelscope.model.surgery.drop_weights import WeightDropper
from kernelscope.model.surgery.kernel_mask import (
    DROP_MODES,
    MASK_INPUT,
    MaskSite,
    batch_expansion_point,
    find_mask_site,
    infer_elem_types,
    insert_kernel_mask,
)
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.runtime import make_session, run_checked
from kernelscope.stats import mcnemar_exact, split_stability

#: Images x variants per onnxruntime run when batching is possible: large enough to amortize per-run
#: overhead, small enough to keep activations of mid-sized CNNs in a few hundred MB.
DEFAULT_RUN_SIZE = 1024
#: Largest difference, relative to max(1, max |output|), between a stacked run and the one-variant runs it
#: replaces (the same arithmetic, but onnxruntime may pick other kernels for another batch size).
STACKING_TOLERANCE = 1e-4
#: How the variants are evaluated: ``mask`` (one session, the kernel mask, V variants per run) or ``sessions``
#: (the model itself with the kernel's weights dropped, one session per variant), chosen by measured cost.
MECHANISMS = ("mask", "sessions")
#: Images on which a variant session must reproduce the masked model before it may be used.
PROBE_IMAGES = 16
#: Timing both mechanisms is done only when it costs at most this share of the job.
PROBE_SHARE = 0.02
#: Without timing, the mask is kept when at least this share of the model's multiply-accumulates lies before
#: the point where its variants fork (that part then runs once per image, not once per variant).
MASK_SHARE = 0.15
#: Scoring estimated shorter than this (seconds, from one masked run) keeps the mask without timing both:
#: the probe would cost more than the choice could save.
MIN_PROBED_SECONDS = 3.0


@dataclass(frozen=True)
class KernelScore:
    """The effect of dropping one output kernel of the audited layer."""

    index: int
    accuracy: float
    delta: float  # accuracy - baseline accuracy
    fragile: bool  # accuracy below the mean over kernels: member of S
    correct_to_wrong: int  # images the baseline gets right and the variant wrong
    wrong_to_correct: int  # the reverse
    p_value: float  # exact McNemar test of variant vs baseline predictions
    split_stability: float  # share of bootstrap resamples that put the kernel on the same side
    changed_predictions: float  # share of images whose predicted class changes
    weight_norm: float  # L2 norm of the kernel's (dequantized) weights


@dataclass(frozen=True)
class BatchPlan:
    """How the variants were run."""

    fixed_batch: int | None  # the batch size baked into the file, if any
    batch_made_dynamic: bool  # graph surgery removed a fixed batch
    variants_per_run: int
    images_per_run: int
    runs: int
    mechanism: str = "mask"  # see MECHANISMS
    mechanism_note: str | None = None  # why
    mechanism_costs: dict[str, float] | None = None  # the probe's timings, when it measured both


@dataclass(frozen=True)
class ScoringResult:
    """Scores of every kernel plus the S / S' split by the mean rule."""

    drop_mode: str
    n_images: int
    baseline_accuracy: float
    mean_accuracy: float
    kernels: list[KernelScore]
    fragile: list[int]
    null: list[int]
    mask_site: MaskSite
    plan: BatchPlan
    bootstrap_resamples: int
    seconds: float

    @property
    def variant_images_per_second(self) -> float:
        """(C_out + 1) x N model evaluations divided by the scoring wall time."""
        return (len(self.kernels) + 1) * self.n_images / self.seconds if self.seconds > 0 else float("nan")


@dataclass(frozen=True)
class StackingState:
    """Which (variants, images) shapes were checked: those that stack correctly, and those that do not (why)."""

    verified: frozenset[tuple[int, int]]
    failed: tuple[tuple[tuple[int, int], str], ...]  # (shape, note), in the order the checks failed


class KernelDropRunner:
    """One onnxruntime session that evaluates the model with any set of first-layer kernels dropped."""

    def __init__(
        self,
        proto: onnx.ModelProto,
        layer: ConvLayer,
        image_input: str,
        output: str,
        *,
        drop: str = "weights",
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        batching: Batching | None = None,
        mechanism: str = "auto",
    ) -> None:
        if drop not in DROP_MODES:
            raise ValueError(f"drop must be one of {DROP_MODES}")
        if mechanism not in ("auto", *MECHANISMS):
            raise ValueError(f"mechanism must be auto or one of {MECHANISMS}")
        index = GraphIndex.build(proto.graph)
        if output not in index.downstream_tensors(layer.output):
            raise ModelError(f"output {output!r} does not depend on layer {layer.name!r}; choose another --output")
        self.layer = layer
        self.drop = drop
        self.image_input = image_input
        self.output = output
        self.providers = list(providers) if providers else None
        self.channels = layer.out_channels
        self.site = find_mask_site(proto, layer, drop, infer_elem_types(proto), commute=True)
        self.batching = batching or resolve_batching(proto, image_input, output, providers, threads)
        # A residual shortcut or a concatenation around the layer: the variants fork where both branches meet.
        self.expansion = batch_expansion_point(self.batching.proto, self.site.tensor, image_input)
        self._masked = insert_kernel_mask(self.batching.proto, self.site, self.channels, output, self.expansion)
        self._threads = threads
        self._session = None  # built on the first run (a driver that only hands out tasks never needs it)
        self._verified: set[tuple[int, int]] = set()  # (V, N) shapes whose stacked runs were checked
        self._failed: dict[tuple[int, int], str] = {}  # (V, N) shapes whose stacked runs failed the check: why
        self.session_runs = 0  # onnxruntime runs so far (the checks included)
        self.device: str | None = None  # where onnxruntime ran the variants ("cpu" / "cuda"), once it has
        self.mechanism = "mask"
        self.mechanism_note: str | None = None  # why this mechanism, once chosen
        self.mechanism_costs: dict[str, float] | None = None  # what the probe measured (wall-clock figures)
        self._mechanism_chosen = False
        self._dropper: WeightDropper | None = None
        self._plain: onnx.ModelProto | None = None  # the model restricted to ``output``, when it has others
        self._variant: tuple[bytes, object] | None = None  # (mask row, session) of the last variant run
        self.sessions_built = 0  # variant sessions built by the ``sessions`` mechanism
        if mechanism != "auto":
            self.use_mechanism(
                mechanism, f"the {'kernel mask' if mechanism == 'mask' else 'one session per variant'}, as asked"
            )

    @property
    def session(self):
        """The onnxruntime session of the masked model (built on first use)."""
        if self._session is None:
            self._session = make_session(self._masked, self.providers, self._threads)
            self.device = onnxruntime_device(self._session)
        return self._session

    def release(self) -> None:
        """Drop the onnxruntime sessions (and their memory); a later run builds them again."""
        self._session = None
        self._variant = None

    @property
    def decided_mechanism(self) -> bool:
        """Whether the mechanism was chosen (measured, or handed over by :meth:`use_mechanism`)."""
        return self._mechanism_chosen

    @property
    def variant_major(self) -> bool:
        """Whether runs should go variant by variant (each variant's session serves all its images)."""
        return self.mechanism == "sessions"

    def use_mechanism(self, mechanism: str, note: str | None = None) -> None:
        """Evaluate variants with ``mechanism`` (another runner's measured choice, e.g. on a Ray worker)."""
        if mechanism not in MECHANISMS:
            raise ValueError(f"mechanism must be one of {MECHANISMS}")
        if mechanism == "sessions" and self._dropper is None:
            self._dropper = WeightDropper(self._plain_model(), self.layer)
        self.mechanism, self.mechanism_note, self._mechanism_chosen = mechanism, note, True
        if mechanism == "sessions":
            self._session = None  # the masked session is not needed any more

    def choose_mechanism(self, x: np.ndarray, images: int, variants: int, group: int) -> str:
        """Choose how to evaluate ``variants`` x ``images`` (``x``: the first image batch, as the real runs take
        it; ``group``: variants per masked run), once per runner.

        - A job estimated under :data:`MIN_PROBED_SECONDS` keeps the mask (C_out + 1 session builds would
          cost more than they save).
        - When timing both costs at most :data:`PROBE_SHARE` of the job, both run once on ``x`` at their real
          shapes (the mask: the group stacked; a variant session: the batch), after a warm-up each, and the
          cheaper for the whole job, session builds included, is kept.
        - Otherwise the static estimate decides: the mask when the network before the point where its
          variants fork holds at least :data:`MASK_SHARE` of the model's multiply-accumulates (that part runs
          once per image), else one session per variant (each exactly as fast as the deployed model).

        ``sessions`` must first reproduce the masked model's outputs on 16 images (within the stacking
        tolerance), else the mask stays.
        """
        if self._mechanism_chosen:
            return self.mechanism
        self._mechanism_chosen = True
        if self.drop != "weights":
            self.mechanism_note = "the kernel mask (--drop channel masks the channel after its activation)"
            return self.mechanism
        probe = x[: self.fixed_batch] if not self.batchable else x[:PROBE_IMAGES]
        if self.fixed_batch and len(probe) < self.fixed_batch:
            self.mechanism_note = "the kernel mask (fewer images than the model's fixed batch)"
            return self.mechanism
        masks = drop_masks(self.channels)
        keep = masks[1] > 0
        started = time.perf_counter()
        reference = self._run(probe, masks[1:2])  # the masked session first: its errors are the model's
        per_image = (time.perf_counter() - started) / len(probe)
        if per_image * variants * images < MIN_PROBED_SECONDS:
            self.mechanism_note = "the kernel mask (a short job: one session per variant would cost more)"
            return self.mechanism
        try:
            self._dropper = WeightDropper(self._plain_model(), self.layer)
            started = time.perf_counter()
            session = make_session(self._dropper.model_bytes(keep), self.providers, self._threads, shared_arena=True)
            build = time.perf_counter() - started
            started = time.perf_counter()
            candidate = self._plain_run(session, probe)
            per_image = min(per_image, (time.perf_counter() - started) / len(probe))
        except (ModelError, ValueError) as exc:  # ValueError: a stored tensor numpy cannot read
            self._dropper = None
            self.mechanism_note = f"the kernel mask (one session per variant is not possible: {exc})"
            return self.mechanism
        scale = max(1.0, float(np.max(np.abs(reference)))) if reference.size else 1.0
        if candidate.shape != reference.shape or np.max(np.abs(candidate - reference), initial=0.0) > (
            STACKING_TOLERANCE * scale
        ):
            self._dropper = None
            self.mechanism_note = "the kernel mask (the model with a kernel's weights dropped gave other outputs)"
            return self.mechanism
        stacked = masks[: max(1, min(group, variants))] if self.batchable else masks[:1]
        job = per_image * variants * images
        probe_cost = per_image * 2 * (len(stacked) + 1) * len(x)
        if probe_cost <= PROBE_SHARE * job:
            use_sessions = self._time_both(x, stacked, session, build, variants, images)
            why = "measured cheaper"
        else:
            share = share_before(self._plain_model(), self._fork_tensor())
            use_sessions = share is None or share < MASK_SHARE
            if share is None:
                why = "the default; the model's arithmetic could not be estimated"
            else:
                why = f"estimated: {share:.0%} of the model's arithmetic lies before the variants' fork"
        if use_sessions:
            self.use_mechanism("sessions", f"one session per variant with its weights dropped ({why})")
            self._variant = (keep.tobytes(), session)
            self.sessions_built += 1
        else:
            self.mechanism_note = f"the kernel mask at {self.site.tensor!r} ({why})"
            self._dropper = None  # its copy of the serialized model is not needed
        return self.mechanism

    def share_after_fork(self) -> float | None:
        """The share of the model's multiply-accumulates each variant must run on its own (after the point where
        the variants fork; the part before it can run once per image); None when it cannot be estimated."""
        share = share_before(self._plain_model(), self._fork_tensor())
        return None if share is None else 1.0 - share

    def _fork_tensor(self) -> str:
        """The tensor where the kernel variants part (the block input for a bypassed layer, else the mask site)."""
        return self.expansion.tensor if self.expansion is not None else self.site.tensor

    def _time_both(self, x: np.ndarray, stacked: np.ndarray, session, build: float, variants: int, images: int) -> bool:
        """Whether one session per variant is cheaper than the mask for the job, timed on ``x`` at the real
        run shapes (after one untimed run of each, which grows onnxruntime's arenas to them)."""
        if not self.batchable:
            x = x[: self.fixed_batch]  # a fixed-batch graph: both run exactly that many images
        try:
            self._run(x, stacked)
        except ModelError:  # this graph does not stack: the mask would run one variant at a time
            stacked = stacked[:1]
            self._run(x, stacked)
        self._plain_run(session, x)
        started = time.perf_counter()
        self._run(x, stacked)
        mask_s = (time.perf_counter() - started) / (len(stacked) * len(x))
        started = time.perf_counter()
        self._plain_run(session, x)
        session_s = (time.perf_counter() - started) / len(x)
        self.mechanism_costs = {
            "mask_ms_per_variant_image": mask_s * 1e3,
            "mask_variants_per_run": len(stacked),
            "sessions_ms_per_variant_image": session_s * 1e3,
            "session_build_seconds": build,
            "probe_images": len(x),
        }
        return variants * (build + images * session_s) < variants * images * mask_s

    def _plain_model(self) -> onnx.ModelProto:
        """The batch-ready model with only the scored output (what each variant session runs), copied once."""
        proto = self.batching.proto
        if [o.name for o in proto.graph.output] == [self.output]:
            return proto
        if self._plain is None:
            self._plain = onnx.ModelProto()
            self._plain.CopyFrom(proto)
            wanted = [o for o in self._plain.graph.output if o.name == self.output]
            del self._plain.graph.output[:]
            self._plain.graph.output.extend(wanted)
        return self._plain

    def _plain_run(self, session, x: np.ndarray) -> np.ndarray:
        self.session_runs += 1
        return run_checked(session, {self.image_input: x}, self.output)

    def _variant_session(self, row: np.ndarray):
        """The session of the model with the kernels where ``row`` is 0 dropped (the last one is kept)."""
        key = (row > 0).tobytes()
        if self._variant is None or self._variant[0] != key:
            self._variant = None  # free the previous variant's session before building the next
            assert self._dropper is not None
            model = self._dropper.model_bytes(row > 0)
            self._variant = (key, make_session(model, self.providers, self._threads, shared_arena=True))
            self.device = onnxruntime_device(self._variant[1])
            self.sessions_built += 1
        return self._variant[1]

    @property
    def stacking(self) -> bool:
        """Whether every (V, N) shape checked so far stacks correctly."""
        return not self._failed

    @property
    def stacking_note(self) -> str | None:
        """Why some variants were run one at a time (the first failed check), or None."""
        return next(iter(self._failed.values()), None)

    @property
    def fixed_batch(self) -> int | None:
        """The batch size baked into the model file, if any."""
        return self.batching.fixed_batch

    @property
    def batchable(self) -> bool:
        """Whether variants and images can share runs freely."""
        return self.batching.batchable

    @property
    def batch_made_dynamic(self) -> bool:
        """Whether a fixed batch was removed by (verified) graph surgery."""
        return self.batching.made_dynamic

    def predict(self, x: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Predicted classes, shape (V, N), of ``x`` under each of the V rows of ``masks`` (1 keep, 0 drop)."""
        masks = np.asarray(masks, dtype=np.float32)
        variants, images = masks.shape[0], x.shape[0]
        if self.mechanism == "sessions" and np.isin(masks, (0.0, 1.0)).all():
            return self._predict_sessions(x, masks)
        if self.batchable:
            if variants == 1 or (variants, images) in self._verified:
                return _argmax(self._run(x, masks), variants, images)
            if (variants, images) in self._failed:
                return np.concatenate([_argmax(self._run(x, masks[v : v + 1]), 1, images) for v in range(variants)])
            return self._checked_stack(x, masks)
        # A fixed batch that could not be made dynamic: one variant and exactly `fixed` images per run.
        fixed = self.fixed_batch or 1
        preds = np.empty((variants, images), dtype=np.int64)
        for v in range(variants):
            for start, chunk, real in fixed_chunks(x, fixed):
                preds[v, start : start + real] = _argmax(self._run(chunk, masks[v : v + 1]), 1, fixed)[0, :real]
        return preds

    def _predict_sessions(self, x: np.ndarray, masks: np.ndarray) -> np.ndarray:
        preds = np.empty((masks.shape[0], x.shape[0]), dtype=np.int64)
        for v, row in enumerate(masks):
            session = self._variant_session(row)
            if self.batchable:
                preds[v] = _argmax(self._plain_run(session, x), 1, x.shape[0])[0]
                continue
            fixed = self.fixed_batch or 1
            for start, chunk, real in fixed_chunks(x, fixed):
                preds[v, start : start + real] = _argmax(self._plain_run(session, chunk), 1, fixed)[0, :real]
        return preds

    def decided(self, shape: tuple[int, int]) -> bool:
        """Whether the stacking of this (variants, images) shape was already checked (either way)."""
        return shape in self._verified or shape in self._failed

    def stacking_state(self, shape: tuple[int, int] | None = None) -> StackingState:
        """What the stacking checks decided (for one ``shape`` only, if given): a backend hands it on."""
        verified = {s for s in self._verified if shape is None or s == shape}
        failed = tuple((s, note) for s, note in self._failed.items() if shape is None or s == shape)
        return StackingState(frozenset(verified), failed)

    def adopt_stacking(self, state: StackingState) -> None:
        """Add another runner's stacking decisions for the same layer (those shapes are not checked again)."""
        self._verified |= state.verified
        for shape, note in state.failed:
            self._failed.setdefault(shape, note)

    def _run(self, x: np.ndarray, masks: np.ndarray) -> np.ndarray:
        self.session_runs += 1
        return run_checked(self.session, {self.image_input: x, MASK_INPUT: _mask5(masks)}, self.output)

    def _checked_stack(self, x: np.ndarray, masks: np.ndarray) -> np.ndarray:
        """Predictions of the first run at this (V, N): the stacked run, once it reproduced the V one-variant runs.

        When it does, the stacked run gives the result, as it will for every later run of this shape (so a task's
        predictions do not depend on whether it was the first of its shape: backends that split the work agree);
        when it does not, the one-variant runs (the original graph's batch) give it, as they will for every later
        run of this shape.
        """
        variants, images = masks.shape[0], x.shape[0]
        separate = [self._run(x, masks[v : v + 1]) for v in range(variants)]
        for out in separate:
            _argmax(out, 1, images)  # an output without the batch first is the model's problem, not stacking's
        reference = np.concatenate(separate)
        reason = None
        try:
            stacked = self._run(x, masks)
        except ModelError as exc:
            reason = str(exc).removeprefix("onnxruntime failed while running the model: ")
        else:
            if stacked.shape != reference.shape:
                reason = f"its output has shape {list(stacked.shape)} instead of {list(reference.shape)}"
            else:
                scale = max(1.0, float(np.max(np.abs(reference))) if reference.size else 1.0)
                diff = float(np.max(np.abs(stacked.astype(np.float64) - reference))) if reference.size else 0.0
                if not diff <= STACKING_TOLERANCE * scale:
                    reason = f"its outputs differ from the one-variant runs by {diff:.3g}"
        if reason is None:
            self._verified.add((variants, images))
            return _argmax(stacked, variants, images)
        self._failed[(variants, images)] = (
            f"stacking {variants} kernel variants into one batch of {variants * images} does not reproduce "
            f"the model run one variant at a time ({reason}; e.g. a Reshape whose target is computed from "
            "the input's batch): variants were run one at a time (slower, same results)"
        )
        return _argmax(reference, variants, images)


def _mask5(masks: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(masks.reshape(masks.shape[0], 1, masks.shape[1], 1, 1), dtype=np.float32)


def _argmax(out: np.ndarray, variants: int, images: int) -> np.ndarray:
    if out.ndim == 0 or out.shape[0] != variants * images:
        raise ModelError(
            f"the model's output has batch {out.shape[0]} for {variants * images} inputs; kernelscope expects "
            "the batch on the output's first axis"
        )
    return out.reshape(variants, images, -1).argmax(axis=2)


def drop_masks(channels: int) -> np.ndarray:
    """The (C_out + 1, C_out) variant masks: row 0 keeps everything, row k+1 drops kernel k."""
    masks = np.ones((channels + 1, channels), dtype=np.float32)
    masks[np.arange(1, channels + 1), np.arange(channels)] = 0.0
    return masks


def plan_groups(variants: int, images_per_run: int, run_size: int) -> list[np.ndarray]:
    """Split variant indices into balanced groups of about ``run_size // images_per_run`` each."""
    per_run = max(1, run_size // max(1, images_per_run))
    groups = math.ceil(variants / per_run)
    return [g for g in np.array_split(np.arange(variants), groups) if g.size]


def predict_variants(
    runner: KernelDropRunner,
    data: PreparedData,
    masks: np.ndarray,
    *,
    batch_size: int = 128,
    run_size: int = DEFAULT_RUN_SIZE,
    progress: Progress = NO_PROGRESS,
    description: str = "Evaluating kernel variants",
    backend: Backend | None = None,
) -> tuple[np.ndarray, BatchPlan]:
    """Predicted classes (V, N) of every image under each row of ``masks``: tasks of (image batch, balanced
    group of variants), run by ``backend`` (default: this process, each image batch preprocessed once)."""
    variants, n = masks.shape[0], len(data)
    images_per_run = batch_size if runner.batchable else (runner.fixed_batch or 1)
    groups = plan_groups(variants, images_per_run, run_size) if runner.batchable else [np.arange(variants)]
    if n and not runner.decided_mechanism:
        runner.choose_mechanism(next(data.batches(batch_size))[0], n, variants, len(groups[0]))
    if runner.variant_major:
        groups = [np.array([v]) for v in range(variants)]  # each variant's session serves all its images
    tasks = plan_tasks(groups, n, batch_size, variant_major=runner.variant_major)
    preds, runs = (backend or LocalBackend()).predict(runner, data, masks, tasks, batch_size, progress, description)
    stacked = runner.batchable and runner.stacking and not runner.variant_major
    plan = BatchPlan(
        fixed_batch=runner.fixed_batch,
        batch_made_dynamic=runner.batch_made_dynamic,
        variants_per_run=max(len(g) for g in groups) if stacked else 1,
        images_per_run=images_per_run,
        runs=runs,
        mechanism=runner.mechanism,
        mechanism_note=runner.mechanism_note,
        mechanism_costs=runner.mechanism_costs,
    )
    return preds, plan


def score_kernels(
    runner: KernelDropRunner,
    data: PreparedData,
    *,
    batch_size: int = 128,
    run_size: int = DEFAULT_RUN_SIZE,
    seed: int = 0,
    bootstrap: int = 1000,
    progress: Progress = NO_PROGRESS,
    backend: Backend | None = None,
) -> ScoringResult:
    """Accuracy of the model with each kernel of ``runner.layer`` dropped, on every image of ``data``.

    Returns the per-kernel scores, the mean rule split (S = accuracy below the mean over kernels), the
    paired McNemar p-value of each kernel against the baseline and the bootstrap stability of its side.
    """
    started = time.perf_counter()
    channels = runner.channels
    preds, plan = predict_variants(
        runner, data, drop_masks(channels), batch_size=batch_size, run_size=run_size, progress=progress,
        description=f"Scoring {channels} kernels on {len(data)} images", backend=backend,
    )  # fmt: skip
    n = len(data)
    correct = preds == data.labels[None, :]
    counts = correct.sum(axis=1)
    base_correct = correct[0]
    dropped = correct[1:]
    drop_counts = counts[1:]
    # The mean rule on integer counts: a_k < mean  <=>  count_k * C < sum of counts (no float ties).
    fragile_mask = drop_counts * channels < drop_counts.sum()
    stability = split_stability(dropped, bootstrap, seed)
    norms = runner.layer.kernel_norms()
    kernels = []
    for k in range(channels):
        c2w = int(np.count_nonzero(base_correct & ~dropped[k]))
        w2c = int(np.count_nonzero(~base_correct & dropped[k]))
        kernels.append(
            KernelScore(
                index=k,
                accuracy=float(drop_counts[k] / n),
                delta=float((drop_counts[k] - counts[0]) / n),
                fragile=bool(fragile_mask[k]),
                correct_to_wrong=c2w,
                wrong_to_correct=w2c,
                p_value=mcnemar_exact(c2w, w2c),
                split_stability=float(stability[k]),
                changed_predictions=float(np.mean(preds[k + 1] != preds[0])),
                weight_norm=float(norms[k]),
            )
        )
    return ScoringResult(
        drop_mode=runner.drop,
        n_images=n,
        baseline_accuracy=float(counts[0] / n),
        mean_accuracy=float(drop_counts.mean() / n),
        kernels=kernels,
        fragile=[k for k in range(channels) if fragile_mask[k]],
        null=[k for k in range(channels) if not fragile_mask[k]],
        mask_site=runner.site,
        plan=plan,
        bootstrap_resamples=bootstrap,
        seconds=time.perf_counter() - started,
    )
