"""``harden`` as one library call: splits, the candidate search, the held-out before/after, the verdict.

The data is split once, deterministically, into a validation part (which decides S / S' and chooses among
the candidates) and a held-out evaluation part (which judges the result). Methods (``--method``):

- ``svd`` (default): the paper's transform of the first Conv (:mod:`~kernelscope.harden.svd`) at a searched
  noise level;
- ``jacobian``, ``sensitivity``, ``adversarial``: fine-tuning through the trainable mirror on training
  images that are never the evaluation images (:mod:`~kernelscope.harden.finetune`);
- ``all``: every method, one comparison.

Every candidate and both final models are judged by the worst case over FGSM, PGD and the transfer attack
(:mod:`~kernelscope.harden.evaluate`); the held-out gain carries a paired test and an interval. Nothing is
written when nothing beats the original, when the held-out images do not confirm the validation pick, or
when the chosen change is a no-op — unless the user forces it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from kernelscope import __version__
from kernelscope.attacks.fgsm import default_epsilons
from kernelscope.attacks.pgd import PgdSettings
from kernelscope.attacks.sweep import EpsilonAccuracy, EpsilonTargeting, check_epsilons
from kernelscope.audit import AuditInputs, InspectConfig, _check_labels, load_audit_inputs
from kernelscope.data import load_dataset
from kernelscope.data.preprocessing import PreparedData, select_examples
from kernelscope.devices import onnxruntime_device, torch_device
from kernelscope.errors import UsageError
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.harden.evaluate import (
    HELD_OUT_PGD,
    SEARCH_PGD,
    AttackSuite,
    Robustness,
    RobustnessChange,
    Twin,
    compare_robustness,
    craft_transfer,
    evaluate_robustness,
)
from kernelscope.harden.finetune import FinetuneRun, FinetuneSettings
from kernelscope.harden.search import (
    DEFAULT_STRENGTHS,
    FINETUNE_METHODS,
    METHODS,
    Candidate,
    FinetuneSetup,
    choose,
    finetune_candidates,
    from_robustness,
    release_unchosen,
)
from kernelscope.harden.svd import (
    SVD_MODES,
    NullFilter,
    filter_weights,
    first_change_level,
    is_identity,
    noise_grid,
    unknown_noise_level,
)
from kernelscope.harden.torchscript import TorchScriptWrite
from kernelscope.harden.writeback import changed_initializers, write_back
from kernelscope.io import save_model_atomic
from kernelscope.mirror.trainable import TUNE_SCOPES, TunableSelection, find_tunable
from kernelscope.model.batching import Batching, resolve_batching
from kernelscope.model.first_conv import find_conv
from kernelscope.model.loading import TORCHSCRIPT_SUFFIXES
from kernelscope.model.memory import HARDEN_WEIGHT_COPIES, budgeted_run, memory_plan, release_memory
from kernelscope.model.surgery.replace_weight import replace_conv_weight, set_metadata
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.robustness import PreparedAttack, epsilon_kind, prepare_attack, run_attack
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
    noise: float | None = None  # force this ε_n (svd) and skip the search
    svd_mode: str = "hard"
    clean_budget: float = 0.01  # at most this much clean accuracy (a fraction) below the original
    audit_epsilon: float | None = None
    val_fraction: float = 0.5
    grid_size: int = 8
    method: str = "svd"
    tune: str = "all"  # "first-conv" or "all": which weights fine-tuning moves
    tune_batchnorm: bool = False
    train_data: str | None = None  # default: the named data set's train split
    train_split: str = "train"
    train_limit: int | None = 5000
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    strengths: tuple[float, ...] | None = None  # replaces the default grid of every fine-tuning method
    lambda_s: float = 0.1
    pgd: PgdSettings = HELD_OUT_PGD  # the held-out judgement's PGD
    force_write: bool = False  # write even when the held-out images do not confirm, or the change is a no-op


@dataclass(frozen=True)
class Measurement:
    """One model on the evaluation split: clean accuracy, FGSM sweep, targeting and the worst case."""

    clean_accuracy: float
    fgsm: list[EpsilonAccuracy]
    targeting: list[EpsilonTargeting]
    mirror_relative_diff: float
    robustness: Robustness | None = None  # clean / FGSM / PGD / transfer / worst at the audit ε


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
    hardened: onnx.ModelProto | None  # the model to write (None: nothing is written)
    verdict: str
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)
    method: str = "svd"
    devices: dict[str, str | None] = field(default_factory=dict)  # onnxruntime / torch: "cpu" or "cuda"
    original_validation_worst: float | None = None
    change: RobustnessChange | None = None  # held-out after − before, paired, per attack
    confirmed: bool | None = None  # the held-out images confirm the validation pick (None: nothing chosen)
    no_op: bool = False  # the chosen model's weights equal the original's
    first_change_level: float | None = None  # svd: the noise level where the filter starts to act
    tunable: TunableSelection | None = None
    runs: list[FinetuneRun] = field(default_factory=list)
    train: dict | None = None  # what the fine-tuning trained on
    changed_initializers: list[str] = field(default_factory=list)
    attacks: str = ""  # the judgement's attacks, in words
    clean_budget: float = 0.01
    torchscript_write: TorchScriptWrite | None = None  # how a TorchScript archive was written back

    @property
    def improved(self) -> bool:
        """Whether a model is to be written (a confirmed gain, or forced)."""
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


@dataclass
class _Model:
    """One model under judgement: its graph, batching, parity-checked mirror and onnxruntime judge."""

    proto: onnx.ModelProto
    batching: Batching
    prepared: PreparedAttack
    evaluator: OnnxEvaluator

    def twin(self, preprocessing, output: str) -> Twin:
        from kernelscope.robustness import _attack_module

        # A final Softmax is differentiated at its input (its probabilities round to one-hot on confident images).
        module, loss = _attack_module(self.prepared, self.batching.proto, output)
        chunk = None if self.batching.batchable else (self.batching.fixed_batch or 1)
        return Twin(module, preprocessing, loss, chunk)

    def judge(self, preprocessing):
        normalize = preprocessing.normalize
        return lambda x01: self.evaluator.run(normalize(x01 * np.float32(255.0)))[0].astype(np.float64)


def _model(proto: onnx.ModelProto, inputs: AuditInputs, data: PreparedData, config: InspectConfig) -> _Model:
    image_input, output = inputs.image_input, inputs.output.name
    batching = resolve_batching(proto, image_input, output, config.providers, config.threads)
    prepared = prepare_attack(
        batching, image_input, output, data, tolerance=config.atol, providers=config.providers,
        device=torch_device(config.device),
    )  # fmt: skip
    evaluator = OnnxEvaluator(batching, image_input, output, None, config.providers, config.threads)
    return _Model(proto, batching, prepared, evaluator)


def _measure(
    model: _Model,
    inputs: AuditInputs,
    data: PreparedData,
    epsilons: list[float],
    fragile: list[int],
    null: list[int],
    config: InspectConfig,
    progress: Progress,
    suite: AttackSuite | None = None,
    transfer: np.ndarray | None = None,
) -> Measurement:
    """White-box FGSM sweep (gradients of the model itself) with targeting, judged by onnxruntime; and, with a
    ``suite``, the worst case over FGSM, PGD and the transfer images."""
    image_input, output = inputs.image_input, inputs.output.name
    report = run_attack(
        model.prepared, model.batching, image_input, output, inputs.layer, data,
        fragile=fragile, null=null, epsilons=epsilons, bounds=config.bounds, batch_size=config.batch_size,
        providers=config.providers, threads=config.threads, targeting_at=config.targeting_at, progress=progress,
    )  # fmt: skip
    sweep = report.sweep
    robustness = None
    if suite is not None:
        pre = data.preprocessing
        robustness = evaluate_robustness(
            model.judge(pre), model.twin(pre, output), data, suite, transfer, progress, "Worst-case judgement"
        )
    return Measurement(
        sweep.fgsm[0].accuracy, sweep.fgsm, sweep.targeting, model.prepared.check.relative_diff, robustness
    )


def harden_model(
    model_path: str | os.PathLike[str], config: HardenConfig, progress: Progress = NO_PROGRESS
) -> HardenReport:
    """Search candidates on validation, judge the best on held-out images by the worst case, decide what to write.

    Returns a :class:`HardenReport`; its ``hardened`` model is ``None`` when nothing is to be written (no
    candidate beat the original, the held-out images did not confirm it, or the change is a no-op, each
    without ``force_write``). Nothing is written here (see :func:`write_hardened`).
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
    methods = [*FINETUNE_METHODS, "svd"] if config.method == "all" else [config.method]
    finetuning = [m for m in methods if m in FINETUNE_METHODS]

    tunable = None
    train = None
    head = None
    if finetuning:
        head = _head(inputs) if "sensitivity" in finetuning else None
        tunable = find_tunable(
            inputs.model.proto, config.tune, first_conv=layer.name, batchnorm=config.tune_batchnorm,
            head=head.name if head is not None else None,
        )  # fmt: skip
        if not tunable.tensors:
            where = f" ({len(tunable.quantized)} quantized layers are not tuned)" if tunable.quantized else ""
            raise UsageError(
                f"--tune {config.tune} finds no float Conv / Gemm / MatMul weight stored as an initializer to "
                f"fine-tune{where}; use --method svd"
            )
        train = _train_data(inputs, config, progress)

    clock = time.perf_counter()
    runner = KernelDropRunner(
        inputs.model.proto, layer, inputs.image_input, inputs.output.name, drop=base.drop,
        providers=base.providers, threads=base.threads, batching=inputs.batching, mechanism=base.mechanism,
    )  # fmt: skip
    # One shape inference sizes the scoring runs and (counting the copies harden holds) the PyTorch batches.
    plan = memory_plan(inputs.batching.proto, inputs.image_input, base.memory, HARDEN_WEIGHT_COPIES)
    run_size, batch = budgeted_run(runner, base.memory, base.run_size, base.batch_size, plan)
    scoring = score_kernels(
        runner, val, batch_size=batch, run_size=run_size, seed=base.seed, bootstrap=0, progress=progress
    )
    # The candidates' judgement builds its own sessions: the runner's (and its masked and plain models) go.
    del runner
    release_memory()
    fragile, null = scoring.fragile, scoring.null
    timings["scoring"] = time.perf_counter() - clock
    if "svd" in methods and (not fragile or not null):
        raise UsageError(
            "every kernel scored the same on the validation split, so there is no fragile / null split to harden; "
            "use more (or different) data, or a fine-tuning --method"
        )

    pre = data.preprocessing
    # The attacks' and the fine-tuning's forward+backward batches, sized by the memory budget (a 224-px
    # model fits far fewer than --batch-size images).
    attack_batch = plan.gradient_batch(base.batch_size, fixed=inputs.batching.run_batch)
    memory_note = plan.note(attack_batch, base.batch_size, "the attacks") if attack_batch < base.batch_size else None
    if attack_batch < base.batch_size:
        timings["gradient_batch"] = attack_batch
    measured = replace(base, batch_size=attack_batch)
    search_suite = AttackSuite(audit_eps, SEARCH_PGD, base.bounds, base.seed, attack_batch)
    held_out_suite = AttackSuite(audit_eps, config.pgd, base.bounds, base.seed, attack_batch)
    clock = time.perf_counter()
    original = _model(inputs.batching.proto, inputs, val, base)
    original_twin, original_judge = original.twin(pre, inputs.output.name), original.judge(pre)
    val_transfer = craft_transfer(original_twin, original_judge, val, search_suite, progress)
    original_val = evaluate_robustness(
        original_judge, original_twin, val, search_suite, val_transfer, progress, "Original on validation"
    )
    original_clean = original_val.accuracy("clean")
    timings["original_validation"] = time.perf_counter() - clock

    candidates: list[Candidate] = []
    # An SVD candidate keeps its filtered first-layer weight, not its whole model: the model is rebuilt for
    # the one chosen (a grid of levels would otherwise hold a model copy per level).
    payloads: dict[int, tuple[np.ndarray, NullFilter | None]] = {}
    first_level = None
    clock = time.perf_counter()
    if "svd" in methods:
        first_level = first_change_level(layer.weight, null, config.svd_mode)
        levels: list[tuple[float, str]]
        if config.noise is not None:
            levels = [(config.noise, "forced")]
        else:
            levels = [(e, "grid") for e in noise_grid(layer.weight, null, config.grid_size)]
            levels.append((unknown_noise_level(layer.weight, null), "gavish-donoho unknown noise"))
        description = f"SVD: {len(levels)} noise level(s) on {len(val)} validation images"
        with progress.task(description, len(levels)) as task:
            for level, source in levels:
                weight, info = filter_weights(layer.weight, fragile, null, level, config.svd_mode)
                proto = replace_conv_weight(inputs.model.proto, layer, weight)
                candidate_model = _model(proto, inputs, val, base)
                result = evaluate_robustness(
                    candidate_model.judge(pre),
                    candidate_model.twin(pre, inputs.output.name),
                    val,
                    search_suite,
                    val_transfer,
                )
                candidate = from_robustness(
                    "svd", f"ε_n = {level:.3g}", result, original_clean, config.clean_budget, no_op=is_identity(info),
                    noise_level=float(level), source=source, tau=info.tau, alpha=info.alpha,
                    kept_singular_values=info.kept_singular_values,
                )  # fmt: skip
                payloads[id(candidate)] = (weight, info)
                del proto, candidate_model  # this level's model, session and mirror
                release_memory()
                candidates.append(candidate)
                task.advance()
    runs: list[FinetuneRun] = []
    if finetuning:
        train_output, train_loss = _training_output(original, inputs.output.name)
        setup = FinetuneSetup(
            mirror=original.prepared.mirror, proto=original.batching.proto, output=train_output,
            loss=train_loss, tunable=tunable.names, train=train[0],
            settings=replace(config.finetune, device=original.prepared.device),  # where the mirror was checked
            epsilon=audit_eps, bounds=base.bounds, head=head, lambda_s=config.lambda_s,
            strengths={m: config.strengths or DEFAULT_STRENGTHS[m] for m in finetuning}, memory=plan,
        )  # fmt: skip
        found, runs = finetune_candidates(
            finetuning, setup, val, search_suite, val_transfer, original_clean, config.clean_budget, pre, progress,
            keep=lambda found: choose(found, original_val.accuracy("worst")),
        )  # fmt: skip
        candidates.extend(found)
    timings["search"] = time.perf_counter() - clock

    forced = config.noise is not None and config.method == "svd"
    chosen = candidates[0] if forced else choose(candidates, original_val.accuracy("worst"))
    release_unchosen(candidates, chosen)  # the others' tuned weights go before the held-out measurement
    release_memory()

    clock = time.perf_counter()
    # The original's session and parity-checked mirror serve the held-out part too (no second build).
    held_transfer = craft_transfer(original_twin, original_judge, evaluation, held_out_suite, progress)
    before = _measure(
        original, inputs, evaluation, sweep, fragile, null, measured, progress, held_out_suite, held_transfer
    )
    # The original's session and mirror are not needed past this point: they go before the hardened model's are
    # built, so the two models' copies are never alive together.
    devices = {"onnxruntime": onnxruntime_device(original.evaluator.session), "torch": original.prepared.device}
    del original, original_twin, original_judge
    if finetuning:
        del setup  # it holds the original's mirror
    after = None
    hardened = None
    info = None
    change = None
    changed: list[str] = []
    if chosen is not None:
        if chosen.method == "svd":
            weight, info = payloads[id(chosen)]
            hardened = replace_conv_weight(inputs.model.proto, layer, weight)
        else:
            hardened = write_back(inputs.model.proto, chosen.payload)
        chosen.payload = None  # now in ``hardened``
        payloads.clear()
        release_memory()
        changed = changed_initializers(inputs.model.proto, hardened)
        after_model = _model(hardened, inputs, evaluation, base)
        after = _measure(
            after_model, inputs, evaluation, sweep, fragile, null, measured, progress, held_out_suite, held_transfer
        )
        change = compare_robustness(before.robustness, after.robustness)
    timings["before_after"] = time.perf_counter() - clock

    report = HardenReport(
        kernelscope_version=__version__,
        inputs=inputs,
        scoring=scoring,
        audit_epsilon=audit_eps,
        svd_mode=config.svd_mode,
        forced=forced,
        n_validation=len(val),
        n_evaluation=len(evaluation),
        original_validation=(original_clean, original_val.accuracy("fgsm")),
        candidates=candidates,
        chosen=chosen,
        filter=info,
        before=before,
        after=after,
        hardened=None,
        verdict="",
        timings=timings,
        method=config.method,
        original_validation_worst=original_val.accuracy("worst"),
        change=change,
        first_change_level=first_level,
        tunable=tunable,
        runs=runs,
        train=train[1] if train else None,
        changed_initializers=changed,
        attacks=held_out_suite.describe(),
        clean_budget=config.clean_budget,
        devices=devices,
    )
    if memory_note:
        report.warnings.append(memory_note)
    report.warnings.extend(original_val.warnings)
    if after is not None:
        report.no_op = not changed
        report.confirmed = _confirmed(before, after, config.clean_budget)
        report.warnings.extend(change.warnings)
        report.warnings.extend(after.robustness.warnings)
        if ((report.confirmed or forced) and not report.no_op) or config.force_write:
            report.hardened = hardened
            set_metadata(
                hardened, META_HARDEN, json.dumps(_metadata(inputs, chosen, info, config, scoring), sort_keys=True)
            )
    if tunable is not None and tunable.quantized:
        report.warnings.append(
            f"{len(tunable.quantized)} quantized layer(s) are not tuned (their integer weights stay as deployed): "
            + ", ".join(tunable.quantized)
        )
    report.verdict = _verdict(report)
    if info is not None and layer.quantized:
        wanted, _ = filter_weights(layer.weight, fragile, null, chosen.noise_level, config.svd_mode)
        applied = find_conv(hardened, inputs.image_input, base.layer).weight
        deviation = float(np.max(np.abs(applied - wanted)))
        report.warnings.append(
            f"the layer is quantized: the new weights were re-quantized with the existing scales and zero points "
            f"(largest deviation from the exact transform {deviation:.3g}; amplified weights beyond the integer range "
            "saturate)"
        )
    return report


