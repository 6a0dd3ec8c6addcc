"""Input gradients of the loss through a differentiable twin of the deployed model.

The attack space is pixels scaled to [0, 1] (``x01 = pixel / 255``) at the model's size and channels,
before normalization: the preprocessing (scale, mean/std, layout) belongs to the model wrapper, as in
Foolbox, so ε means the same thing for every model. The twin is normally the PyTorch mirror of the ONNX
graph (:mod:`kernelscope.mirror`), but any ``torch.nn.Module`` taking the model's input works.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from kernelscope.data.preprocessing import Preprocessing

LOSSES = ("cross_entropy", "nll_of_probabilities")


def model_input_from_unit_pixels(x01: torch.Tensor, preprocessing: Preprocessing) -> torch.Tensor:
    """Differentiable ``(x01 * 255 * scale - mean) / std`` in the model's layout (x01 is B, H, W, C).

    For a model with a uint8 input the twin receives float pixels 0..255 (its first op is a Cast), so the
    gradient still flows; the deployed model later sees them rounded to integers.
    """
    pixels = x01 * 255.0
    if np.dtype(preprocessing.input_dtype) == np.uint8:
        values = pixels
    else:
        mean = torch.as_tensor(preprocessing.mean, dtype=x01.dtype)
        std = torch.as_tensor(preprocessing.std, dtype=x01.dtype)
        values = (pixels * preprocessing.scale - mean) / std
    if preprocessing.layout == "NCHW":
        values = values.permute(0, 3, 1, 2)
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


@dataclass
class InputGradient:
    """∇ of the classification loss with respect to x01, through ``module`` (one forward+backward)."""

    module: torch.nn.Module
    preprocessing: Preprocessing
    loss: str = "cross_entropy"
    device: str = "cpu"

    def __call__(self, x01: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (gradient with the shape of ``x01``, logits or probabilities the twin produced)."""
        x = torch.as_tensor(x01, dtype=torch.float32, device=self.device).requires_grad_(True)
        target = torch.as_tensor(labels, dtype=torch.long, device=self.device)
        output = self.module(model_input_from_unit_pixels(x, self.preprocessing)).reshape(x.shape[0], -1)
        value = per_example_loss(output, target, self.loss).sum()
        (gradient,) = torch.autograd.grad(value, x)
        return gradient.detach().cpu().numpy(), output.detach().cpu().numpy()
