"""The attack stage of ``inspect``: PyTorch mirror with its parity guard, pre-flight checks, FGSM or PGD sweep.

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
from kernelscope.attacks.gradients import (
    InputGradient,
    SoftmaxInput,
    attack_objective,
    margin_objective,
    model_input_from_unit_pixels,
    per_example_loss,
    precise_cross_entropy,
    softmax_input,
)
from kernelscope.attacks.options import ATTACKS, TARGETING_SITES, check_targeting_at
from kernelscope.attacks.pgd import Objective, PgdSettings
from kernelscope.attacks.sweep import SweepResult, check_epsilons, fgsm_sweep, pgd_sweep
from kernelscope.data.preprocessing import PreparedData
from kernelscope.errors import ModelError, UsageError
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.model.batching import Batching, fixed_chunks
from kernelscope.model.first_conv import ConvLayer
from kernelscope.model.graph import GraphIndex
from kernelscope.model.surgery.kernel_mask import MaskSite, find_mask_site, infer_elem_types
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
    targeting_at: str = "conv"  # a key of TARGETING_SITES
    targeting_site: MaskSite | None = None  # the tensor targeting compared, and the nodes passed to reach it
    targeting_note: str | None = None  # e.g. that the activation site is the Conv output itself
    layer_sites: list[MaskSite] = field(default_factory=list)  # further layers' targeting tensors (--layers)


def targeting_site(proto: onnx.ModelProto, layer: ConvLayer, at: str = "conv") -> MaskSite:
    """The tensor Algorithm 1 compares for ``--targeting-at`` ``at``: the convolution's output (for
    ``ConvInteger`` after its rescale-and-bias tail), or the one after the bias / BatchNormalization /
    activation that directly follow it (the tensor ``--drop channel`` masks). 8-bit tensors carry their
    quantization parameters, so distances are taken in real units."""
    return find_mask_site(proto, layer, TARGETING_SITES[check_targeting_at(at)], infer_elem_types(proto))


def targeting_site_note(proto: onnx.ModelProto, layer: ConvLayer, at: str, site: MaskSite) -> str | None:
    """A note when ``--targeting-at activation`` found nothing to pass: it then reads the Conv output itself."""
    if at != "activation" or site.tensor != targeting_site(proto, layer, "conv").tensor:
        return None
    why = (
        "its activation, if any, is folded into the quantized output range"
        if layer.op_type == "QLinearConv"
        else "its only consumer is not a bias, BatchNormalization or activation"
    )
    return (
        f"--targeting-at activation reads the output of {layer.op_type} {layer.name!r} itself ({why}): the same "
        "tensor as --targeting-at conv"
    )


@dataclass
class PreparedAttack:
    """A mirror that passed its parity check, ready to produce gradients."""

    mirror: object  # kernelscope.mirror.OnnxMirror (torch is imported lazily), on ``device``
    check: MirrorCheck
    preflight: Preflight
    device: str = "cpu"  # the torch device the mirror, and so the attack's gradients, run on


def prepare_attack(
    batching: Batching,
    image_input: str,
    output: str,
    data: PreparedData,
    *,
    tolerance: float | None = None,
    providers: Sequence[str] | None = None,
    device: str = "cpu",
) -> PreparedAttack:
    """Build the mirror on the torch ``device``, check it there against onnxruntime, run the pre-flight checks.

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
    mirror = mirror.to(device)  # checked where it will run: CUDA kernels round differently from the CPU's
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
        from kernelscope.runtime import saturation_hint

        why = saturation_hint(proto, providers)
        raise ModelError(
            f"the PyTorch mirror disagrees with onnxruntime (relative logit difference {check.relative_diff:.3g} > "
            f"tolerance {tolerance:g}{where}); refusing to attack with wrong gradients: "
            + (f"{why}; or pass --no-attack" if why else "pass --no-attack, or --atol to accept a larger difference")
        )
    import torch

    with torch.no_grad():  # the parity batch again: the mirror agrees with onnxruntime on it, no new session needed
        scores = mirror(torch.from_numpy(x).to(device)).reshape(images, -1).double().cpu().numpy()
    return PreparedAttack(mirror, check, _preflight(proto, output, scores), device)


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
    extra_epsilons: Sequence[float] = (),
    sweep: str = "lin",
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int = 128,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    attack: str = "fgsm",
    pgd: PgdSettings | None = None,
    seed: int = 0,
    targeting_at: str = "conv",
    progress: Progress = NO_PROGRESS,
    layer_targets: Sequence[tuple[ConvLayer, list[int], list[int]]] = (),
) -> AttackReport:
    """The FGSM (or PGD) sweep through the checked mirror, judged by the deployed model, with targeting.

    ``layer_targets``: further (layer, fragile, null) whose targeting is counted from the same adversarial
    images (``sweep.layer_targeting``, in this order): the attack's gradient is computed once for all layers.

    ``extra_epsilons`` join the sweep (the ε values a gate reads). ``targeting_at``: the tensor Algorithm 1
    compares, ``conv`` (the convolution's output, the paper's) or
    ``activation`` (after the bias / BatchNormalization / activation that directly follow it); see
    :func:`targeting_site`.
    """
    check_targeting_at(targeting_at)
    if attack not in ATTACKS:
        raise UsageError(f"--attack must be one of {', '.join(ATTACKS)}, not {attack!r}")
    settings = (pgd or PgdSettings()) if attack == "pgd" else None
    if settings is not None:
        settings.check()
    norm = settings.norm if settings is not None else "linf"
    if epsilons is None:
        kind = epsilon_kind(data)
        values = default_epsilons(kind, sweep, norm)
        source = f"default {sweep} sweep ({'MNIST-like' if kind == 'mnist' else 'CIFAR-like'} data"
        source += ", L2)" if norm == "l2" else ")"
    else:
        values, source = list(epsilons), "option"
    missing = [e for e in extra_epsilons if not any(abs(e - v) <= 1e-12 for v in values)]
    if missing:
        values = sorted([*values, *missing])
        source += f" + {', '.join(f'{e:g}' for e in missing)} for the gates"
    values = check_epsilons(values, bounds)
    site = targeting_site(batching.proto, layer, targeting_at)
    layer_sites = [targeting_site(batching.proto, other, targeting_at) for other, _, _ in layer_targets]
    extra = [(f, n) for _, f, n in layer_targets]
    evaluator = OnnxEvaluator(batching, image_input, output, site, providers, threads, extra_sites=layer_sites)
    module, loss = _attack_module(prepared, batching.proto, output)
    gradient = InputGradient(module, data.preprocessing, loss, device=prepared.device)
    if not batching.batchable:
        gradient = _FixedBatchGradient(gradient, batching.fixed_batch or 1)
    if settings is None:
        result = fgsm_sweep(
            gradient, evaluator, data, values, fragile=fragile, null=null, bounds=bounds, batch_size=batch_size,
            progress=progress, targeting_at=targeting_at, layer_targets=extra,
        )  # fmt: skip
    else:
        chunk = None if batching.batchable else (batching.fixed_batch or 1)
        objectives = LossObjective(module, data.preprocessing, loss, chunk)
        result = pgd_sweep(
            objectives, gradient, evaluator, data, values, settings=settings, fragile=fragile, null=null,
            bounds=bounds, batch_size=batch_size, seed=seed, loss=prepared.preflight.loss, progress=progress,
            targeting_at=targeting_at, layer_targets=extra,
        )  # fmt: skip
    note = targeting_site_note(batching.proto, layer, targeting_at, site)
    return AttackReport(prepared.check, prepared.preflight, result, source, targeting_at, site, note, layer_sites)


