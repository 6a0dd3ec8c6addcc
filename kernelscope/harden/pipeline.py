"""``harden``: filter the null kernels of the first Conv (Gavish–Donoho SVD) and amplify the fragile ones,
with a searched noise level and an honest before/after measurement (DESIGN §2.7).

The data is split once, deterministically, into a validation part (which decides S / S' and picks the
noise level) and a held-out evaluation part (which judges the result). Every candidate is attacked
white-box: FGSM gradients come from the mirror of the candidate itself, never from the original model.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from kernelscope import __version__
from kernelscope.attacks.fgsm import default_epsilons
from kernelscope.attacks.sweep import EpsilonAccuracy, EpsilonTargeting, check_epsilons
from kernelscope.audit import AuditInputs, InspectConfig, load_audit_inputs
from kernelscope.data.preprocessing import PreparedData
from kernelscope.errors import UsageError
from kernelscope.harden.svd import SVD_MODES, NullFilter, filter_weights, noise_grid, unknown_noise_level
from kernelscope.io import save_model_atomic
from kernelscope.model.batching import resolve_batching
from kernelscope.model.first_conv import find_conv
from kernelscope.model.surgery.replace_weight import replace_conv_weight, set_metadata
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.robustness import epsilon_kind, prepare_attack, run_attack
from kernelscope.scoring import KernelDropRunner, ScoringResult, score_kernels

#: Metadata key of hardened files (a JSON object; see docs/metadata.md).
META_HARDEN = "kernelscope.harden"

#: The ε the search optimizes when ``--eps`` is not given: a one-step attack that leaves a measurable
#: accuracy on typical models (about 2.5/255 for colour images, 0.1 for digits).
AUDIT_EPSILON = {"cifar10": 0.01, "mnist": 0.1}


@dataclass(frozen=True)
class HardenConfig:
    """Options of ``harden`` on top of the shared data/model options in ``inspect``."""

    inspect: InspectConfig
    noise: float | None = None  # force this ε_n and skip the search
    svd_mode: str = "hard"
    clean_budget: float = 0.01  # at most this much clean accuracy (a fraction) below the original, on validation
    audit_epsilon: float | None = None
    val_fraction: float = 0.5
    grid_size: int = 8


@dataclass(frozen=True)
class Candidate:
    """One noise level tried on the validation split."""

    noise_level: float
    source: str  # "grid", "gavish-donoho unknown noise" or "forced"
    tau: float
    alpha: float
    kept_singular_values: int
    val_clean_accuracy: float
    val_fgsm_accuracy: float
    within_budget: bool


@dataclass(frozen=True)
class Measurement:
    """Clean accuracy, FGSM sweep and targeting of one model on the evaluation split."""

    clean_accuracy: float
    fgsm: list[EpsilonAccuracy]
    targeting: list[EpsilonTargeting]
    mirror_relative_diff: float


@dataclass
class HardenReport:
    """What ``harden`` found, measured and (maybe) produced."""

    kernelscope_version: str
    inputs: AuditInputs
    scoring: ScoringResult  # on the validation split: it decides S / S'
    audit_epsilon: float
    svd_mode: str
    forced: bool
    n_validation: int
    n_evaluation: int
    original_validation: tuple[float, float]  # (clean, FGSM at the audit ε)
    candidates: list[Candidate]
    chosen: Candidate | None
    filter: NullFilter | None
    before: Measurement
    after: Measurement | None
    hardened: onnx.ModelProto | None
    verdict: str
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)

    @property
    def improved(self) -> bool:
        """Whether a candidate beat the original on validation (or a level was forced)."""
        return self.hardened is not None


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (validation, evaluation) index split, each in data order."""
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1, not {val_fraction}")
    n_val = round(n * val_fraction)
    if n_val < 1 or n - n_val < 1:
        raise UsageError(f"{n} images cannot be split into validation and evaluation parts; use more data")
    order = np.random.default_rng(seed + 7919).permutation(n)  # offset: independent of --limit's draw
    return np.sort(order[:n_val]), np.sort(order[n_val:])


def _measure(
    proto: onnx.ModelProto,
    inputs: AuditInputs,
    data: PreparedData,
    epsilons: list[float],
    fragile: list[int],
    null: list[int],
    config: InspectConfig,
    progress: Progress,
) -> Measurement:
    """White-box FGSM sweep (gradients of ``proto`` itself) with targeting, judged by ``proto`` in onnxruntime."""
    image_input, output = inputs.image_input, inputs.output.name
    batching = resolve_batching(proto, image_input, output, config.providers, config.threads)
    prepared = prepare_attack(batching, image_input, output, data, tolerance=config.atol, providers=config.providers)
    report = run_attack(
        prepared, batching, image_input, output, inputs.layer, data,
        fragile=fragile, null=null, epsilons=epsilons, bounds=config.bounds, batch_size=config.batch_size,
        providers=config.providers, threads=config.threads, progress=progress,
    )  # fmt: skip
    sweep = report.sweep
    return Measurement(sweep.fgsm[0].accuracy, sweep.fgsm, sweep.targeting, prepared.check.relative_diff)


