"""The attack stage of ``inspect``: PyTorch mirror with its parity guard, pre-flight checks, FGSM sweep.

No gradient is used before the mirror has been run next to onnxruntime on the same batch and found to
agree (max |logit difference| / max(1, max |logit|) <= tolerance). A mirror that disagrees refuses to
attack with a one-line error naming the first tensor where the two part.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx

from kernelscope.attacks.fgsm import default_epsilons
from kernelscope.attacks.gradients import InputGradient
from kernelscope.attacks.sweep import SweepResult, check_epsilons, fgsm_sweep
from kernelscope.data.preprocessing import PreparedData
from kernelscope.errors import ModelError
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.model.batching import Batching, fixed_chunks
from kernelscope.model.first_conv import ConvLayer
from kernelscope.model.graph import GraphIndex
from kernelscope.model.surgery.kernel_mask import find_mask_site, infer_elem_types
from kernelscope.model.surgery.prune import prune_to_output
from kernelscope.progress import NO_PROGRESS, Progress

#: Ops whose training and inference semantics differ; the mirror (like the deployment) uses inference.
INFERENCE_ONLY_OPS = ("BatchNormalization", "Dropout")

#: Images used for the parity check.
PARITY_IMAGES = 32


@dataclass(frozen=True)
class MirrorCheck:
    """How closely the PyTorch mirror reproduces onnxruntime on the parity batch."""

    max_abs_diff: float
    relative_diff: float
    tolerance: float
    ok: bool
    images: int
    first_divergence: str | None = None


@dataclass(frozen=True)
class Preflight:
    """What was checked before attacking, and what it implies for the loss."""

    output_kind: str  # "logits" or "probabilities"
    loss: str  # "cross_entropy" or "nll_of_probabilities"
    inference_only_ops: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AttackReport:
    """The attack stage's results."""

    mirror: MirrorCheck
    preflight: Preflight
    sweep: SweepResult
    epsilon_source: str  # "option", "default lin sweep (cifar-like)", ...


@dataclass
class PreparedAttack:
    """A mirror that passed its parity check, ready to produce gradients."""

    mirror: object  # kernelscope.mirror.OnnxMirror (torch is imported lazily)
    check: MirrorCheck
    preflight: Preflight


def prepare_attack(
    batching: Batching,
    image_input: str,
    output: str,
    data: PreparedData,
    *,
    tolerance: float | None = None,
    providers: Sequence[str] | None = None,
) -> PreparedAttack:
    """Build the mirror, check it against onnxruntime, and run the pre-flight checks.

    ``tolerance`` defaults to the mirror's default for the model (1e-4; 1e-2 for float16 graphs, whose own
    arithmetic onnxruntime carries out in float16 while the mirror computes in float32).

    Raises :class:`~kernelscope.mirror.UnsupportedOpsError` (every unsupported op at once) or a
    :class:`ModelError` when the mirror and onnxruntime disagree beyond ``tolerance``.
    """
    from kernelscope.mirror import OnnxMirror, UnsupportedOpsError, check_parity, default_tolerance

    # Only what the scored output needs: another head's exotic ops must not block the attack.
    proto = prune_to_output(batching.proto, output)
    tolerance = tolerance if tolerance is not None else default_tolerance(proto)
    try:
        mirror = OnnxMirror(proto, outputs=[output])
    except UnsupportedOpsError as exc:
        raise UnsupportedOpsError(
            exc.unsupported, hint="pass --no-attack to score the kernels without attacking"
        ) from None
    images = min(len(data), PARITY_IMAGES if batching.batchable else (batching.fixed_batch or 1))
    x = data.preprocessing.to_model_input(data.dataset.images[:images])
    result = check_parity(proto, mirror, {image_input: x}, output, tolerance=tolerance, providers=providers)
    check = MirrorCheck(
        max_abs_diff=float(result.max_abs_diff),
        relative_diff=float(result.relative_diff),
        tolerance=tolerance,
        ok=bool(result.ok),
        images=images,
        first_divergence=result.first_divergence,
    )
    if not check.ok:
        where = f"; they first part at tensor {check.first_divergence!r}" if check.first_divergence else ""
        raise ModelError(
            f"the PyTorch mirror disagrees with onnxruntime (relative logit difference {check.relative_diff:.3g} > "
            f"tolerance {tolerance:g}{where}); refusing to attack with wrong gradients: pass --no-attack, or --atol "
            "to accept a larger difference"
        )
    import torch

    with torch.no_grad():  # the parity batch again: the mirror agrees with onnxruntime on it, no new session needed
        scores = mirror(torch.from_numpy(x)).reshape(images, -1).double().numpy()
    return PreparedAttack(mirror, check, _preflight(proto, output, scores))


