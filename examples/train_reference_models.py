#!/usr/bin/env python
"""Train kernelscope's reference models on the real data in ``../shared/data`` and export them.

* ``cifar10_resnet8_e{1,5,10}``: a CIFAR-10 ResNet-8 trained for 1, 5 and 10 epochs. The paper
  (Pravin et al., ICANN 2021) compares ResNets trained for 10, 50 and 100 epochs; a 2-core CPU cannot do
  that, so the lengths are scaled by 1/10, keeping their 1 : 5 : 10 ratio. Each length is its own run with
  its own OneCycle schedule, from the same seed (same initial weights, same data order).
* ``cifar10_stem224``: a 224-px network with an ImageNet-style first layer (7 x 7 / stride-2 Conv with 64
  kernels, 3 x 3 / stride-2 max-pool, then two stride-2 3 x 3 Conv/BN/ReLU layers, global average pooling,
  linear), trained for 2 epochs on 20,000 CIFAR-10 training photos brought to 224 px by the standard
  evaluation transform (shorter side to 256, centre crop 224) -- the images kernelscope gives it with
  ``--resize 256 --crop 224``. It is what issue 15's 224-px runs of inspect, harden and neurons use.
* ``mnist_cnn``: a small MNIST CNN trained on the 14,000 MNIST training images in ``../shared/data/mnist``,
  with a 64-unit ReLU hidden layer before the classifier (the features ``kernelscope neurons`` studies).

Every model is written as ONNX (opset 17, dynamic batch, kernelscope metadata) and TorchScript (with the
same metadata in ``kernelscope.json``), checked against each other, and measured on the full real test
set; a ``<name>.train.json`` summary records the settings, wall time and accuracies. Seeded and
deterministic: a rerun on the same machine writes the same weights.

The GPU-scale set-up of the paper (ResNet-18/50/101, 10/50/100 epochs) is ``gpu_paper_resnets.py``.

Example (from the repository root)::

    python examples/train_reference_models.py                 # all five models, ~50 min on 2 cores
    python examples/train_reference_models.py --only mnist_cnn
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from training_common import (
    CIFAR10,
    CIFAR10_224,
    MNIST,
    SHARED_DATA,
    DataSpec,
    TrainConfig,
    export,
    load_cifar_tar,
    load_idx,
    train,
    verify_export,
)

DEFAULT_OUT = Path(__file__).resolve().parent / "models"
RESNET_EPOCHS = (1, 5, 10)
MNIST_EPOCHS = 8
STEM224_EPOCHS = 2
STEM224_TRAIN_IMAGES = 20_000


class BasicBlock(nn.Module):
    """Two 3x3 conv/BN layers with an identity (or 1x1 projection) shortcut, then ReLU (He et al., 2016)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """conv-BN-ReLU-conv-BN plus shortcut, ReLU."""
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet8(nn.Module):
    """CIFAR-style ResNet-8: a 3x3 stem conv (32 kernels, the layer kernelscope audits), three stages of one
    basic block (32, 64, 128 channels; every stage halves the resolution, so the stages run at 16, 8 and 4
    pixels and one epoch costs about what the example SmallCNN costs), global average pooling, linear."""

    def __init__(self, num_classes: int = 10, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(
            BasicBlock(width, width, 2), BasicBlock(width, 2 * width, 2), BasicBlock(2 * width, 4 * width, 2)
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalized NCHW batch."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


class Stem224Net(nn.Module):
    """conv7x7/2(3->64)+BN+ReLU, maxpool3/2, conv3x3/2(64->128)+BN+ReLU, conv3x3/2(128->256)+BN+ReLU, GAP,
    linear(256->10): ResNet's ImageNet stem (the layer kernelscope audits) on a small body, so 224-px images
    cost about 0.23 G multiply-accumulates each."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int, kernel: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, kernel, 2, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.stem = nn.Sequential(*block(3, 64, 7), nn.MaxPool2d(3, 2, 1))
        self.body = nn.Sequential(*block(64, 128, 3), *block(128, 256, 3))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalized NCHW batch."""
        return self.fc(torch.flatten(self.pool(self.body(self.stem(x))), 1))


class MnistCNN(nn.Module):
    """conv3x3(1->16)+BN+ReLU, maxpool, conv3x3(16->32)+BN+ReLU, maxpool, linear(1568->64)+ReLU, linear(64->10)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, 1, 1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, 1, 1, bias=False),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Flatten(), nn.Linear(32 * 7 * 7, 64), nn.ReLU())
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalized NCHW batch."""
        return self.classifier(self.hidden(self.features(x)))


def build_and_save(
    stem: str, make_model, spec: DataSpec, train_data, test_data, config: TrainConfig, out: Path
) -> dict[str, object]:
    """Train one model, export it, verify the export, write ``<stem>.train.json``; return the summary."""
    print(f"{stem}: {config.epochs} epochs on {len(train_data[0])} images", flush=True)
    model, summary = train(make_model, spec, train_data, test_data, config, log=lambda s: print(s, flush=True))
    onnx_path, ts_path = export(model, spec, out, stem)
    summary.update(verify_export(onnx_path, ts_path, spec, *test_data))
    summary["architecture"] = type(model).__name__
    summary["parameters"] = sum(p.numel() for p in model.parameters())
    summary["test_images"] = len(test_data[0])
    (out / f"{stem}.train.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"{stem}: test accuracy {summary['test_accuracy_onnx']:.4f} (onnxruntime, {len(test_data[0])} images), "
        f"{summary['train_wall_seconds']} s; wrote {onnx_path.name}, {ts_path.name}",
        flush=True,
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    """Train the models named by ``--only`` (default: all)."""
    names = [f"cifar10_resnet8_e{e}" for e in RESNET_EPOCHS] + ["mnist_cnn", "cifar10_stem224"]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA, help="folder holding cifar10-jpg/ and mnist/")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the model files go")
    parser.add_argument("--only", nargs="+", choices=names, default=names, help="train only these models")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 trains faster on a busy machine)")
    parser.add_argument("--limit-batches", type=int, default=0, help="stop each epoch after this many (smoke runs)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    wanted_resnets = [n for n in args.only if n.startswith("cifar10_resnet8")]
    if wanted_resnets or "cifar10_stem224" in args.only:
        cifar = args.data_dir / "cifar10-jpg"
        train_data, test_data = load_cifar_tar(cifar / "train.tar"), load_cifar_tar(cifar / "test.tar")
        for name in wanted_resnets:
            epochs = int(name.rsplit("_e", 1)[1])
            config = TrainConfig(epochs=epochs, seed=args.seed, threads=args.threads)
            build_and_save(name, ResNet8, CIFAR10, train_data, test_data, config, args.out)
        if "cifar10_stem224" in args.only:
            # A seeded subset: every 224-px image costs about 50 times a 32-px one on these cores.
            subset = np.random.default_rng(args.seed).permutation(len(train_data[0]))[:STEM224_TRAIN_IMAGES]
            subset.sort()
            config = TrainConfig(
                epochs=STEM224_EPOCHS,
                seed=args.seed,
                threads=args.threads,
                limit_batches=args.limit_batches,
                eval_each_epoch=False,  # 10,000 test images at 224 px take minutes: measured once at the end
            )
            small = (train_data[0][subset], train_data[1][subset])
            build_and_save("cifar10_stem224", Stem224Net, CIFAR10_224, small, test_data, config, args.out)
    if "mnist_cnn" in args.only:
        mnist = args.data_dir / "mnist"
        train_data = load_idx(
            mnist / "train-images-idx3-ubyte.first14000.gz", mnist / "train-labels-idx1-ubyte.first14000.gz"
        )
        test_data = load_idx(mnist / "t10k-images-idx3-ubyte.gz", mnist / "t10k-labels-idx1-ubyte.gz")
        # Digits are not mirror-symmetric: crops only, no flips.
        config = TrainConfig(epochs=MNIST_EPOCHS, seed=args.seed, max_lr=0.05, augment_flip=False, threads=args.threads)
        build_and_save("mnist_cnn", MnistCNN, MNIST, train_data, test_data, config, args.out)
    print(f"done in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
