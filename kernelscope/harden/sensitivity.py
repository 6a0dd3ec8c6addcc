"""The neuron-sensitivity regularizer of Suri & Evans, "One Neuron to Fool Them All".

On the final linear layer z = W f + b (found as ``kernelscope neurons`` finds it), the loss of a batch is
CE + δ₁·R₁ + δ₂·R₂ with

- R₁ = max over class pairs a < b of the mean of the top-k entries of |W_a − W_b|: no few neurons may
  separate two classes on their own;
- R₂ = batch mean, then mean over the classes c ≠ y, of the mean of the top-k entries of
  |f(x) ⊙ (W_y − W_c)|, divided by Σᵢ fᵢ(x): no few neurons may carry an image's margin.

Defaults δ₁ = 10, δ₂ = 100, k = 16 (the paper's); the search scales both by one strength factor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from kernelscope.errors import ModelError
from kernelscope.harden.finetune import TrainingView
from kernelscope.model.graph import node_label
from kernelscope.model.linear_head import LinearHead

DELTA_1, DELTA_2, TOP_K = 10.0, 100.0, 16


@dataclass(frozen=True)
class HeadWeight:
    """How to read W (K, d) of the final linear layer from the mirror's tensors."""

    initializer: str
    transpose: bool  # W = stored.T
    alpha: float
    feature_tensor: str

    def weight(self, view: TrainingView):
        """W as a torch tensor (a parameter's function when the initializer is tuned)."""
        stored = view.parameters.get(self.initializer)
        if stored is None:
            stored = view.mirror.constant(self.initializer)
        w = stored.T if self.transpose else stored
        return self.alpha * w


def head_weight(proto: onnx.ModelProto, head: LinearHead) -> HeadWeight:
    """Locate the final linear layer's weight initializer and its orientation."""
    node = next((n for n in proto.graph.node if node_label(n) == head.name), None)
    initializers = {t.name for t in proto.graph.initializer}
    if node is None or len(node.input) < 2:
        raise ModelError(f"the final linear layer {head.name!r} was not found in the graph")
    if node.op_type == "Gemm":
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if int(attrs.get("transA", 0)):
            raise ModelError(f"the final Gemm {head.name!r} has transA = 1; the sensitivity method needs x·Wᵀ")
        name, transpose = node.input[1], not bool(int(attrs.get("transB", 0)))
        alpha = float(attrs.get("alpha", 1.0))
    else:  # MatMul (f, W): W stored (d, K)
        name, transpose, alpha = node.input[1], True, 1.0
    if name not in initializers:
        raise ModelError(
            f"the weight of the final linear layer {head.name!r} is not an initializer (it is computed or "
            "quantized); the sensitivity method cannot tune it"
        )
    return HeadWeight(name, transpose, alpha, head.feature_tensor)


def top_k_mean(values, k: int, dim: int = -1):
    """Mean of the k largest entries along ``dim`` (all of them when fewer than k)."""
    k = min(k, values.shape[dim])
    return values.topk(k, dim=dim).values.mean(dim=dim)


@dataclass
class SensitivityRegularization:
    """CE + δ₁·R₁ + δ₂·R₂ on the final linear layer (Suri & Evans)."""

    head: HeadWeight
    strength: float = 1.0  # multiplies both δ
    delta_1: float = DELTA_1
    delta_2: float = DELTA_2
    k: int = TOP_K
    name: str = "sensitivity"
    memory_factor: float = 1.0  # one forward+backward

    @property
    def label(self) -> str:
        """The candidate's setting."""
        return f"δ₁ = {self.strength * self.delta_1:g}, δ₂ = {self.strength * self.delta_2:g}, k = {self.k}"

    def r1(self, weight):
        """max over a < b of the top-k mean of |W_a − W_b|."""
        import torch

        classes = weight.shape[0]
        a, b = torch.triu_indices(classes, classes, offset=1, device=weight.device)
        return top_k_mean((weight[a] - weight[b]).abs(), self.k).max()

    def r2(self, weight, features, labels):
        """Batch mean of the class mean of top-k |f ⊙ (W_y − W_c)| / Σ f."""
        f = features.flatten(1)
        diff = weight[labels][:, None, :] - weight[None, :, :]  # (B, K, d): W_y − W_c
        contributions = (f[:, None, :] * diff).abs()
        per_class = top_k_mean(contributions, self.k) / f.sum(dim=1, keepdim=True).abs().clamp_min(1e-12)
        keep = ~(labels[:, None] == labels.new_tensor(range(weight.shape[0]))[None, :])  # c ≠ y
        return ((per_class * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)).mean()

    def loss(self, view: TrainingView, x01, labels, generator: np.random.Generator):
        """The regularized loss of one batch."""
        values = view.run(x01, [self.head.feature_tensor])
        weight = self.head.weight(view)
        loss = view.classification_loss(values[view.output], labels)
        r1 = self.r1(weight)
        r2 = self.r2(weight, values[self.head.feature_tensor], labels)
        return loss + self.strength * (self.delta_1 * r1 + self.delta_2 * r2)
