"""``inspect``: the whole first-layer audit as one library call returning a dataclass.

The command line only parses options into :class:`InspectConfig`, calls :func:`inspect_model`, and
renders the :class:`InspectReport`; library users do the same without the CLI.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kernelscope import __version__
from kernelscope.attacks.options import ATTACKS, check_targeting_at
from kernelscope.attacks.pgd import PgdSettings
from kernelscope.attacks.sweep import check_epsilons
from kernelscope.backends import BACKENDS, Backend, get_backend
from kernelscope.data import ImageDataset, load_dataset
from kernelscope.data.preprocessing import (
    PreparedData,
    Preprocessing,
    PreprocessingOptions,
    resolve_preprocessing,
    select_examples,
)
from kernelscope.devices import torch_device
from kernelscope.errors import DataError, ModelError, UsageError
from kernelscope.fast_scoring import METHODS, FastScoring
from kernelscope.layers import LayerAudit, most_damaging, score_layer
from kernelscope.model.batching import Batching, resolve_batching
from kernelscope.model.first_conv import ConvLayer, LayerSelection, find_conv, select_convs
from kernelscope.model.loading import LoadedModel, TensorInfo, load_model
from kernelscope.model.memory import DEFAULT_MEMORY, budgeted_run, memory_plan, release_memory
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.scoring import DEFAULT_RUN_SIZE, KernelDropRunner, ScoringResult

if TYPE_CHECKING:  # the attack stage (torch) loads only when an attack or a gradient-based scorer runs
    from kernelscope.robustness import AttackReport


@dataclass(frozen=True)
class InspectConfig:
    """Everything ``inspect`` needs besides the model path. Defaults match the command line."""

    data: str
    data_dir: Path | None = None
    split: str = "test"
    download: bool = True
    layer: str | None = None
    output: str | None = None
    input_shape: tuple[int, ...] | None = None
    drop: str = "weights"
    device: str = "auto"  # --device: the torch side's device (onnxruntime's is in ``providers``)
    mechanism: str = "auto"  # how variants are evaluated: auto (measured), mask or sessions (--mechanism)
    limit: int | None = None
    seed: int = 0
    batch_size: int = 128
    run_size: int = DEFAULT_RUN_SIZE  # variant-images per scoring run at most (fewer when --memory needs it)
    memory: int = DEFAULT_MEMORY  # bytes the process should stay within (--memory; sizes every stage's runs)
    preprocessing: PreprocessingOptions = field(default_factory=PreprocessingOptions)
    providers: tuple[str, ...] | None = None
    threads: int | None = None
    bootstrap: int = 1000
    attack: bool = True
    epsilons: tuple[float, ...] | None = None  # None: the default sweep for the data (see eps_sweep)
    extra_epsilons: tuple[float, ...] = ()  # added to the sweep (the ε values gates read)
    eps_sweep: str = "lin"
    bounds: tuple[float, float] = (0.0, 1.0)
    atol: float | None = None  # None: 1e-4, or 1e-2 for float16 graphs
    method: str = "exact"  # "exact", "taylor" (estimate) or "hybrid"
    compare_exact: bool = False  # with a fast method: also score exactly and report the agreement
    attack_method: str = "fgsm"  # "fgsm" (the paper's attack) or "pgd"
    pgd: PgdSettings = field(default_factory=PgdSettings)  # used when attack_method is "pgd"
    targeting_at: str = "conv"  # the tensor Algorithm 1 compares: "conv" (the paper's) or "activation"
    class_index: Path | None = None  # --classes: class folder names -> the model's output indices
    layers: str | None = None  # audit these convolutions: "all", names "a,b", or a pattern "*conv1*"
    backend: str = "local"  # where the kernel variants run: "local" or "ray"
    ray_address: str | None = None  # a running Ray cluster (None: a local one)


@dataclass(frozen=True)
class ModelSummary:
    """What the model file is."""

    path: str
    format: str
    opset: int
    ir_version: int
    producer: str
    file_bytes: int
    input: TensorInfo
    output: TensorInfo
    output_names: list[str]
    num_classes: int | None
    node_count: int
    op_counts: dict[str, int]
    parameters: int
    fixed_batch: int | None


@dataclass(frozen=True)
class DataSummary:
    """Which images were used and how they were fed to the model."""

    name: str
    source: str
    split: str
    n: int
    available: int
    num_classes: int | None
    class_names: list[str] | None
    preprocessing: Preprocessing
    limit: int | None
    seed: int


@dataclass
class InspectReport:
    """The result of :func:`inspect_model`; rendered by ``kernelscope.report`` and the CLI."""

    kernelscope_version: str
    model: ModelSummary
    layer: ConvLayer
    data: DataSummary
    scoring: ScoringResult | None  # exact scores (None for a fast method without --compare-exact)
    holm_p_values: list[float]
    attack: AttackReport | None
    warnings: list[str]
    verdict: str
    timings: dict[str, float]
    method: str = "exact"
    fast: FastScoring | None = None
    layers: list[LayerAudit] | None = None  # --layers: every audited layer, the first one included
    skipped_layers: list[tuple[str, str]] = field(default_factory=list)  # (layer, why it was left out)
    devices: dict[str, str | None] = field(default_factory=dict)  # onnxruntime / torch: "cpu", "cuda" or None

    @property
    def baseline_accuracy(self) -> float | None:
        """Clean top-1 accuracy: from exact scoring, else the hybrid's exact runs, else the attack's ε = 0 run."""
        if self.scoring is not None:
            return self.scoring.baseline_accuracy
        if self.fast is not None and self.fast.baseline_accuracy is not None:
            return self.fast.baseline_accuracy
        return self.attack.sweep.accuracy[0].accuracy if self.attack else None

    @property
    def fragile(self) -> list[int]:
        """S according to the chosen method."""
        return self.fast.fragile if self.method != "exact" and self.fast else self.scoring.fragile

    @property
    def null(self) -> list[int]:
        """S' according to the chosen method."""
        return self.fast.null if self.method != "exact" and self.fast else self.scoring.null