def _training_output(model: _Model, output: str) -> tuple[str, str]:
    """The tensor fine-tuning's losses read, and its kind: a final Softmax's input (logits) where there is one."""
    from kernelscope.attacks.gradients import softmax_input

    if model.prepared.preflight.loss == "nll_of_probabilities":
        tensor = softmax_input(model.batching.proto, output)
        if tensor is not None and model.prepared.mirror.computes(tensor):
            return tensor, "cross_entropy"
    return output, model.prepared.preflight.loss


def _confirmed(before: Measurement, after: Measurement, budget: float) -> bool:
    """The held-out images confirm the pick: a higher worst case, and clean accuracy within the budget."""
    worst_gain = after.robustness.accuracy("worst") - before.robustness.accuracy("worst")
    return worst_gain > 0 and after.clean_accuracy >= before.clean_accuracy - budget - 1e-12


def _head(inputs: AuditInputs):
    from kernelscope.model.linear_head import find_linear_head

    return find_linear_head(inputs.model.proto, inputs.output.name)


def _train_data(inputs: AuditInputs, config: HardenConfig, progress: Progress) -> tuple[PreparedData, dict]:
    """The fine-tuning images: ``--train-data`` (default: the named data set's train split), never the test images."""
    from kernelscope.data.sources import resolve_name

    base = config.inspect
    spec = config.train_data
    if spec is None:
        if resolve_name(base.data) is None:
            raise UsageError(
                f"fine-tuning needs labelled training images that are not the evaluation images: pass --train-data "
                f"(--data {base.data} is a path, so there is no train split to default to)"
            )
        spec = base.data
    same_source = spec == base.data or (
        Path(spec).expanduser().exists() and Path(base.data).expanduser().exists()
        and Path(spec).expanduser().resolve() == Path(base.data).expanduser().resolve()
    )  # fmt: skip
    if same_source and config.train_split == base.split:
        raise UsageError(
            f"--train-data {spec} (split {config.train_split}) is the evaluation data itself; fine-tune on other "
            "images (e.g. the train split: --train-split train)"
        )
    with progress.task(f"Loading training data {spec}", total=None) as task:
        dataset = load_dataset(
            spec, split=config.train_split, data_dir=base.data_dir, download=base.download,
            size=base.preprocessing.size, channels=base.preprocessing.channels,
            on_progress=lambda done, total: task.update(done, total), resize=base.preprocessing.resize,
            crop=base.preprocessing.crop, class_index=base.class_index,
        )  # fmt: skip
    _check_labels(dataset, inputs.num_classes)
    if same_source is False and dataset.source == inputs.data.dataset.source:
        raise UsageError(f"--train-data {spec} reads the same images as --data; fine-tune on other images")
    available = len(dataset)
    dataset = select_examples(dataset, config.train_limit, base.seed)
    summary = {
        "name": dataset.name, "source": dataset.source, "split": config.train_split,
        "images": len(dataset), "available": available, "limit": config.train_limit,
    }  # fmt: skip
    return PreparedData(dataset, inputs.data.preprocessing), summary


