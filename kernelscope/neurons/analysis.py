"""``neurons``: sensitivity of the final linear layer's input neurons and the single-neuron attack, as one call.

The command line parses options into :class:`NeuronsConfig`, calls :func:`analyse_neurons` and renders the
:class:`NeuronsReport`; library users do the same without the CLI.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from kernelscope import __version__
from kernelscope.attacks.pgd import NORMS
from kernelscope.audit import DataSummary, InspectConfig, ModelSummary, load_model_and_data
from kernelscope.data.preprocessing import PreparedData, Preprocessing
from kernelscope.devices import onnxruntime_device, torch_device
from kernelscope.errors import ModelError, UsageError
from kernelscope.model.batching import Batching, run_outputs
from kernelscope.model.linear_head import LinearHead, find_linear_head
from kernelscope.model.memory import memory_plan
from kernelscope.model.surgery.kernel_mask import infer_elem_types
from kernelscope.neurons.attack import (
    AttackSettings,
    HeadTwin,
    PgdComparison,
    SingleNeuronResult,
    pgd_comparison,
    single_neuron_attack,
)
from kernelscope.neurons.sensitivity import Sensitivity, neuron_sensitivity
from kernelscope.progress import NO_PROGRESS, Progress
from kernelscope.robustness import MirrorCheck, prepare_attack
from kernelscope.runtime import make_session

#: Largest relative difference allowed between the layer's output in onnxruntime and W f + b computed from
#: the weights kernelscope read: a mismatch means the weights were misread, and every Δ would be wrong.
HEAD_TOLERANCE = 1e-3


@dataclass(frozen=True)
class NeuronsConfig:
    """What ``neurons`` needs besides the model path.

    ``inspect`` carries the options shared with ``inspect`` (data, preprocessing, ``--output``, runtime,
    ``--atol``, ``--bounds``, ``--limit``/``--seed``, ``--batch-size``); its conv ``layer`` and attack fields
    are not used. ``layer`` names the final linear layer (default: found from the scored output).
    """

    inspect: InspectConfig
    layer: str | None = None
    attack: bool = True
    settings: AttackSettings = field(default_factory=AttackSettings)


@dataclass(frozen=True)
class HeadCheck:
    """How the layer kernelscope read compares with the deployed model on the data."""

    weights_relative_diff: float  # max |W f + b − z_onnxruntime| / max(1, max |z|)
    prediction_agreement: float  # share of images with argmax(W f + b) = the deployed prediction
    feature_min: float  # smallest feature value seen
    mirror_feature_relative_diff: float | None  # mirror vs onnxruntime features on the parity batch


@dataclass
class NeuronsReport:
    """The result of :func:`analyse_neurons`."""

    kernelscope_version: str
    model: ModelSummary
    data: DataSummary
    head: LinearHead
    check: HeadCheck
    clean_accuracy: float
    sensitivity: Sensitivity
    settings: AttackSettings
    mirror: MirrorCheck | None
    single_neuron: SingleNeuronResult | None
    pgd: PgdComparison | None
    warnings: list[str]
    verdict: str
    timings: dict[str, float]
    devices: dict[str, str | None] = field(default_factory=dict)  # onnxruntime / torch: "cpu", "cuda" or None


class DeployedHead:
    """The deployed model in onnxruntime with the layer's features and output exposed as extra graph outputs.

    Exposing a tensor only adds a graph output: the computation is the deployed one.
    """

    def __init__(
        self,
        batching: Batching,
        image_input: str,
        output: str,
        head: LinearHead,
        preprocessing: Preprocessing,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
    ) -> None:
        self.batching = batching
        self.image_input = image_input
        self.preprocessing = preprocessing
        proto = onnx.ModelProto()
        proto.CopyFrom(batching.proto)
        types = infer_elem_types(proto)
        present = {o.name for o in proto.graph.output}
        for name in (head.feature_tensor, head.logits_tensor):
            if name not in present:
                elem = types.get(name, onnx.TensorProto.FLOAT)
                proto.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
                present.add(name)
        self.session = make_session(proto, providers, threads)
        self._outputs = [output, head.feature_tensor, head.logits_tensor]

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(scores (N, K), features (N, d), layer output (N, K)) as float32 for the model input ``x``."""
        results = run_outputs(self.session, self.batching, self.image_input, x, self._outputs)
        n = x.shape[0]
        return tuple(np.asarray(r, dtype=np.float32).reshape(n, -1) for r in results)  # type: ignore[return-value]

    def __call__(self, x01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(scores, features) of unit-pixel images (N, H, W, C): the attacks' view of the deployed model."""
        scores, features, _ = self.run(self.preprocessing.normalize(x01 * np.float32(255.0)))
        return scores, features


def analyse_neurons(
    model_path: str | os.PathLike[str], config: NeuronsConfig, progress: Progress = NO_PROGRESS
) -> NeuronsReport:
    """Rank the input neurons of the final linear layer by sensitivity, and attack the most sensitive ones.

    Reads the features with onnxruntime, checks that the layer's weights reproduce its output, computes Δ
    and the per-image ranking (:mod:`kernelscope.neurons.sensitivity`), then (unless ``config.attack`` is
    off) runs the single-neuron attack for k in ``config.settings.ks`` and the untargeted PGD comparison
    through the parity-checked mirror. User-fixable problems raise one-line ``KernelscopeError``s.
    """
    _check_config(config)
    # The head is looked for before the data is loaded, so a model without one fails at once.
    inputs = load_model_and_data(
        model_path,
        config.inspect,
        progress,
        before_data=lambda model, output: find_linear_head(model.proto, output.name, config.layer),
    )
    timings = dict(inputs.timings)
    clock = time.perf_counter()
    head = find_linear_head(inputs.model.proto, inputs.output.name, config.layer)
    settings = config.settings
    ks = tuple(sorted({min(k, head.features) for k in settings.ks}))
    if ks != settings.ks:
        settings = AttackSettings(settings.epsilon, settings.pgd, settings.lam, ks)
    data = inputs.data
    deployed = DeployedHead(
        inputs.batching,
        inputs.image_input,
        inputs.output.name,
        head,
        data.preprocessing,
        config.inspect.providers,
        config.inspect.threads,
    )
    plan = memory_plan(inputs.batching.proto, inputs.image_input, config.inspect.memory)
    scores, features, layer_out = _read(deployed, data, plan.forward_batch(config.inspect.batch_size), progress)
    timings["read_features"] = time.perf_counter() - clock
    _check_finite(head, features, scores, inputs.output.name)
    if features.shape[1] != head.features and head.op_type == "Conv":
        raise ModelError(
            f"the last layer is Conv node {head.name!r}, whose kernel covers {head.features} of the "
            f"{features.shape[1]} values of its input {head.feature_tensor!r}: it is not a fully connected layer, "
            "and neurons reads a Gemm, a MatMul or a Conv whose kernel covers its whole input"
        )
    if features.shape[1] != head.features:
        raise ModelError(
            f"the feature tensor {head.feature_tensor!r} holds {features.shape[1]} values per image but layer "
            f"{head.name!r} has {head.features} inputs; kernelscope needs one feature vector per image"
        )
    if layer_out.shape[1] != head.classes:
        raise ModelError(
            f"the output {head.logits_tensor!r} of layer {head.name!r} holds {layer_out.shape[1]} values per image, "
            f"not one per class ({head.classes}); its bias does not broadcast to one value per class"
        )
    expected = features.astype(np.float64) @ head.weight.T + head.bias
    scale = max(1.0, float(np.abs(layer_out).max()) if layer_out.size else 1.0)
    weights_diff = float(np.abs(expected - layer_out).max()) / scale if layer_out.size else 0.0
    if not weights_diff <= HEAD_TOLERANCE:
        raise ModelError(
            f"the weights read from layer {head.name!r} do not reproduce its output in onnxruntime (relative "
            f"difference {weights_diff:.3g} > {HEAD_TOLERANCE:g}); its sensitivities would be wrong"
        )
    clean = scores.argmax(axis=1)
    clock = time.perf_counter()
    sensitivity = neuron_sensitivity(features, head.weight, head.bias, relu=head.relu_features)
    timings["sensitivity"] = time.perf_counter() - clock

    mirror_check = single = comparison = prepared = None
    feature_diff = memory_warning = None
    if config.attack:
        clock = time.perf_counter()
        prepared = prepare_attack(
            inputs.batching,
            inputs.image_input,
            inputs.output.name,
            data,
            tolerance=config.inspect.atol,
            providers=config.inspect.providers,
            device=torch_device(config.inspect.device),
        )
        mirror_check = prepared.check
        mirror = prepared.mirror
        if not head.connected:  # the chosen layer is not on the scored output's path: mirror the whole graph
            from kernelscope.mirror import OnnxMirror

            mirror = OnnxMirror(inputs.batching.proto).to(prepared.device)
        chunk = inputs.batching.run_batch
        twin = HeadTwin(mirror, data.preprocessing, inputs.image_input, head.feature_tensor, head.logits_tensor, chunk)
        feature_diff = _feature_parity(twin, deployed, data, prepared.check.tolerance, prepared.check.images)
        timings["mirror_check"] = time.perf_counter() - clock
        bounds = config.inspect.bounds
        # (image, neuron) pairs per forward+backward: as many as the memory budget fits, at most --batch-size
        batch = plan.gradient_batch(config.inspect.batch_size, fixed=chunk)
        if batch < config.inspect.batch_size:
            timings["gradient_batch"] = batch
            memory_warning = plan.note(batch, config.inspect.batch_size, "the neuron attacks")
        single = single_neuron_attack(
            twin, deployed, data, sensitivity, features, clean, settings, bounds=bounds,
            batch_size=batch, seed=config.inspect.seed, progress=progress,
        )  # fmt: skip
        timings["single_neuron_attack"] = single.seconds
        comparison = pgd_comparison(
            twin, deployed, data, clean, settings, bounds=bounds, batch_size=batch,
            seed=config.inspect.seed, progress=progress,
        )  # fmt: skip
        timings["pgd"] = comparison.seconds

    check = HeadCheck(
        weights_relative_diff=weights_diff,
        prediction_agreement=float(np.mean(sensitivity.predicted == clean)) if len(clean) else float("nan"),
        feature_min=float(features.min()) if features.size else float("nan"),
        mirror_feature_relative_diff=feature_diff,
    )
    accuracy = float(np.mean(clean == data.labels)) if len(clean) else float("nan")
    report = NeuronsReport(
        kernelscope_version=__version__,
        model=inputs.model_summary(),
        data=inputs.data_summary(config.inspect),
        head=head,
        check=check,
        clean_accuracy=accuracy,
        sensitivity=sensitivity,
        settings=settings,
        mirror=mirror_check,
        single_neuron=single,
        pgd=comparison,
        warnings=[],
        verdict="",
        timings=timings,
        devices={
            "onnxruntime": onnxruntime_device(deployed.session),
            "torch": prepared.device if prepared is not None else None,
        },
    )
    report.warnings = _warnings(report) + ([memory_warning] if memory_warning else [])
    report.verdict = _verdict(report)
    return report


def _check_config(config: NeuronsConfig) -> None:
    s = config.settings
    if not (np.isfinite(s.epsilon) and s.epsilon > 0):
        raise UsageError(f"--eps must be a positive number, not {s.epsilon}")
    if not (np.isfinite(s.lam) and s.lam >= 0):
        raise UsageError(f"--lam must be 0 or more, not {s.lam}")
    if not s.ks or any(k < 1 for k in s.ks):
        raise UsageError(f"--k needs positive neuron counts, not {list(s.ks)}")
    # The command's own option names first; PgdSettings.check() then guards what they do not cover.
    if s.pgd.norm not in NORMS:
        raise UsageError(f"--norm must be linf or l2, not {s.pgd.norm!r}")
    if s.pgd.steps < 1:
        raise UsageError(f"--steps must be at least 1, not {s.pgd.steps}")
    if s.pgd.step_size is not None and not (np.isfinite(s.pgd.step_size) and s.pgd.step_size > 0):
        raise UsageError(f"--step-size must be a positive number, not {s.pgd.step_size}")
    s.pgd.check()
    if s.pgd.restarts != 1:
        raise UsageError("the neuron attacks run one PGD per (image, neuron): restarts are not offered")
    if config.inspect.batch_size <= 0:
        raise UsageError(f"--batch-size must be positive, not {config.inspect.batch_size}")
    if config.inspect.limit is not None and config.inspect.limit <= 0:
        raise UsageError(f"--limit must be a positive number of images, not {config.inspect.limit}")
    if config.inspect.atol is not None and not config.inspect.atol > 0:
        raise UsageError(f"--atol must be positive, not {config.inspect.atol}")


def _check_finite(head: LinearHead, features: np.ndarray, scores: np.ndarray, output: str) -> None:
    """Refuse NaN or infinite features or scores: no Δ, ranking or weight check means anything with them."""
    for values, what in (
        (features, f"the features {head.feature_tensor!r} of layer {head.name!r}"),
        (scores, f"the scores of output {output!r}"),
    ):
        bad = int(np.count_nonzero(~np.isfinite(values).all(axis=1))) if values.size else 0
        if bad:
            raise ModelError(
                f"{what} are NaN or infinite on {bad} of {len(values)} images; the model does not compute finite "
                "values on this data (check its weights and the preprocessing)"
            )


def _read(
    deployed: DeployedHead, data: PreparedData, batch_size: int, progress: Progress
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores, features and layer outputs of every image, in data order."""
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with progress.task(f"Reading features of {len(data)} images", total=len(data)) as task:
        for x, labels in data.batches(batch_size):
            parts.append(deployed.run(x))
            task.advance(len(labels))
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]


def _feature_parity(twin: HeadTwin, deployed: DeployedHead, data: PreparedData, tolerance: float, images: int) -> float:
    """Relative difference of the mirror's features and layer output from onnxruntime's on the parity batch.

    The logits were checked by the attack's parity guard; the single-neuron attack also differentiates the
    features, so they must agree too before any gradient is used.
    """
    import torch

    pixels = data.preprocessing.fit(data.dataset.images[: max(1, images)])
    x01 = pixels.astype(np.float32) / np.float32(255.0)
    with torch.no_grad():
        f, z = twin(torch.from_numpy(x01))
    _, ref_f, ref_z = deployed.run(data.preprocessing.normalize(x01 * np.float32(255.0)))
    worst = 0.0
    for mine, ref in ((f.numpy(), ref_f), (z.numpy(), ref_z)):
        scale = max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
        worst = max(worst, float(np.abs(mine.astype(np.float64) - ref).max()) / scale if ref.size else 0.0)
    if not worst <= tolerance:
        raise ModelError(
            f"the PyTorch mirror's features disagree with onnxruntime (relative difference {worst:.3g} > tolerance "
            f"{tolerance:g}); refusing to attack with wrong gradients: pass --no-attack, or --atol to accept it"
        )
    return worst


def _warnings(report: NeuronsReport) -> list[str]:
    notes: list[str] = []
    head, check, sens = report.head, report.check, report.sensitivity
    if not head.connected:
        notes.append(
            f"layer {head.name!r} does not produce the scored output through order-keeping ops: Δ flips the argmax "
            f"of its own output, which agrees with the deployed prediction on {check.prediction_agreement:.1%} of "
            "images"
        )
    elif head.ties:
        notes.append(
            f"the scored output passes {', '.join(head.ties)} after layer {head.name!r}: they keep the order of the "
            "logits but can tie them (a Relu sets every negative logit to 0, a quantize/dequantize pair rounds), so "
            f"Δ is about the argmax of the layer's output, which is the deployed prediction on "
            f"{check.prediction_agreement:.1%} of images"
        )
    elif check.prediction_agreement < 1.0:
        notes.append(
            f"argmax(W f + b) differs from the deployed prediction on {1 - check.prediction_agreement:.1%} of images "
            "(near-ties rounded differently)"
        )
    if not head.relu_features and check.feature_min >= 0:
        notes.append(
            "the features are all >= 0 on this data but do not come from a ReLU in the graph: Δ is not limited to "
            "f_i + Δ >= 0 (relu_features false)"
        )
    dead = sum(1 for s in sens.neurons if s.feature_std == 0)
    if dead:
        notes.append(
            f"{dead} neuron(s) are constant over the data (σ = 0, e.g. dead ReLUs): they have no scaled sensitivity "
            "and are ranked last"
        )
    if sens.unflippable_images:
        notes.append(f"on {sens.unflippable_images} image(s) no single neuron can change the prediction")
    if report.data.n < 200:
        notes.append(f"only {report.data.n} images: the counts and rates are noisy; use more data")
    budget = _l2_budget_note(report.settings, report.data.preprocessing) if report.single_neuron else None
    if budget:
        notes.append(budget)
    return notes


#: Values of the images the paper's L2 ε = 0.5 was chosen for (CIFAR-10, 32 x 32 x 3).
PAPER_INPUT_VALUES = 32 * 32 * 3


def _l2_budget_note(settings: AttackSettings, preprocessing: Preprocessing) -> str | None:
    """A note when an L2 ε spreads over many more input values than the paper's 32 x 32 x 3 images: the same
    ε is then a much smaller change per value (RMS ε / sqrt(values)), and the attacks' rates are not
    comparable with the paper's."""
    h, w = preprocessing.size
    values = h * w * preprocessing.channels
    if settings.pgd.norm != "l2" or values <= 4 * PAPER_INPUT_VALUES:
        return None
    ratio = (values / PAPER_INPUT_VALUES) ** 0.5
    return (
        f"L2 ε = {settings.epsilon:g} over {values:,} input values ({h} x {w} x {preprocessing.channels}) is "
        f"{settings.epsilon / values**0.5:.2g} per value (RMS), {ratio:.1f}x less than on a 32 x 32 x 3 image (the "
        f"paper's setting); --eps {settings.epsilon * ratio:.3g} gives the same budget per value"
    )


def _verdict(report: NeuronsReport) -> str:
    sens, head = report.sensitivity, report.head
    order = sens.order
    top = sens.neurons[order[0]]
    n = report.data.n
    parts = [
        f"{head.features} neurons feed {head.op_type} '{head.name}' ({head.classes} classes); clean accuracy "
        f"{report.clean_accuracy:.1%} on {n} images.",
        f"Neuron {top.index} is the most sensitive on {top.times_most_sensitive / n:.0%} of images (median |Δ| "
        f"{top.median_abs_delta:.3g}, feature mean {top.feature_mean:.3g}).",
    ]
    single, pgd = report.single_neuron, report.pgd
    if single is not None and pgd is not None:
        s = report.settings
        norm = "L2" if s.pgd.norm == "l2" else "L∞"
        rates = ", ".join(f"k = {r.k}: {r.rate:.1%}" for r in single.rates)
        parts.append(
            f"Attacking one of the k most sensitive neurons ({norm} ε = {s.epsilon:g}, {s.pgd.steps} steps) changes "
            f"the prediction of {rates}; untargeted PGD with the same budget: {pgd.rate:.1%}."
        )
    return " ".join(parts)