def _attack_module(prepared: PreparedAttack, proto: onnx.ModelProto, output: str):  # -> (module, loss name)
    """The module and loss the attack differentiates: for probabilities made by a final Softmax, its input with
    cross-entropy (the same loss as −log p[label], without probabilities that round to one-hot)."""
    mirror = prepared.mirror
    if prepared.preflight.loss == "nll_of_probabilities":
        tensor = softmax_input(proto, output)
        if tensor is not None and hasattr(mirror, "computes") and mirror.computes(tensor):
            return SoftmaxInput(mirror, tensor), "cross_entropy"
    return mirror, prepared.preflight.loss


@dataclass
class LossObjective:
    """PGD objectives on the classification loss through ``module``: ``self(labels)`` is one batch's objective.

    ``chunk``: for a model whose graph only takes a fixed batch, the images go through the module that many
    at a time (the last chunk padded with copies of its last image, whose outputs are dropped, so they add
    nothing to any gradient).
    """

    module: object  # a torch.nn.Module taking the model's input
    preprocessing: object  # kernelscope.data.preprocessing.Preprocessing
    loss: str = "cross_entropy"
    chunk: int | None = None

    def outputs(self, x01):  # (torch.Tensor) -> torch.Tensor
        """The module's (N, K) output for unit pixels ``x01`` (N, H, W, C), chunked for fixed-batch graphs."""
        import torch

        if self.chunk is None:
            return self.module(model_input_from_unit_pixels(x01, self.preprocessing)).reshape(x01.shape[0], -1)
        parts = []
        for start in range(0, x01.shape[0], self.chunk):
            piece = x01[start : start + self.chunk]
            real = piece.shape[0]
            if real < self.chunk:
                piece = torch.cat([piece, piece[-1:].expand(self.chunk - real, *piece.shape[1:])])
            out = self.module(model_input_from_unit_pixels(piece, self.preprocessing)).reshape(self.chunk, -1)
            parts.append(out[:real])
        return torch.cat(parts)

    def __call__(self, labels: np.ndarray) -> Objective:
        import torch

        from kernelscope.attacks.gradients import module_device

        device = module_device(self.module)
        target = torch.as_tensor(labels, dtype=torch.long, device=device)

        def objective(x01):  # (torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]
            # PGD's iterates stay on the CPU; the module's device computes (``.to`` carries the gradient back).
            outputs = self.outputs(x01.to(device))
            # ascend a loss whose gradient does not vanish on saturated outputs (float64 CE, then the margin)
            value, _ = attack_objective(outputs, target, self.loss)
            if self.loss != "cross_entropy":
                criterion = per_example_loss(outputs, target, self.loss).detach().double()
            else:
                # The same loss in float64 picks the kept iterate: float32 ties at 0 on confident images.
                criterion = precise_cross_entropy(outputs, target)
            # Where even that is 0, the (negative) logit margin still ranks the iterates; it is below any
            # positive loss, so an iterate with a measurable loss always wins.
            margin = margin_objective(outputs.detach(), target, self.loss).double()
            return value, torch.where(criterion > 0, criterion, margin).cpu()

        return objective


@dataclass
class _FixedBatchGradient:
    """Gradients for a model whose graph only accepts a fixed batch: run it that many images at a time."""

    inner: InputGradient
    size: int

    @property
    def usage(self):  # kernelscope.attacks.gradients.LossUsage
        """The inner gradient's loss counts (padding images are not counted)."""
        return self.inner.usage

    def __call__(self, x01: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        grads, outputs = [], []
        for start, chunk, real in fixed_chunks(x01, self.size):
            own = labels[start : start + real]
            # Padding repeats the last image; its loss term does not touch the real images' gradients.
            chunk_labels = np.concatenate([own, np.repeat(own[-1:], self.size - real)])
            g, o, kinds = self.inner.with_losses(chunk, chunk_labels)
            self.inner.usage.add(kinds[:real])
            grads.append(g[:real])
            outputs.append(o[:real])
        return np.concatenate(grads), np.concatenate(outputs)