def _check(config: HardenConfig) -> None:
    if config.method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(METHODS)}, not {config.method!r}")
    if config.tune not in TUNE_SCOPES:
        raise UsageError(f"--tune must be one of {', '.join(TUNE_SCOPES)}, not {config.tune!r}")
    if config.svd_mode not in SVD_MODES:
        raise UsageError(f"--svd must be 'hard' or 'cap', not {config.svd_mode!r}")
    if config.noise is not None and not (np.isfinite(config.noise) and config.noise >= 0):
        raise UsageError(f"--noise must be a finite number >= 0, not {config.noise}")
    if config.noise is not None and config.method != "svd":
        raise UsageError(
            "--noise forces a level of the svd method; it cannot be combined with --method " + config.method
        )
    if not 0 <= config.clean_budget <= 1:
        raise UsageError(f"--clean-budget is a fraction of accuracy between 0 and 1, not {config.clean_budget}")
    if config.audit_epsilon is not None and not (np.isfinite(config.audit_epsilon) and config.audit_epsilon > 0):
        raise UsageError(f"--eps must be a positive number, not {config.audit_epsilon}")
    if not config.inspect.attack:
        raise UsageError("harden measures robustness with attacks; it cannot run without them")
    if config.train_limit is not None and config.train_limit <= 0:
        raise UsageError(f"--train-limit must be a positive number of images, not {config.train_limit}")
    if config.strengths is not None and (
        not config.strengths or any(not (np.isfinite(s) and s >= 0) for s in config.strengths)
    ):
        raise UsageError(f"--strengths must be finite numbers >= 0, not {list(config.strengths)}")
    if not (np.isfinite(config.lambda_s) and config.lambda_s >= 0):
        raise UsageError(f"--lambda-s must be a finite number >= 0, not {config.lambda_s}")
    config.pgd.check()
    config.finetune.check()