@dataclass
class ModelAndData:
    """The model and the data fitted to it, before any measurement: what every command starts from."""

    model: LoadedModel
    output: TensorInfo
    data: PreparedData
    available: int
    num_classes: int | None
    batching: Batching
    timings: dict[str, float]

    @property
    def image_input(self) -> str:
        """Name of the model's image input."""
        return self.model.image_input.name

    def model_summary(self) -> ModelSummary:
        """What the model file is."""
        return _model_summary(self.model, self.output, self.num_classes, self.batching.fixed_batch)

    def data_summary(self, config: InspectConfig) -> DataSummary:
        """Which images were used (all of them, before any validation split) and how they were fed."""
        dataset = self.data.dataset
        return DataSummary(
            name=dataset.name,
            source=dataset.source,
            split=config.split,
            n=len(dataset),
            available=self.available,
            num_classes=dataset.num_classes,
            class_names=list(dataset.class_names) if dataset.class_names else None,
            preprocessing=self.data.preprocessing,
            limit=config.limit,
            seed=config.seed,
        )


@dataclass
class AuditInputs(ModelAndData):
    """:class:`ModelAndData` plus the audited convolution: shared by ``inspect`` and ``harden``."""

    layer: ConvLayer | None = None  # always set by load_audit_inputs (a default only because it comes last)


def load_model_and_data(
    model_path: str | os.PathLike[str],
    config: InspectConfig,
    progress: Progress = NO_PROGRESS,
    *,
    before_data: Callable[[LoadedModel, TensorInfo], object] | None = None,
) -> ModelAndData:
    """Load the model, load and fit the data, and decide how to batch the model (no layer is looked for).

    ``before_data(model, output)`` runs between the two, so a model the caller cannot use (it raises) fails
    before a long data load.
    """
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = load_model(model_path, input_shape=config.input_shape)
    output = model.output(config.output)
    if before_data is not None:
        before_data(model, output)
    timings["load_model"] = time.perf_counter() - clock
    return _with_data(model, output, config, timings, progress)


