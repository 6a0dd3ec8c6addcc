"""A fine-tuning step through the trainable mirror vs the same network written natively in torch.

    python bench/finetune_speed.py [--batch 128] [--steps 20] [--threads N]

The native network is ``SmallCNN`` of ``examples/train_cifar10_cnn.py`` with the weights of the shipped
TorchScript twin; the mirror runs ``examples/models/cifar10_cnn.onnx`` (the same weights) with every float
Conv / Gemm weight and bias trainable. Both take an Adam step on the same batch: clean cross-entropy, and
the adversarial (FGSM-RS + TRADES-style) loss of ``harden --method adversarial``. The aim (issue 13):
mirror ≥ 0.7× native speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from train_cifar10_cnn import SmallCNN  # noqa: E402

from kernelscope.harden.adversarial import AdversarialTraining  # noqa: E402
from kernelscope.harden.finetune import TrainingView, trainable_copy  # noqa: E402
from kernelscope.mirror import OnnxMirror  # noqa: E402
from kernelscope.mirror.trainable import find_tunable  # noqa: E402


class _Native(TrainingView):
    """The native module behind the same interface, so both run the identical loss code."""

    def __init__(self, module, preprocessing) -> None:
        self.module = module
        super().__init__(None, preprocessing, "logits", "cross_entropy", dict(module.named_parameters()))

    def run(self, x01, extra=()):
        from kernelscope.attacks.gradients import model_input_from_unit_pixels

        return {"logits": self.module(model_input_from_unit_pixels(x01, self.preprocessing))}


def _time_steps(view: TrainingView, loss_fn, x01, labels, steps: int) -> float:
    optimizer = torch.optim.Adam(list(view.parameters.values()), lr=1e-4)
    for _ in range(3):  # warm-up
        optimizer.zero_grad()
        loss_fn(view, x01, labels).backward()
        optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        loss_fn(view, x01, labels).backward()
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    """Print steps/s of both and their ratio for the clean and the adversarial loss."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from kernelscope.model.loading import load_model

    loaded = load_model(ROOT / "examples/models/cifar10_cnn.onnx")
    from kernelscope.data.preprocessing import Preprocessing

    meta = loaded.kernelscope_metadata["preprocessing"]
    pre = Preprocessing(meta["scale"], tuple(meta["mean"]), tuple(meta["std"]), "NCHW", (32, 32), 3, "float32")
    proto = onnx.load(str(ROOT / "examples/models/cifar10_cnn.onnx"))
    mirror, parameters = trainable_copy(OnnxMirror(proto), find_tunable(proto, "all").names)
    mirror_view = TrainingView(mirror, pre, proto.graph.output[0].name, "cross_entropy", parameters)
    native = SmallCNN()
    native.load_state_dict(torch.jit.load(str(ROOT / "examples/models/cifar10_cnn.pt")).state_dict())
    native.eval()  # BatchNorm as deployed, like the mirror
    native_view = _Native(native, pre)

    rng = np.random.default_rng(0)
    x01 = torch.as_tensor(rng.uniform(0, 1, size=(args.batch, 32, 32, 3)), dtype=torch.float32)
    labels = torch.as_tensor(rng.integers(0, 10, size=args.batch))
    with torch.no_grad():
        diff = float((mirror_view.scores(x01) - native_view.scores(x01)).abs().max())
    print(f"max |logit difference| mirror vs native: {diff:.2e}; threads {torch.get_num_threads()}")

    def clean(view, x, y):
        return view.classification_loss(view.scores(x), y)

    adversarial = AdversarialTraining(beta=1.0, epsilon=0.01)

    def adv(view, x, y):
        return adversarial.loss(view, x, y, np.random.default_rng(1))

    for name, fn in (("clean CE", clean), ("adversarial (FGSM-RS + KL)", adv)):
        native_rate = _time_steps(native_view, fn, x01, labels, args.steps)
        mirror_rate = _time_steps(mirror_view, fn, x01, labels, args.steps)
        print(
            f"{name}: native {native_rate * args.batch:,.0f} images/s, mirror {mirror_rate * args.batch:,.0f} "
            f"images/s, ratio {mirror_rate / native_rate:.2f}x"
        )


if __name__ == "__main__":
    main()
