"""torchvision's ImageNet architectures, written here (torchvision pins its own torch): ResNet-18, ResNet-50
and MobileNetV2 shapes, random weights, for tests and benchmarks at 224 px.

``width`` scales every layer's channels (1.0 is the published network; tests use smaller ones to stay fast
on two cores, the stems keep their published shape: 7 x 7 / 2 with 64 kernels, 3 x 3 / 2 with 32).
"""

from __future__ import annotations

import torch
from torch import nn

#: CIFAR-10 folder -> a close ImageNet class (airliner, beach wagon, house finch, tabby, hartebeest, golden
#: retriever, tree frog, sorrel, container ship, trailer truck); a partial --classes index for
#: the shapes' 1,000 outputs; their weights are random, so only the form of the labels matters
CIFAR10_AS_IMAGENET = {"airplane": 404, "automobile": 436, "bird": 12, "cat": 281, "deer": 351, "dog": 207, "frog": 31,
                  "horse": 339, "ship": 510, "truck": 867}  # fmt: skip


def _scaled(channels: int, width: float) -> int:
    return max(8, round(channels * width / 8) * 8)


def _shortcut(inp: int, out: int, stride: int) -> nn.Module:
    """Identity, or a strided 1 x 1 projection where the block changes the shape."""
    if stride == 1 and inp == out:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out))


class _Basic(nn.Module):
    def __init__(self, inp: int, out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(inp, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
            nn.Conv2d(out, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out),
        )  # fmt: skip
        self.down = _shortcut(inp, out, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


class _Bottleneck(nn.Module):
    def __init__(self, inp: int, width: int, stride: int) -> None:
        super().__init__()
        out = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out),
        )  # fmt: skip
        self.down = _shortcut(inp, out, stride)

    def forward(self, x):
        return torch.relu(self.body(x) + self.down(x))


def _stem() -> list[nn.Module]:
    return [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]


def resnet18(width: float = 1.0, classes: int = 1000) -> nn.Module:
    """ResNet-18: basic blocks 2-2-2-2, widths 64-128-256-512 (times ``width``)."""
    blocks, inp = _stem(), 64
    for channels, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        out = _scaled(channels, width)
        blocks += [_Basic(inp, out, stride), _Basic(out, out, 1)]
        inp = out
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inp, classes))


def resnet50(width: float = 1.0, classes: int = 1000) -> nn.Module:
    """ResNet-50: bottlenecks 3-4-6-3, widths 64-128-256-512 (times ``width``), expansion 4."""
    blocks, inp = _stem(), 64
    for channels, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        middle = _scaled(channels, width)
        for i in range(count):
            blocks.append(_Bottleneck(inp, middle, stride if i == 0 else 1))
            inp = 4 * middle
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(inp, classes))


class _Inverted(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6()]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(),
            nn.Conv2d(hidden, out, 1, bias=False), nn.BatchNorm2d(out),
        ]  # fmt: skip
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and inp == out

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2(width: float = 1.0, classes: int = 1000) -> nn.Module:
    """MobileNetV2: a 3 x 3 / 2 stem of 32 kernels, ReLU6, 17 inverted residual blocks, a 1,280-wide head."""
    settings = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    layers: list[nn.Module] = [nn.Conv2d(3, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6()]
    inp = 32
    for expand, channels, count, stride in settings:
        out = _scaled(channels, width)
        for i in range(count):
            layers.append(_Inverted(inp, out, stride if i == 0 else 1, expand))
            inp = out
    head = _scaled(1280, max(1.0, width))
    layers += [nn.Conv2d(inp, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6()]
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(head, classes))


def export(module: nn.Module, path, size: int = 224) -> None:
    """Inference-mode ONNX export with a dynamic batch (BatchNormalization folded into the convolutions)."""
    module.eval()
    torch.onnx.export(
        module, torch.zeros(1, 3, size, size), str(path), input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}}, opset_version=17, dynamo=False,
    )  # fmt: skip
