"""Input gradients of the loss through a differentiable twin of the deployed model.

The attack space is pixels scaled to [0, 1] (``x01 = pixel / 255``) at the model's size and channels,
before normalization: the preprocessing (scale, mean/std, layout) belongs to the model wrapper, as in
Foolbox, so ε means the same thing for every model. The twin is normally the PyTorch mirror of the ONNX
graph (:mod:`kernelscope.mirror`), but any ``torch.nn.Module`` taking the model's input works.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from kernelscope.data.preprocessing import Preprocessing

LOSSES = ("cross_entropy", "nll_of_probabilities")


def model_input_from_unit_pixels(x01: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Differentiable ``(x01 * 255 * scale - mean) / std`` in the model's layout and channel order (x01 is
    B, H, W, C, RGB).

    For a model with a uint8 input the twin receives float pixels 0..255 (its first op is a Cast), so the
    gradient still flows; the deployed model later sees them rounded to integers.
    """
    pixels = x01 * 255.0
    if preprocessing.channel_order == "bgr":
        pixels = pixels.flip(-1)  # the model's blue-green-red order, as Preprocessing.normalize
    if np.dtype(preprocessing.input_dtype) == np.uint8:
        values = pixels
    else:
        mean = torch.as_tensor(preprocessing.mean, dtype=x01.dtype, device=x01.device)
        std = torch.as_tensor(preprocessing.std, dtype=x01.dtype, device=x01.device)
        values = (pixels * preprocessing.scale - mean) / std
    if preprocessing.layout == "NCHW":
        values = values.permute(0, 3, 1, 2)
    elif preprocessing.layout == "NHW":
        values = values[..., 0]
    return values.contiguous()