def _metadata(
    inputs: AuditInputs, chosen: Candidate, info: NullFilter | None, config: HardenConfig, scoring: ScoringResult
) -> dict:
    data = inputs.data.dataset
    meta = {
        "kernelscope_version": __version__,
        "method": chosen.method,
        "setting": chosen.label,
        "layer": inputs.layer.name,
        "drop_mode": scoring.drop_mode,
        "data": {"name": data.name, "source": data.source, "validation_images": scoring.n_images},
    }
    if info is not None:
        meta.update(
            fragile=list(info.fragile), null=list(info.null), noise_level=info.noise_level, tau=info.tau,
            alpha=info.alpha, svd_mode=info.svd_mode, kept_singular_values=info.kept_singular_values,
        )  # fmt: skip
    else:
        meta.update(epoch=chosen.epoch, strength=chosen.strength, tune=config.tune, train_images=chosen.train_images)
    return meta


def _verdict(report: HardenReport) -> str:
    eps = report.audit_epsilon
    if report.chosen is None:
        clean, _ = report.original_validation
        worst = report.original_validation_worst
        best = max(report.candidates, key=lambda c: c.key, default=None)
        text = (
            f"No candidate beat the original on the validation split (worst-case accuracy {worst:.1%} at ε = {eps:g}, "
            f"clean {clean:.1%}, budget {100 * report.clean_budget:.1f} points)"
        )
        if best is not None:
            text += (
                f"; the best, {best.method} {best.label}, reached {best.val_worst_accuracy:.1%} worst case at "
                f"{best.val_clean_accuracy:.1%} clean"
            )
        return text + ". Nothing is written; the frontier shows what a larger --clean-budget would buy."
    c = report.chosen
    b, a = report.before.robustness, report.after.robustness
    worst = report.change.comparisons["worst"]
    clean = report.change.comparisons["clean"]
    how = "forced" if report.forced else f"chosen on {report.n_validation} validation images"
    text = (
        f"{c.method} {c.label} ({how}). On {report.n_evaluation} held-out images at ε = {eps:g}: worst-case accuracy "
        f"{b.accuracy('worst'):.1%} -> {a.accuracy('worst'):.1%}, {worst.describe()}; clean "
        f"{b.accuracy('clean'):.1%} -> {a.accuracy('clean'):.1%}, {clean.describe()}."
    )
    if report.no_op:
        level = report.first_change_level
        hint = f"; the filter first changes a singular value at ε_n = {level:.4g}" if level is not None else ""
        text += f" The chosen change leaves every weight as it was (a no-op){hint}."
    elif not report.confirmed:
        text += " The held-out images do not confirm the validation pick."
    elif not worst.significant:
        text += " The gain is not significant on this many images."
    if report.hardened is None:
        text += " Nothing is written (--force-write writes it anyway)."
    elif report.no_op or (not report.confirmed and not report.forced):
        text += " Written because --force-write was given."
    return text