def load_audit_inputs(
    model_path: str | os.PathLike[str], config: InspectConfig, progress: Progress = NO_PROGRESS
) -> AuditInputs:
    """Load the model, find the layer, load and fit the data, and decide how to batch the model."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    model = load_model(model_path, input_shape=config.input_shape)
    output = model.output(config.output)
    # Before the data: a model without a usable Conv should fail before a long data load.
    layer = find_conv(model.proto, model.image_input.name, config.layer)
    timings["load_model"] = time.perf_counter() - clock
    loaded = _with_data(model, output, config, timings, progress)
    return AuditInputs(**{f: getattr(loaded, f) for f in ModelAndData.__dataclass_fields__}, layer=layer)


def _with_data(
    model: LoadedModel, output: TensorInfo, config: InspectConfig, timings: dict[str, float], progress: Progress
) -> ModelAndData:
    clock = time.perf_counter()
    with progress.task(f"Loading data {config.data}", total=None) as task:
        dataset = load_dataset(
            config.data,
            split=config.split,
            data_dir=config.data_dir,
            download=config.download,
            size=config.preprocessing.size,
            channels=config.preprocessing.channels,
            on_progress=lambda done, total: task.update(done, total),
            resize=config.preprocessing.resize,
            crop=config.preprocessing.crop,
            class_index=config.class_index,
        )
    num_classes = _num_classes(output)
    _check_labels(dataset, num_classes)
    available = len(dataset)
    dataset = select_examples(dataset, config.limit, config.seed)
    preprocessing = resolve_preprocessing(
        input_shape=model.image_input.shape,
        input_dtype=str(model.image_input.dtype),
        metadata=model.kernelscope_metadata.get("preprocessing") or {},
        dataset=dataset,
        options=config.preprocessing,
        preset=str(model.kernelscope_metadata.get("dataset") or ""),
    )
    timings["load_data"] = time.perf_counter() - clock
    batching = resolve_batching(model.proto, model.image_input.name, output.name, config.providers, config.threads)
    return ModelAndData(model, output, PreparedData(dataset, preprocessing), available, num_classes, batching, timings)


def inspect_model(
    model_path: str | os.PathLike[str], config: InspectConfig, progress: Progress = NO_PROGRESS
) -> InspectReport:
    """Audit the first convolution of a classifier: score every kernel by dropout on real data.

    Loads the model (ONNX or TorchScript), finds the layer, loads and fits the data, scores each kernel
    with one onnxruntime session, and returns an :class:`InspectReport`. User-fixable problems raise
    :class:`~kernelscope.errors.KernelscopeError` subclasses with one-line messages.
    """
    _check_config(config)
    inputs = load_audit_inputs(model_path, config, progress)
    selection = None
    if config.layers is not None:
        selection = select_convs(inputs.model.proto, inputs.image_input, config.layers)
        inputs.layer = selection.layers[0]
    model, output, layer, data, batching = inputs.model, inputs.output, inputs.layer, inputs.data, inputs.batching
    num_classes, image_input = inputs.num_classes, inputs.image_input
    timings = dict(inputs.timings)
    clock = time.perf_counter()
    runner = KernelDropRunner(
        model.proto,
        layer,
        image_input,
        output.name,
        drop=config.drop,
        mechanism=config.mechanism,
        providers=config.providers,
        threads=config.threads,
        batching=batching,
    )
    timings["build_session"] = time.perf_counter() - clock
    prepared = None
    if config.attack or config.method != "exact":
        from kernelscope.robustness import prepare_attack, run_attack

        # Before the (longer) scoring: an unsupported op or a mirror mismatch should fail fast. The fast
        # scorers use the mirror's gradients too, so they need the same parity check.
        clock = time.perf_counter()
        prepared = prepare_attack(
            batching,
            image_input,
            output.name,
            data,
            tolerance=config.atol,
            providers=config.providers,
            device=torch_device(config.device),
        )
        timings["mirror_check"] = time.perf_counter() - clock
    # Runs sized by the memory budget: V variants x N images of this model's activations must fit.
    plan = memory_plan(batching.proto, image_input, config.memory)
    run_size, batch = budgeted_run(runner, config.memory, config.run_size, config.batch_size, plan)
    sized = config
    if run_size < config.run_size:
        sized = replace(config, run_size=run_size, batch_size=batch)
        timings["scoring_run_size"] = run_size  # variant-images per run the budget allowed
    # And the PyTorch stages (the fast scorers' gradients, the attack): one forward+backward keeps every
    # activation, so at 224 px the budget fits far fewer images than --batch-size.
    gradient_batch = plan.gradient_batch(config.batch_size, fixed=batching.run_batch) if prepared else None
    if gradient_batch is not None and gradient_batch < config.batch_size:
        timings["gradient_batch"] = gradient_batch
    backend = get_backend(config.backend, config.ray_address, config.threads, config.memory)
    try:
        audits, skipped = _score_layers(
            runner, selection, inputs, sized, prepared, backend, progress, timings, gradient_batch
        )
        if config.backend == "ray":
            timings["ray_cpus"] = backend.cpus
            timings["ray_remote_tasks"] = backend.remote_tasks
    finally:
        backend.close()
    runner.release()  # the scoring session is not needed by the attack: free its memory first
    release_memory()
    scoring, fast = audits[0].scoring, audits[0].fast
    if scoring is not None:
        timings["scoring"] = scoring.seconds
        timings["variant_images_per_second"] = scoring.variant_images_per_second
        # What the probe measured when it chose the mechanism: wall-clock figures, so they live here.
        for key, value in (scoring.plan.mechanism_costs or {}).items():
            timings[f"mechanism_probe_{key}"] = value
    if fast is not None:
        timings[f"{config.method}_scoring"] = fast.seconds
    fragile, null = audits[0].fragile, audits[0].null
    attack = None
    if prepared is not None and config.attack:
        attack = run_attack(
            prepared,
            batching,
            image_input,
            output.name,
            layer,
            data,
            fragile=fragile,
            null=null,
            epsilons=config.epsilons,
            extra_epsilons=config.extra_epsilons,
            sweep=config.eps_sweep,
            bounds=config.bounds,
            batch_size=gradient_batch or config.batch_size,
            providers=config.providers,
            threads=config.threads,
            attack=config.attack_method,
            pgd=config.pgd,
            seed=config.seed,
            targeting_at=config.targeting_at,
            progress=progress,
            layer_targets=[(a.layer, a.fragile, a.null) for a in audits[1:]],
        )
        timings["attack_gradient"] = attack.sweep.seconds_gradient
        timings["attack_evaluation"] = attack.sweep.seconds_evaluation
        audits[0].targeting = attack.sweep.targeting
        for audit, targeting in zip(audits[1:], attack.sweep.layer_targeting, strict=True):
            audit.targeting = targeting

    summary = inputs.model_summary()
    data_summary = inputs.data_summary(config)
    holm = audits[0].holm_p_values
    warnings = _warnings(scoring, num_classes, runner) if scoring else []
    if fast is not None:
        warnings.insert(0, _fast_note(fast))
    if runner.stacking_note:
        warnings.append(runner.stacking_note)
    if gradient_batch is not None and gradient_batch < config.batch_size:
        warnings.append(plan.note(gradient_batch, config.batch_size))
    dynamic = [n for n in runner.batching.proto.graph.node if n.op_type == "DynamicQuantizeLinear"]
    if dynamic:
        warnings.append(
            f"the model quantizes at run time ({len(dynamic)} DynamicQuantizeLinear node(s)): each run takes one "
            f"range over all of its images, so a prediction can depend on which images share its batch; the scores "
            f"are those at --batch-size {config.batch_size}"
        )
    verdict = _verdict(layer, scoring, holm) if config.method == "exact" else _fast_verdict(layer, fast)
    if selection is not None:
        verdict += " " + _layers_verdict(audits)
        warnings.extend(f"layer {a.layer.name!r}: {a.stacking_note}" for a in audits[1:] if a.stacking_note)
        if skipped:
            warnings.append(
                f"{len(skipped)} convolution(s) could not be audited and were left out: "
                + "; ".join(f"{name} ({why})" for name, why in skipped)
            )
    return InspectReport(
        kernelscope_version=__version__,
        model=summary,
        layer=layer,
        data=data_summary,
        scoring=scoring,
        holm_p_values=holm,
        attack=attack,
        warnings=warnings + (_attack_warnings(attack) if attack else []),
        verdict=verdict + (_attack_verdict(attack) if attack else ""),
        timings=timings,
        method=config.method,
        fast=fast,
        layers=audits if selection is not None else None,
        skipped_layers=skipped,
        devices={
            # (on Ray, where the workers' sessions ran: the driver builds none)
            "onnxruntime": runner.device,
            "torch": prepared.device if prepared is not None else None,
        },
    )


def _score_layers(
    runner: KernelDropRunner,
    selection: LayerSelection | None,
    inputs: AuditInputs,
    config: InspectConfig,
    prepared,
    backend: Backend,
    progress: Progress,
    timings: dict[str, float],
    gradient_batch: int | None = None,
) -> tuple[list[LayerAudit], list[tuple[str, str]]]:
    """Score the first layer with ``runner`` and, with ``--layers``, every other selected layer, one session each."""
    loss = prepared.preflight.loss if prepared is not None else "cross_entropy"
    options = dict(
        method=config.method, compare_exact=config.compare_exact, batch_size=config.batch_size,
        run_size=config.run_size, seed=config.seed, bootstrap=config.bootstrap, loss=loss, backend=backend,
        progress=progress, gradient_batch=gradient_batch,
        device=prepared.device if prepared is not None else "cpu",  # the fast scorers' mirror: the attack's
    )  # fmt: skip
    audits = [score_layer(runner, inputs.data, **options)]
    skipped = list(selection.skipped) if selection is not None else []
    if selection is None:
        return audits, skipped
    clock = time.perf_counter()
    for layer in selection.layers[1:]:
        try:
            other = KernelDropRunner(
                inputs.model.proto, layer, inputs.image_input, inputs.output.name, drop=config.drop,
                providers=config.providers, threads=config.threads, batching=inputs.batching,
                mechanism=config.mechanism,
            )  # fmt: skip
            audits.append(score_layer(other, inputs.data, **options))
        except ModelError as exc:  # no mask site, or onnxruntime refuses the masked graph of this layer
            if selection.named:
                raise
            skipped.append((layer.name, str(exc)))
        other = None  # one session per layer, released before the next is built
    timings["layers_scoring"] = time.perf_counter() - clock
    return audits, skipped


def _layers_verdict(audits: list[LayerAudit]) -> str:
    total = sum(a.layer.out_channels for a in audits)
    fragile = sum(len(a.fragile) for a in audits)
    top = most_damaging(audits, 1)
    text = f"Across {len(audits)} layers ({total} kernels), {fragile} kernels ({fragile / total:.0%}) are fragile."
    if top:
        audit, kernel, drop = top[0]
        text += (
            f" The most damaging kernel network-wide is kernel {kernel} of '{audit.layer.name}' "
            f"({-drop * 100:+.1f} points when dropped)."
        )
    return text


def _check_config(config: InspectConfig) -> None:
    if config.drop not in ("weights", "channel"):
        raise UsageError(f"--drop must be 'weights' or 'channel', not {config.drop!r}")
    if config.mechanism not in ("auto", "mask", "sessions"):
        raise UsageError(f"--mechanism must be auto, mask or sessions, not {config.mechanism!r}")
    if config.mechanism == "sessions" and config.drop != "weights":
        raise UsageError("--mechanism sessions drops kernels in their weights: it needs --drop weights")
    if config.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, not {config.batch_size}")
    if config.limit is not None and config.limit <= 0:
        raise UsageError(f"--limit must be a positive number of images, not {config.limit}")
    if config.bootstrap < 0:
        raise UsageError(f"--bootstrap must be 0 or more resamples, not {config.bootstrap}")
    if config.method not in METHODS:
        raise UsageError(f"--method must be exact, taylor or hybrid, not {config.method!r}")
    if config.eps_sweep not in ("lin", "log"):
        raise UsageError(f"--eps-sweep must be 'lin' or 'log', not {config.eps_sweep!r}")
    if config.atol is not None and not config.atol > 0:
        raise UsageError(f"--atol must be positive, not {config.atol}")
    if config.epsilons is not None:
        check_epsilons(config.epsilons, config.bounds)
    if config.attack_method not in ATTACKS:
        raise UsageError(f"--attack must be one of {', '.join(ATTACKS)}, not {config.attack_method!r}")
    if config.attack_method == "pgd":
        config.pgd.check()
    check_targeting_at(config.targeting_at)
    if config.backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, not {config.backend!r}")
    if config.ray_address is not None and config.backend != "ray":
        raise UsageError("--ray-address only applies to --backend ray")
    if config.layers is not None and config.layer is not None:
        raise UsageError("--layer and --layers cannot be combined; list the layer in --layers")


def _num_classes(output: TensorInfo) -> int | None:
    """The scores' class count: the last axis, or the one non-singleton axis after the batch (Caffe-style
    exports end in a (N, 1000, 1, 1) Softmax; every stage flattens an image's scores before its argmax)."""
    if not output.shape:
        return None
    rest = [d for d in output.shape[1:] if d != 1]
    if len(output.shape) > 2 and len(rest) == 1 and isinstance(rest[0], int) and rest[0] > 0:
        return int(rest[0])
    if isinstance(output.shape[-1], int) and output.shape[-1] > 0:
        return int(output.shape[-1])
    return None