def per_example_loss(output: torch.Tensor, target: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """The classification loss of each example (B,) from the model's output (logits, or probabilities)."""
    output = output.reshape(output.shape[0], -1)
    if loss == "nll_of_probabilities":
        # The graph ends in a softmax: cross-entropy on probabilities would differentiate the wrong thing.
        return F.nll_loss(torch.log(output.clamp_min(1e-30)), target, reduction="none")
    return F.cross_entropy(output, target, reduction="none")


def precise_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each example (B,) in float64, accurate for confident predictions.

    float32 ``cross_entropy`` rounds to exactly 0 once the margin passes about 17, so every iterate of an attack
    on a confident image would tie; softplus(logsumexp_{j≠y}(z_j − z_y)) keeps its tiny value (it is
    log(1 + Σ_{j≠y} exp(z_j − z_y)), the same quantity). Used to pick the best iterate, not to differentiate.
    """
    z = logits.detach().reshape(logits.shape[0], -1).double()
    index = target.reshape(-1, 1)
    gap = (z - z.gather(1, index)).scatter(1, index, float("-inf"))
    return F.softplus(torch.logsumexp(gap, dim=1))


#: The losses an attack falls back through, per image, when the one before has an exactly zero gradient (see
#: :func:`attack_objective`); ``none``: not even the logit margin moves the image.
ATTACK_LOSSES = ("cross_entropy", "cross_entropy_float64", "logit_margin", "none")
_CE, _CE64, _MARGIN, _NONE = range(4)


def _others_max(values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """max over j != y of ``values`` (B, K), per row."""
    index = target.reshape(-1, 1)
    return values.scatter(1, index, float("-inf")).amax(dim=1)


def margin_objective(output: torch.Tensor, target: torch.Tensor, loss: str = "cross_entropy") -> torch.Tensor:
    """max_{j≠y} z_j − z_y per example (B,): the negative logit margin (C&W, AutoAttack's DLR numerator), to
    ascend. It does not saturate: its gradient is that of two logits, whatever the softmax does. For a model that
    outputs probabilities the same on log-probabilities."""
    z = output.reshape(output.shape[0], -1)
    if loss == "nll_of_probabilities":
        z = torch.log(z.clamp_min(torch.finfo(z.dtype).tiny))
    if z.shape[1] < 2:
        return torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    return _others_max(z, target) - z.gather(1, target.reshape(-1, 1))[:, 0]


def _ce_gradient64(z: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """∂CE/∂z of each row in float64 (B, K): p_j for j ≠ y and −Σ_{j≠y} p_j for y (not p_y − 1, which rounds
    to 0), from log-softmax; exact where float32 rounds every entry to 0, up to margins of about 700."""
    z64 = z.detach().double()
    p = torch.exp(torch.log_softmax(z64, dim=1))
    index = target.reshape(-1, 1)
    others = p.scatter(1, index, 0.0)
    return others.scatter(1, index, -others.sum(dim=1, keepdim=True))


def attack_objective(
    output: torch.Tensor, target: torch.Tensor, loss: str = "cross_entropy"
) -> tuple[torch.Tensor, torch.Tensor]:
    """A per-example objective (B,) to ascend whose input gradient does not vanish on saturated outputs, and
    which loss each example uses (B,), as indices into :data:`ATTACK_LOSSES`. Chosen from the outputs alone:

    - the classification loss (cross-entropy, or −log p[label] on probabilities) where its float32 gradient
      with respect to the outputs is not exactly zero (every image that is not saturated: results unchanged);
    - for logits whose float32 softmax rounds to one-hot (0–255 pixel inputs give logits in the hundreds):
      the cross-entropy's gradient computed in float64, normalized per image (its direction: what sign-based
      FGSM and L∞ PGD steps and normalized L2 steps use), as the surrogate Σ_j g_j z_j with g held fixed;
    - where float64 underflows too, or the probabilities round to one-hot: :func:`margin_objective`.
    """
    z = output.reshape(output.shape[0], -1)
    base = per_example_loss(z, target, loss)
    kind = torch.full((z.shape[0],), _CE, dtype=torch.long, device=z.device)
    if loss == "nll_of_probabilities":
        # −log p_y moves only while p_y < 1 in float32; a one-hot output leaves the log-probability margin
        saturated = z.detach().gather(1, target.reshape(-1, 1))[:, 0] >= 1.0
        kind[saturated] = _MARGIN
    else:
        g32 = torch.softmax(z.detach(), dim=1) - F.one_hot(target, z.shape[1]).to(z.dtype)
        saturated = ~(g32 != 0).any(dim=1)
        if saturated.any():
            g64 = _ce_gradient64(z, target)
            scale = g64.abs().amax(dim=1, keepdim=True)
            usable = saturated & (scale[:, 0] > 0)
            kind[usable] = _CE64
            kind[saturated & ~usable] = _MARGIN
            direction = (g64 / scale.clamp_min(1e-300)).to(z.dtype)
            surrogate = (direction * z).sum(dim=1)
            base = torch.where(kind == _CE64, surrogate, base)
    if (kind == _MARGIN).any():
        base = torch.where(kind == _MARGIN, margin_objective(z, target, loss), base)
    return base, kind


@dataclass
class LossUsage:
    """How many images each attack loss of :data:`ATTACK_LOSSES` moved (counted at the clean images)."""

    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ATTACK_LOSSES, 0))

    def add(self, kinds: np.ndarray) -> None:
        """Count the per-image loss indices ``kinds``."""
        for i, name in enumerate(ATTACK_LOSSES):
            self.counts[name] += int(np.count_nonzero(np.asarray(kinds) == i))

    def snapshot(self) -> dict[str, int]:
        """A copy of the counts."""
        return dict(self.counts)


@dataclass
class InputGradient:
    """∇ of the attack loss with respect to x01, through ``module`` (one forward+backward; a second backward
    only for images whose gradient is exactly zero). The loss falls back per image as :func:`attack_objective`
    says; an image whose gradient is still all zero then tries the logit margin, and counts as ``none`` when
    that is zero too. ``usage`` counts the images of every call by the loss that gave their gradient.

    For images past the first loss the gradient is a direction (scaled by a positive per-image factor): exact
    for FGSM's sign and PGD's sign or normalized steps, not a loss magnitude.
    """

    module: torch.nn.Module
    preprocessing: Preprocessing
    loss: str = "cross_entropy"
    device: str | None = None  # None: the module's own device
    usage: LossUsage = field(default_factory=LossUsage)

    def __call__(self, x01: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (gradient with the shape of ``x01``, logits or probabilities the twin produced)."""
        gradient, output, kinds = self.with_losses(x01, labels)
        self.usage.add(kinds)
        return gradient, output

    def with_losses(self, x01: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gradient, outputs, the loss index of each image into :data:`ATTACK_LOSSES`); counts nothing."""
        device = self.device or module_device(self.module)
        x = torch.as_tensor(x01, dtype=torch.float32, device=device).requires_grad_(True)
        target = torch.as_tensor(labels, dtype=torch.long, device=device)
        output = self.module(model_input_from_unit_pixels(x, self.preprocessing)).reshape(x.shape[0], -1)
        value, kind = attack_objective(output, target, self.loss)
        (gradient,) = torch.autograd.grad(value.sum(), x, retain_graph=True)
        rows = gradient.reshape(x.shape[0], -1)
        dead = torch.isfinite(rows).all(dim=1) & ~(rows != 0).any(dim=1)
        retry = dead & (kind != _MARGIN)
        if retry.any():  # the loss saturated inside the network: the margin of two logits may still move
            margin = margin_objective(output, target, self.loss)
            (again,) = torch.autograd.grad((margin * retry.to(margin.dtype)).sum(), x)
            gradient = torch.where(retry.reshape(-1, *([1] * (x.dim() - 1))), again, gradient)
            kind = torch.where(retry, torch.full_like(kind, _MARGIN), kind)
            rows = gradient.reshape(x.shape[0], -1)
            dead = torch.isfinite(rows).all(dim=1) & ~(rows != 0).any(dim=1)
        kind = torch.where(dead, torch.full_like(kind, _NONE), kind)
        return gradient.detach().cpu().numpy(), output.detach().cpu().numpy(), kind.cpu().numpy()


class SoftmaxInput(torch.nn.Module):
    """The input of the graph's final ``Softmax`` instead of its probabilities, through a mirror.

    −log p[label] of a softmax output *is* the cross-entropy of the softmax's input, so differentiating that
    tensor with ``cross_entropy`` gives the same loss without float32 probabilities that round to one-hot (whose
    gradient is then exactly zero, whatever loss is put on them).
    """

    def __init__(self, mirror: torch.nn.Module, tensor: str) -> None:
        super().__init__()
        self.mirror = mirror
        self.tensor = tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax's input for image batch ``x``."""
        return self.mirror.run({self.mirror.input_names[0]: x}, [self.tensor])[self.tensor]


def softmax_input(proto, output: str) -> str | None:
    """The input of the ``Softmax`` that produces ``output`` over its class axis (1 or -1), or None when
    ``output`` is not made by such a softmax."""
    node = next((n for n in proto.graph.node if output in n.output), None)
    if node is None or node.op_type != "Softmax" or not node.input:
        return None
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 13)
    axis = next((a.i for a in node.attribute if a.name == "axis"), -1 if opset >= 13 else 1)
    # class axis of (N, K): 1 or -1 (before opset 13 axis 1 flattens the trailing axes, the same for 2-D)
    return node.input[0] if axis in (1, -1) else None


def module_device(module) -> torch.device:
    """The device a module's tensors live on (its first parameter or buffer; the CPU for one without any)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")