def harden_model(
    model_path: str | os.PathLike[str], config: HardenConfig, progress: Progress = NO_PROGRESS
) -> HardenReport:
    """Search a noise level on validation, transform the first Conv, and measure before/after on evaluation.

    Returns a :class:`HardenReport`; its ``hardened`` model is ``None`` when no candidate beat the original
    on validation and no level was forced. Nothing is written here (see :func:`write_hardened`).
    """
    _check(config)
    base = config.inspect
    inputs = load_audit_inputs(model_path, base, progress)
    timings = dict(inputs.timings)
    layer, data = inputs.layer, inputs.data
    val_idx, eval_idx = split_indices(len(data), config.val_fraction, base.seed)
    val = PreparedData(data.dataset.subset(val_idx), data.preprocessing)
    evaluation = PreparedData(data.dataset.subset(eval_idx), data.preprocessing)
    kind = epsilon_kind(data)
    audit_eps = config.audit_epsilon if config.audit_epsilon is not None else AUDIT_EPSILON[kind]
    sweep = list(base.epsilons) if base.epsilons is not None else default_epsilons(kind, base.eps_sweep)
    sweep = check_epsilons([*sweep, audit_eps], base.bounds)

    clock = time.perf_counter()
    runner = KernelDropRunner(
        inputs.model.proto, layer, inputs.image_input, inputs.output.name, drop=base.drop,
        providers=base.providers, threads=base.threads, batching=inputs.batching,
    )  # fmt: skip
    scoring = score_kernels(runner, val, batch_size=base.batch_size, seed=base.seed, bootstrap=0, progress=progress)
    fragile, null = scoring.fragile, scoring.null
    timings["scoring"] = time.perf_counter() - clock
    if not fragile or not null:
        raise UsageError(
            "every kernel scored the same on the validation split, so there is no fragile / null split to harden; "
            "use more (or different) data"
        )

    clock = time.perf_counter()
    original_val = _measure(inputs.model.proto, inputs, val, [audit_eps], fragile, null, base, progress)
    original_fgsm = original_val.fgsm[-1].accuracy
    levels: list[tuple[float, str]]
    if config.noise is not None:
        levels = [(config.noise, "forced")]
    else:
        levels = [(e, "grid") for e in noise_grid(layer.weight, null, config.grid_size)]
        levels.append((unknown_noise_level(layer.weight, null), "gavish-donoho unknown noise"))
    candidates: list[tuple[Candidate, NullFilter, onnx.ModelProto]] = []
    with progress.task(f"Trying {len(levels)} noise level(s) on {len(val)} validation images", len(levels)) as task:
        for level, source in levels:
            weight, info = filter_weights(layer.weight, fragile, null, level, config.svd_mode)
            proto = replace_conv_weight(inputs.model.proto, layer, weight)
            measured = _measure(proto, inputs, val, [audit_eps], fragile, null, base, NO_PROGRESS)
            candidate = Candidate(
                noise_level=float(level),
                source=source,
                tau=info.tau,
                alpha=info.alpha,
                kept_singular_values=info.kept_singular_values,
                val_clean_accuracy=measured.clean_accuracy,
                val_fgsm_accuracy=measured.fgsm[-1].accuracy,
                within_budget=measured.clean_accuracy >= original_val.clean_accuracy - config.clean_budget - 1e-12,
            )
            candidates.append((candidate, info, proto))
            task.advance()
    timings["search"] = time.perf_counter() - clock

    if config.noise is not None:
        chosen = candidates[0]
    else:
        eligible = [c for c in candidates if c[0].within_budget and c[0].val_fgsm_accuracy > original_fgsm]
        # Best FGSM accuracy; then the better clean accuracy; then the gentler (smaller) noise level.
        chosen = max(
            eligible, key=lambda c: (c[0].val_fgsm_accuracy, c[0].val_clean_accuracy, -c[0].noise_level), default=None
        )

    clock = time.perf_counter()
    before = _measure(inputs.model.proto, inputs, evaluation, sweep, fragile, null, base, progress)
    after = None
    hardened = None
    if chosen is not None:
        after = _measure(chosen[2], inputs, evaluation, sweep, fragile, null, base, progress)
        hardened = chosen[2]
        set_metadata(hardened, META_HARDEN, json.dumps(_metadata(inputs, chosen[1], config, scoring), sort_keys=True))
    timings["before_after"] = time.perf_counter() - clock

    report = HardenReport(
        kernelscope_version=__version__,
        inputs=inputs,
        scoring=scoring,
        audit_epsilon=audit_eps,
        svd_mode=config.svd_mode,
        forced=config.noise is not None,
        n_validation=len(val),
        n_evaluation=len(evaluation),
        original_validation=(original_val.clean_accuracy, original_fgsm),
        candidates=[c[0] for c in candidates],
        chosen=chosen[0] if chosen else None,
        filter=chosen[1] if chosen else None,
        before=before,
        after=after,
        hardened=hardened,
        verdict="",
        timings=timings,
    )
    report.verdict = _verdict(report)
    if chosen is not None and layer.quantized:
        wanted, _ = filter_weights(layer.weight, fragile, null, chosen[0].noise_level, config.svd_mode)
        applied = find_conv(chosen[2], inputs.image_input, base.layer).weight
        deviation = float(np.max(np.abs(applied - wanted)))
        report.warnings.append(
            f"the layer is quantized: the new weights were re-quantized with the existing scales and zero points "
            f"(largest deviation from the exact transform {deviation:.3g}; amplified weights beyond the integer range "
            "saturate)"
        )
    return report