def _check_labels(dataset: ImageDataset, num_classes: int | None) -> None:
    if len(dataset) == 0:
        raise DataError(f"the data set {dataset.source} holds no images")
    if int(dataset.labels.min()) < 0:
        raise DataError(f"the data set {dataset.source} has negative labels; labels must be class indices 0..K-1")
    if num_classes is None:
        return
    top = int(dataset.labels.max())
    if top >= num_classes:
        raise DataError(
            f"the data has label {top} but the model outputs only {num_classes} classes (0..{num_classes - 1}); "
            "use data labelled for this model"
        )
    if dataset.num_classes is not None and dataset.num_classes != num_classes:
        raise DataError(
            f"the data set defines {dataset.num_classes} classes but the model outputs {num_classes}; labels "
            "would not line up with the model's classes"
        )


def _model_summary(
    model: LoadedModel, output: TensorInfo, num_classes: int | None, fixed_batch: int | None
) -> ModelSummary:
    graph = model.proto.graph
    params = sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in graph.initializer)
    return ModelSummary(
        path=str(model.path),
        format=model.format,
        opset=model.opset,
        ir_version=int(model.proto.ir_version),
        producer=model.producer,
        file_bytes=model.path.stat().st_size,
        input=model.image_input,
        output=output,
        output_names=[o.name for o in model.outputs],
        num_classes=num_classes,
        node_count=len(graph.node),
        op_counts=dict(sorted(Counter(n.op_type for n in graph.node).items())),
        parameters=params,
        fixed_batch=fixed_batch,
    )