def _preflight(proto: onnx.ModelProto, output: str, scores: np.ndarray) -> Preflight:
    """Pre-flight checks on the graph the attack differentiates and on its outputs for the parity batch."""
    index = GraphIndex.build(proto.graph)
    counts = {op: sum(1 for n in proto.graph.node if n.op_type == op) for op in INFERENCE_ONLY_OPS}
    counts = {op: c for op, c in counts.items() if c}
    notes = []
    if counts:
        listing = ", ".join(f"{op} x{c}" for op, c in counts.items())
        notes.append(
            f"{listing} run with inference semantics (running statistics, no dropout), as deployed; gradients are "
            "those of the deployed function"
        )
    producer = proto.graph.node[index.producer[output]].op_type if output in index.producer else None
    probabilities = producer in ("Softmax",)
    if not probabilities:
        probabilities = bool(np.all(scores >= 0) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))
    if probabilities:
        notes.append("the output holds probabilities (softmax inside the graph): the attack loss is -log p[label]")
    return Preflight(
        output_kind="probabilities" if probabilities else "logits",
        loss="nll_of_probabilities" if probabilities else "cross_entropy",
        inference_only_ops=counts,
        notes=notes,
    )


def epsilon_kind(data: PreparedData) -> str:
    """``mnist`` for MNIST-like data (one channel), ``cifar10`` for colour images: picks the default sweep."""
    name = data.dataset.name
    if name in ("mnist", "fashion-mnist") or data.preprocessing.channels == 1:
        return "mnist"
    return "cifar10"


def run_attack(
    prepared: PreparedAttack,
    batching: Batching,
    image_input: str,
    output: str,
    layer: ConvLayer,
    data: PreparedData,
    *,
    fragile: list[int],
    null: list[int],
    epsilons: Sequence[float] | None = None,
    sweep: str = "lin",
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    progress: Progress = NO_PROGRESS,
) -> AttackReport:
    """The FGSM sweep through the checked mirror, judged by the deployed model, with targeting."""
    if epsilons is None:
        kind = epsilon_kind(data)
        values = default_epsilons(kind, sweep)
        source = f"default {sweep} sweep ({'MNIST-like' if kind == 'mnist' else 'CIFAR-like'} data)"
    else:
        values, source = list(epsilons), "option"
    values = check_epsilons(values, bounds)
    site = find_mask_site(batching.proto, layer, "weights", infer_elem_types(batching.proto))
    evaluator = OnnxEvaluator(batching, image_input, output, site, providers, threads)
    gradient = InputGradient(prepared.mirror, data.preprocessing, prepared.preflight.loss)
    if not batching.batchable:
        gradient = _FixedBatchGradient(gradient, batching.fixed_batch or 1)
    result = fgsm_sweep(
        gradient,
        evaluator,
        data,
        values,
        fragile=fragile,
        null=null,
        bounds=bounds,
        batch_size=batch_size,
        progress=progress,
    )
    return AttackReport(prepared.check, prepared.preflight, result, source)


@dataclass
class _FixedBatchGradient:
    """Gradients for a model whose graph only accepts a fixed batch: run it that many images at a time."""

    inner: InputGradient
    size: int

    def __call__(self, x01: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grads, outputs = [], []
        for start, chunk, real in fixed_chunks(x01, self.size):
            own = labels[start : start + real]
            # Padding repeats the last image; its loss term does not touch the real images' gradients.
            chunk_labels = np.concatenate([own, np.repeat(own[-1:], self.size - real)])
            g, o = self.inner(chunk, chunk_labels)
            grads.append(g[:real])
            outputs.append(o[:real])
        return np.concatenate(grads), np.concatenate(outputs)
