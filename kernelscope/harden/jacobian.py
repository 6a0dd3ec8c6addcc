"""Jacobian regularization as post-training processing (Fidel et al., 2020; Jakubovitz & Giryes, 2018).

Loss of a batch: CE + λ_J · ½‖J(x)‖²_F + λ_S · S(x), where

- J(x) = ∂z/∂x is the Jacobian of the model's output z (K scores) with respect to the input pixels in
  [0, 1] units (the attack space). Its squared Frobenius norm is estimated with one random projection per
  step (Hoffman, Roberts & Yaida, 2019): for v uniform on the unit sphere of R^K, E[‖vᵀJ‖²] = ‖J‖²_F / K,
  so ‖J‖²_F ≈ K·‖vᵀJ‖²; vᵀJ is one backward pass of vᵀz, kept in the graph (double backprop).
- S(x) is a stochastic neuron-sensitivity term. Fidel et al.'s exact formula could not be retrieved, so
  this is **our reading**: the mean, over the hidden activations that follow each ReLU of the graph, of
  ‖a(x + δ) − a(x)‖² / ‖a(x)‖² for one perturbation δ drawn uniformly from the L∞ ε-ball (per image,
  then averaged). λ_S = 0 turns it off.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx

from kernelscope.harden.finetune import TrainingView

_ACTIVATIONS = ("Relu",)


def relu_outputs(proto: onnx.ModelProto) -> list[str]:
    """The outputs of the graph's ReLU nodes (the hidden activations S(x) looks at)."""
    return [n.output[0] for n in proto.graph.node if n.op_type in _ACTIVATIONS and n.output and n.output[0]]


@dataclass
class JacobianRegularization:
    """CE + λ_J · ½‖J‖²_F (one random projection) + λ_S · mean relative ReLU-activation change."""

    lambda_j: float
    lambda_s: float
    epsilon: float
    activations: list[str] = field(default_factory=list)
    bounds: tuple[float, float] = (0.0, 1.0)
    name: str = "jacobian"

    @property
    def label(self) -> str:
        """The candidate's setting."""
        return f"λ_J = {self.lambda_j:g}, λ_S = {self.lambda_s:g}"

    @property
    def memory_factor(self) -> float:
        """The double backward holds about three passes' activations; the stability term a fourth."""
        return 3.0 + (1.0 if self.lambda_s > 0 and self.activations else 0.0)

    def loss(self, view: TrainingView, x01, labels, generator: np.random.Generator):
        """The regularized loss of one batch."""
        import torch

        x = x01.detach().requires_grad_(True)
        use_s = self.lambda_s > 0 and bool(self.activations)
        values = view.run(x, self.activations if use_s else ())
        scores = values[view.output]
        loss = view.classification_loss(scores, labels)
        if self.lambda_j > 0:
            classes = scores.shape[1]
            v = generator.standard_normal(size=tuple(scores.shape))
            v = torch.as_tensor(v, dtype=scores.dtype, device=x.device)
            v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)  # uniform on the unit sphere, per image
            (vj,) = torch.autograd.grad((v * scores).sum(), x, create_graph=True)
            frobenius = classes * vj.flatten(1).pow(2).sum(dim=1)  # ≈ ‖J(x)‖²_F per image
            loss = loss + self.lambda_j * 0.5 * frobenius.mean()
        if use_s:
            low, high = self.bounds
            delta = torch.as_tensor(
                generator.uniform(-self.epsilon, self.epsilon, size=tuple(x.shape)), dtype=x.dtype, device=x.device
            )
            moved = view.run((x01 + delta).clamp(low, high), self.activations)
            terms = []
            for name in self.activations:
                clean = values[name].flatten(1)
                change = (moved[name].flatten(1) - clean).pow(2).sum(dim=1)
                terms.append(change / clean.pow(2).sum(dim=1).clamp_min(1e-12))
            loss = loss + self.lambda_s * torch.stack(terms).mean()
        return loss