def _warnings(scoring: ScoringResult, num_classes: int | None, runner: KernelDropRunner) -> list[str]:
    notes = []
    if num_classes and scoring.baseline_accuracy < 1.5 / num_classes:
        notes.append(
            f"baseline accuracy {scoring.baseline_accuracy:.1%} is close to chance ({1 / num_classes:.1%}): check "
            "the preprocessing (--scale/--mean/--std/--layout) and the label order"
        )
    if runner.fixed_batch is not None and not runner.batch_made_dynamic:
        notes.append(
            f"the model has a fixed batch of {runner.fixed_batch} that could not be made dynamic; images were run "
            f"{runner.fixed_batch} at a time (slower)"
        )
    if scoring.n_images < 500:
        notes.append(f"only {scoring.n_images} images: the S / S' split is noisy; use more data for a firm split")
    unstable = [k.index for k in scoring.kernels if k.split_stability < 0.8]
    if unstable and scoring.bootstrap_resamples:
        notes.append(
            f"{len(unstable)} kernel(s) change sides in more than 20% of bootstrap resamples "
            f"({', '.join(map(str, unstable))}); "
            "their S / S' label is uncertain"
        )
    return notes


def _fast_note(fast: FastScoring) -> str:
    what = (
        "a first-order Taylor ESTIMATE (no kernel was dropped for real)"
        if fast.method == "taylor"
        else (
            f"a hybrid: Taylor screening on {fast.screened_images} images, {len(fast.exact_kernels)} kernel(s) "
            f"scored exactly on all {fast.n_images}, the others estimated"
        )
    )
    text = f"S / S' come from {what}"
    if fast.agreement is not None:
        text += (
            f"; against exact scoring: Spearman {fast.agreement.spearman:.3f}, same side for "
            f"{fast.agreement.split_agreement:.0%} of kernels"
        )
    return text