def _check(config: HardenConfig) -> None:
    if config.svd_mode not in SVD_MODES:
        raise UsageError(f"--svd must be 'hard' or 'cap', not {config.svd_mode!r}")
    if config.noise is not None and not (np.isfinite(config.noise) and config.noise >= 0):
        raise UsageError(f"--noise must be a finite number >= 0, not {config.noise}")
    if not 0 <= config.clean_budget <= 1:
        raise UsageError(f"--clean-budget is a fraction of accuracy between 0 and 1, not {config.clean_budget}")
    if config.audit_epsilon is not None and not (np.isfinite(config.audit_epsilon) and config.audit_epsilon > 0):
        raise UsageError(f"--eps must be a positive number, not {config.audit_epsilon}")
    if not config.inspect.attack:
        raise UsageError("harden measures robustness with FGSM; it cannot run without the attack")


def _metadata(inputs: AuditInputs, info: NullFilter, config: HardenConfig, scoring: ScoringResult) -> dict:
    data = inputs.data.dataset
    return {
        "kernelscope_version": __version__,
        "layer": inputs.layer.name,
        "fragile": list(info.fragile),
        "null": list(info.null),
        "noise_level": info.noise_level,
        "tau": info.tau,
        "alpha": info.alpha,
        "svd_mode": info.svd_mode,
        "kept_singular_values": info.kept_singular_values,
        "drop_mode": scoring.drop_mode,
        "data": {"name": data.name, "source": data.source, "validation_images": scoring.n_images},
    }


def _verdict(report: HardenReport) -> str:
    eps = report.audit_epsilon
    before_at = next(e for e in report.before.fgsm if e.epsilon == eps)
    if report.chosen is None:
        clean, fgsm = report.original_validation
        best = max(report.candidates, key=lambda c: c.val_fgsm_accuracy)
        return (
            f"No candidate noise level beat the original on the validation split (FGSM accuracy {fgsm:.1%} at "
            f"ε = {eps:g}, clean {clean:.1%}); the best, ε_n = {best.noise_level:.3g}, reached "
            f"{best.val_fgsm_accuracy:.1%} FGSM at {best.val_clean_accuracy:.1%} clean. Nothing is written."
        )
    after_at = next(e for e in report.after.fgsm if e.epsilon == eps)
    c = report.chosen
    how = "forced" if report.forced else f"chosen on {report.n_validation} validation images"
    return (
        f"Noise level ε_n = {c.noise_level:.3g} ({how}; τ = {c.tau:.3g}, α = {c.alpha:.3f}, {c.kept_singular_values} "
        f"singular value(s) kept, {report.svd_mode} threshold). On {report.n_evaluation} held-out images: clean "
        f"accuracy {report.before.clean_accuracy:.1%} -> {report.after.clean_accuracy:.1%}, FGSM accuracy at "
        f"ε = {eps:g} {before_at.accuracy:.1%} -> {after_at.accuracy:.1%}."
    )


def write_hardened(report: HardenReport, path: str | os.PathLike[str]) -> list[str]:
    """Write the hardened model atomically (external data kept when the input used it); returns the files."""
    if report.hardened is None:
        raise UsageError("there is no hardened model to write")
    source = report.inputs.model
    external = source.format == "onnx" and _uses_external_data(source.path)
    written = [str(p) for p in save_model_atomic(report.hardened, Path(path), external_data=external)]
    report.written = written
    return written


def _uses_external_data(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
