"""A small export zoo of architectures in the style of real exports, written by the tests themselves.

Where :mod:`zoo` varies the *export style* of one tiny net, this module varies the *architecture*, in the
shapes the public model zoos use: a ResNet flattened by ``x.view(x.size(0), -1)`` (Shape -> Gather with a 0-d
index -> Unsqueeze -> Concat -> Reshape at opsets 9-13), a MobileNetV2 block (depthwise + pointwise, ReLU6 as
``Clip``), a SqueezeNet fire module (``Concat`` of the expand branches), a DenseNet block (growing
``Concat``), a tiny ViT (patch Conv, class token, attention through ``MatMul`` / ``Softmax``), and a plain CNN
whose ``MaxPool`` runs on the uint8 tensor once ``onnxruntime.quantization`` quantizes it statically.

Nets are seeded and untrained: tests label the images with the model's own predictions, so the baseline is
100 % and every dropped kernel that changes a prediction shows up in the scores.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
from pathlib import Path

import numpy as np
import onnx

import zoo

SIZE = 16
CHANNELS = 3
CLASSES = 4


def _nets() -> dict:
    import torch
    from torch import nn

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.a = nn.Conv2d(8, 8, 3, padding=1)
            self.b = nn.Conv2d(8, 8, 3, padding=1)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(8, CLASSES)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(x + self.b(torch.relu(self.a(x))))
            x = self.pool(x)
            return self.fc(x.view(x.size(0), -1))

    class MobileNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU6())
            self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.ReLU6())
            self.pw = nn.Sequential(nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8))
            self.fc = nn.Linear(8, CLASSES)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.pw(self.dw(x))
            x = nn.functional.adaptive_avg_pool2d(x, 1).flatten(1)
            return self.fc(x)

    class SqueezeNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 3, stride=2)
            self.squeeze = nn.Conv2d(8, 4, 1)
            self.e1 = nn.Conv2d(4, 6, 1)
            self.e3 = nn.Conv2d(4, 6, 3, padding=1)
            self.classifier = nn.Conv2d(12, CLASSES, 1)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2, ceil_mode=True)
            s = torch.relu(self.squeeze(x))
            x = torch.cat([torch.relu(self.e1(s)), torch.relu(self.e3(s))], 1)
            x = nn.functional.adaptive_avg_pool2d(torch.relu(self.classifier(x)), 1)
            return torch.flatten(x, 1)

    class DenseNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv0 = nn.Conv2d(3, 6, 3, padding=1)
            self.l1 = nn.Sequential(nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 4, 3, padding=1))
            self.l2 = nn.Sequential(nn.BatchNorm2d(10), nn.ReLU(), nn.Conv2d(10, 4, 3, padding=1))
            self.fc = nn.Linear(14, CLASSES)

        def forward(self, x):
            x = self.conv0(x)
            x = torch.cat([x, self.l1(x)], 1)
            x = torch.cat([x, self.l2(x)], 1)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(x), 1), 1))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            dim = 8
            self.patch = nn.Conv2d(3, dim, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
            self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
            self.norm = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.head = nn.Linear(dim, CLASSES)

        def forward(self, x):
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.size(0), -1, -1), x], 1) + self.pos
            q, k, v = self.qkv(self.norm(x)).chunk(3, dim=-1)
            attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) * (8**-0.5), dim=-1)
            x = x + self.proj(torch.matmul(attn, v))
            return self.head(x[:, 0])

    class PoolCNN(nn.Module):
        """Conv -> ReLU -> MaxPool: quantize_static fuses the ReLU and runs MaxPool on the uint8 tensor."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
            self.fc = nn.Linear(8, CLASSES)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = nn.functional.adaptive_avg_pool2d(torch.relu(self.conv2(x)), 1)
            return self.fc(x.view(x.size(0), -1))

    return {"resnet": ResNet, "mobilenet": MobileNet, "squeezenet": SqueezeNet, "densenet": DenseNet,
            "vit": ViT, "poolcnn": PoolCNN}  # fmt: skip


ARCHITECTURES = ("resnet", "mobilenet", "squeezenet", "densenet", "vit", "poolcnn")


@functools.cache
def _state(arch: str) -> dict:
    import torch

    torch.manual_seed(sum(map(ord, arch)))
    net = _nets()[arch]()
    # BatchNorm with non-trivial running statistics, so that folding it into the conv is exercised
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def net(arch: str):
    """The seeded eval-mode net of ``arch``."""
    module = _nets()[arch]()
    module.load_state_dict(_state(arch))
    return module.eval()


def images(n: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` uint8 images (N, H, W, C) of the zoo's size."""
    return zoo.tiny_dataset(n, size=(SIZE, SIZE), channels=CHANNELS, num_classes=CLASSES, seed=seed)[0]


def as_input(images_uint8: np.ndarray) -> np.ndarray:
    """The float NCHW input (pixel / 255) every export here takes."""
    return np.ascontiguousarray(images_uint8.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)


def export_onnx(arch: str, path: Path, opset: int) -> Path:
    """Legacy (TorchScript-based) ONNX export with a dynamic batch."""
    import torch

    with zoo._quiet(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        torch.onnx.export(
            net(arch),
            (torch.rand(2, CHANNELS, SIZE, SIZE),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def export_torchscript(arch: str, path: Path, mode: str = "trace") -> Path:
    """``torch.jit.trace`` / ``torch.jit.script`` (or ``quantize_dynamic`` of the Linear layers, then trace),
    saved with the input shape kernelscope reads."""
    import torch

    module = net(arch)
    if mode == "dynamic_quant":
        module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)
    example = torch.rand(1, CHANNELS, SIZE, SIZE)
    scripted = torch.jit.script(module) if mode == "script" else torch.jit.trace(module, example)
    extra = {"kernelscope.json": json.dumps({"input_shape": [1, CHANNELS, SIZE, SIZE]})}
    torch.jit.save(scripted, str(path), _extra_files=extra)
    return path


def quantize_static(arch: str, directory: Path, fmt: str, reduce_range: bool | None = None) -> Path:
    """``onnxruntime.quantization.quantize_static`` of the opset-13 export: ``QDQ`` or ``QOperator``.

    ``reduce_range`` (7-bit weights) defaults to on for the int8 weights of ``QDQ``, so that the model
    computes the same on CPUs with and without AVX-VNNI.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as run

    src = export_onnx(arch, directory / f"{arch}_{fmt}_fp32.onnx", 13)
    batches = [as_input(images(16, seed=s)) for s in (70, 71)]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._items = iter([{"input": b} for b in batches])

        def get_next(self):
            return next(self._items, None)

    path = directory / f"{arch}_{fmt.lower()}{'' if reduce_range is None else f'_rr{int(reduce_range)}'}.onnx"
    quant_format = QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator
    with zoo._quiet():
        run(
            str(src),
            str(path),
            Reader(),
            quant_format=quant_format,
            per_channel=fmt == "QDQ",
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8 if fmt == "QDQ" else QuantType.QUInt8,
            reduce_range=fmt == "QDQ" if reduce_range is None else reduce_range,
        )
    src.unlink()
    onnx.checker.check_model(str(path))
    return path


def labelled_npz(model_path: Path, path: Path, n: int = 32, seed: int = 0) -> Path:
    """An .npz of ``n`` images labelled with ``model_path``'s own predictions (ONNX, in onnxruntime)."""
    x_uint8 = images(n, seed)
    session = zoo._session(model_path)
    logits = session.run(None, {session.get_inputs()[0].name: as_input(x_uint8)})[0]
    np.savez(path, x=x_uint8, y=np.asarray(logits).argmax(axis=1))
    return path