def _fast_verdict(layer: ConvLayer, fast: FastScoring) -> str:
    total = len(fast.importance)
    top = int(np.argmax(fast.importance))
    label = "Taylor estimate" if fast.method == "taylor" else "hybrid scorer"
    return (
        f"By the {label}, {len(fast.fragile)} of {total} kernels of {layer.op_type} '{layer.name}' "
        f"({len(fast.fragile) / total:.0%}) are fragile; the most important is kernel {top}."
    )


def _attack_warnings(attack: AttackReport) -> list[str]:
    notes = list(attack.preflight.notes)
    if attack.targeting_note:
        notes.append(attack.targeting_note)
    sweep = attack.sweep
    if sweep.nonfinite_gradient_images:
        notes.append(f"{sweep.nonfinite_gradient_images} image(s) had non-finite input gradients (set to 0)")
    note = loss_usage_note(sweep.loss_usage, sweep.name)
    if note:
        notes.append(note)
    if sweep.zero_gradient_images:
        notes.append(
            f"{sweep.zero_gradient_images} image(s) had an all-zero input gradient at the clean image: "
            f"{'FGSM cannot move them' if sweep.name == 'fgsm' else 'PGD starts blind there'} (saturated outputs or "
            "gradient masking), so their robustness is overstated"
        )
    return notes


