#!/usr/bin/env python
"""The paper's GPU-scale set-up: CIFAR-10 ResNet-18, ResNet-50 and ResNet-101 trained for 10, 50 and 100 epochs.

Pravin et al. (ICANN 2021) audit ResNets trained for 10, 50 and 100 epochs. This script trains that grid
(CIFAR-style ResNets: 3x3 stem with 64 kernels, no max-pool, stages of 64/128/256/512 channels) on the real
CIFAR-10 JPEGs in ``../shared/data/cifar10-jpg`` on a CUDA GPU, with the same seeded recipe as the CPU
reference models (SGD + Nesterov, OneCycle, crop + flip), and exports each to ONNX + TorchScript under
``examples/models/gpu/`` (not committed: ResNet-101 is ~170 MB). Then audit them with::

    python examples/replicate_paper.py --models examples/models/gpu/*.onnx --out-dir build/replication-gpu

Cost (9 runs, 480 epochs in all) is hours on one modern GPU; ``--arch`` / ``--epochs`` select a part.
``--smoke`` runs every selected combination for 2 batches of one epoch (on the CPU if there is no GPU) to
check the script end to end.

Example::

    python examples/gpu_paper_resnets.py --arch resnet18 --epochs 10 50 100
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_reference_models import BasicBlock
from training_common import CIFAR10, SHARED_DATA, TrainConfig, export, load_cifar_tar, train, verify_export

OUT = Path(__file__).resolve().parent / "models" / "gpu"


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4), each with BN, plus a (projection) shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual bottleneck."""
        return torch.relu(self.body(x) + self.shortcut(x))


#: blocks per stage and block type of each architecture (He et al., 2016, Table 1).
ARCHITECTURES = {
    "resnet18": ([2, 2, 2, 2], "basic"),
    "resnet50": ([3, 4, 6, 3], "bottleneck"),
    "resnet101": ([3, 4, 23, 3], "bottleneck"),
}


class CifarResNet(nn.Module):
    """ResNet for 32x32 inputs: 3x3 stem (64 kernels, the audited layer), four stages, global pooling, linear."""

    def __init__(self, arch: str, num_classes: int = 10) -> None:
        super().__init__()
        blocks, kind = ARCHITECTURES[arch]
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers: list[nn.Module] = []
        cin = 64
        for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512), strict=True)):
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                if kind == "basic":
                    layers.append(BasicBlock(cin, width, stride))
                    cin = width
                else:
                    layers.append(Bottleneck(cin, width, stride))
                    cin = width * Bottleneck.expansion
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for a normalized NCHW batch."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


def main(argv: list[str] | None = None) -> int:
    """Train the selected (architecture, epochs) grid and export every model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", nargs="+", choices=sorted(ARCHITECTURES), default=list(ARCHITECTURES))
    parser.add_argument("--epochs", nargs="+", type=int, default=[10, 50, 100])
    parser.add_argument("--data-dir", type=Path, default=SHARED_DATA / "cifar10-jpg")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="2 batches of 1 epoch per model (checks the script)")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not args.smoke:
        print("no CUDA GPU: this is the GPU-scale set-up; use train_reference_models.py on a CPU", file=sys.stderr)
        return 2
    # Deterministic cuBLAS needs a fixed workspace (torch.use_deterministic_algorithms is on).
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    train_data = load_cifar_tar(args.data_dir / "train.tar")
    test_data = load_cifar_tar(args.data_dir / "test.tar")
    if args.smoke:
        test_data = (test_data[0][:500], test_data[1][:500])
    for arch in args.arch:
        for epochs in args.epochs:
            stem = f"cifar10_{arch}_e{epochs}"
            config = TrainConfig(
                epochs=1 if args.smoke else epochs, seed=args.seed, device=device, limit_batches=2 if args.smoke else 0
            )
            print(f"{stem}: training on {device}", flush=True)
            model, summary = train(lambda a=arch: CifarResNet(a), CIFAR10, train_data, test_data, config)
            onnx_path, ts_path = export(model, CIFAR10, args.out, stem)
            summary.update(verify_export(onnx_path, ts_path, CIFAR10, *test_data))
            summary |= {"architecture": arch, "gpu": torch.cuda.get_device_name() if device == "cuda" else None}
            (args.out / f"{stem}.train.json").write_text(json.dumps(summary, indent=2) + "\n")
            print(f"{stem}: test accuracy {summary['test_accuracy_onnx']:.4f}, wrote {onnx_path}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