#: Images the written TorchScript archive is checked on against the hardened ONNX graph.
TORCHSCRIPT_CHECK_IMAGES = 64


def output_format(model_format: str, path: str | os.PathLike[str]) -> str:
    """What ``harden -o PATH`` writes: ONNX for an ``.onnx`` name, else the kind of file the input is.

    A TorchScript input is written back as TorchScript (its own module with the new weights) unless the name
    ends in ``.onnx``; an ONNX input can only be written as ONNX (a name that asks for TorchScript is refused).
    """
    suffix = Path(path).suffix.lower()
    if suffix == ".onnx":
        return "onnx"
    if model_format != "onnx":
        return "torchscript"
    if suffix in TORCHSCRIPT_SUFFIXES:
        raise UsageError(
            f"-o {path} names a TorchScript file, but the input is ONNX; kernelscope writes an ONNX input back as "
            "ONNX (use an .onnx name)"
        )
    return "onnx"


def write_hardened(report: HardenReport, path: str | os.PathLike[str]) -> list[str]:
    """Write the hardened model atomically; returns the files.

    ONNX: a copy of the input with the new initializers (external data kept when the input used it).
    TorchScript (a TorchScript input, ``path`` not ending in ``.onnx``): the input's own module with the new
    weights, checked against the hardened graph on the first images of the data
    (:mod:`~kernelscope.harden.torchscript`).
    """
    if report.hardened is None:
        raise UsageError("there is no hardened model to write")
    source = report.inputs.model
    if output_format(source.format, path) == "torchscript":
        from kernelscope.harden.torchscript import write_torchscript

        data = report.inputs.data
        pre = data.preprocessing
        check = pre.normalize(pre.fit(data.dataset.images[:TORCHSCRIPT_CHECK_IMAGES]))
        meta = {e.key: e.value for e in report.hardened.metadata_props}.get(META_HARDEN)
        result = write_torchscript(
            source.path, source.proto, report.hardened, path, check,
            metadata=json.loads(meta) if meta else None,
        )  # fmt: skip
        report.torchscript_write = result
        report.written = [str(result.path)]
        return report.written
    external = source.format == "onnx" and _uses_external_data(source.path)
    written = [str(p) for p in save_model_atomic(report.hardened, Path(path), external_data=external)]
    report.written = written
    return written


def _uses_external_data(path: Path) -> bool:
    proto = onnx.load(str(path), load_external_data=False)
    return any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer)