def loss_usage_note(usage: dict[str, int] | None, attack: str = "fgsm") -> str | None:
    """One line on the images whose cross-entropy gradient vanished (saturated softmax) and the loss that
    moved them instead; None when every image used the cross-entropy."""
    if not usage:
        return None
    ce64, margin, none = (usage.get(k, 0) for k in ("cross_entropy_float64", "logit_margin", "none"))
    if not (ce64 or margin or none):
        return None
    total = sum(usage.values())
    parts = []
    if ce64:
        parts.append(f"{ce64} the cross-entropy gradient computed in float64")
    if margin:
        parts.append(f"{margin} the logit margin max_j≠y z_j − z_y")
    text = f"the float32 cross-entropy gradient is exactly zero for {ce64 + margin + none} of {total} image(s) "
    text += "(saturated softmax)"
    if parts:
        text += f"; {attack.upper()} used " + " and ".join(parts) + " instead"
    return text + (f"; no loss moves {none} of them" if none else "")


def _attack_verdict(attack: AttackReport) -> str:
    sweep = attack.sweep
    clean, worst = sweep.accuracy[0], sweep.accuracy[-1]
    name = "FGSM" if sweep.pgd is None else sweep.pgd.describe()
    text = (
        f" Under {name}, accuracy falls from {clean.accuracy:.1%} to {worst.accuracy:.1%} at ε = {worst.epsilon:g}"
        " (pixels in [0, 1])."
    )
    if sweep.targeting:
        mid = sweep.targeting[len(sweep.targeting) // 2]
        conv = attack.targeting_at == "conv"
        where = "outputs" if conv else "activations (after the ops that follow the Conv)"
        text += (
            f" At ε = {mid.epsilon:g}, {mid.fraction:.0%} of the attacks move the fragile kernels' {where} more than "
            f"the null ones ({mid.fraction_normalized:.0%} relative to each kernel's clean "
            f"{'output' if conv else 'activation'})."
        )
    return text


def _verdict(layer: ConvLayer, scoring: ScoringResult, holm: list[float]) -> str:
    total = len(scoring.kernels)
    fragile = len(scoring.fragile)
    worst = min(scoring.kernels, key=lambda k: (k.accuracy, k.index))
    significant = sum(1 for p in holm if p < 0.05)
    harmless = sum(1 for k in scoring.kernels if k.correct_to_wrong + k.wrong_to_correct == 0)
    parts = [
        f"Baseline top-1 accuracy is {scoring.baseline_accuracy:.1%} on {scoring.n_images} images.",
        f"{fragile} of {total} kernels of {layer.op_type} '{layer.name}' ({fragile / total:.0%}) are fragile: dropping "
        f"one costs more than the average kernel (mean accuracy with a kernel dropped {scoring.mean_accuracy:.1%}).",
        f"The most damaging is kernel {worst.index} ({worst.accuracy:.1%}, {worst.delta * 100:+.1f} points).",
        f"{significant} kernel(s) change accuracy significantly (paired exact McNemar, Holm-adjusted p < 0.05)",
    ]
    tail = f"; {harmless} change no prediction at all." if harmless else "."
    return " ".join(parts) + tail
