"""Adversarial fine-tuning, the practitioners' baseline the regularizers are compared with.

Two attacks make the training examples, both L∞ at the training ε in [0, 1] pixel units:

- ``fgsm-rs``: FGSM from a uniformly random start (Wong, Rice & Kolter, 2020, "Fast is better than free"):
  δ₀ ~ U(−ε, ε), one signed step of α = 1.25·ε, projected back onto the ε-ball and the pixel bounds;
- ``pgd``: PGD with random start, ``steps`` steps of 2.5·ε/steps (Madry et al., 2018).

The loss is TRADES-style (Zhang et al., 2019), so clean accuracy can be held: cross-entropy on the clean
images plus β · KL(p(x) ‖ p(x′)) between the clean and the adversarial predictions. The grid searches β.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kernelscope.harden.finetune import TrainingView

ATTACKS = ("fgsm-rs", "pgd")


@dataclass
class AdversarialTraining:
    """CE(x) + β · KL(p(x) ‖ p(x′)), x′ from FGSM with random start or PGD at ``epsilon``."""

    beta: float
    epsilon: float
    attack: str = "fgsm-rs"
    steps: int = 5
    bounds: tuple[float, float] = (0.0, 1.0)
    name: str = "adversarial"
    #: the clean and the adversarial forward are both kept for the loss's backward
    memory_factor: float = 2.0

    @property
    def label(self) -> str:
        """The candidate's setting."""
        attack = "FGSM-RS" if self.attack == "fgsm-rs" else f"PGD-{self.steps}"
        return f"{attack}, β = {self.beta:g}, ε = {self.epsilon:g}"

    def perturb(self, view: TrainingView, x01, labels, generator: np.random.Generator):
        """Adversarial examples for the batch (no graph kept)."""
        import torch

        eps = self.epsilon
        low, high = self.bounds
        start = torch.as_tensor(generator.uniform(-eps, eps, size=tuple(x01.shape)), dtype=x01.dtype, device=x01.device)
        point = (x01 + start).clamp(low, high)
        steps, size = (1, 1.25 * eps) if self.attack == "fgsm-rs" else (self.steps, 2.5 * eps / self.steps)
        for _ in range(steps):
            point = point.detach().requires_grad_(True)
            loss = view.classification_loss(view.scores(point), labels)
            (gradient,) = torch.autograd.grad(loss, point)
            moved = point.detach() + size * torch.nan_to_num(gradient).sign()
            point = torch.min(torch.max(moved, x01 - eps), x01 + eps).clamp(low, high)
        return point.detach()

    def loss(self, view: TrainingView, x01, labels, generator: np.random.Generator):
        """CE on the clean batch plus β times the KL divergence to the adversarial predictions."""
        import torch.nn.functional as F

        adversarial = self.perturb(view, x01, labels, generator)
        clean_scores = view.scores(x01)
        clean_log_p = view.log_probabilities(clean_scores)
        adversarial_log_p = view.log_probabilities(view.scores(adversarial))
        ce = F.nll_loss(clean_log_p, labels)
        kl = F.kl_div(adversarial_log_p, clean_log_p, log_target=True, reduction="batchmean")
        return ce + self.beta * kl
