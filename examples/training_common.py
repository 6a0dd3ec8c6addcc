"""Shared pieces of the reference-model training scripts: data readers, seeded training loop, export.

Standalone on purpose (numpy, Pillow, torch, onnx, onnxruntime only; no kernelscope import), so that the
models it produces are independent of the tool that audits them.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import platform
import random
import tarfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
NUM_THREADS = 2

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
MNIST_CLASSES = [str(d) for d in range(10)]


@dataclass(frozen=True)
class DataSpec:
    """What a model expects: the preprocessing convention stored as kernelscope metadata, and its data."""

    dataset: str
    class_names: list[str]
    mean: list[float]
    std: list[float]
    size: int
    channels: int
    #: (resize, crop): the model takes the images with their shorter side scaled to ``resize`` (bilinear)
    #: and the centred ``crop`` x ``crop`` square cut out (kernelscope's ``--resize R --crop C``); ``size``
    #: is then ``crop``. None: the images as stored.
    upscale: tuple[int, int] | None = None

    @property
    def preprocessing(self) -> dict[str, object]:
        """The ``kernelscope.preprocessing`` metadata entry (docs/metadata.md)."""
        return {
            "scale": 1.0 / 255.0,
            "mean": self.mean,
            "std": self.std,
            "layout": "NCHW",
            "size": [self.size, self.size],
            "channels": self.channels,
        }

    @property
    def input_shape(self) -> list[int]:
        """Shape of one NCHW input image, batch 1."""
        return [1, self.channels, self.size, self.size]

    def normalize(self, batch_nhwc: np.ndarray) -> torch.Tensor:
        """``uint8`` NHWC images → the model's normalized float32 NCHW input."""
        t = torch.as_tensor(batch_nhwc).permute(0, 3, 1, 2).float() / 255.0
        if self.upscale is not None:
            # Bilinear with half-pixel centres, as Pillow upscales (no antialiasing applies when enlarging).
            resize, crop = self.upscale
            t = torch.nn.functional.interpolate(t, size=(resize, resize), mode="bilinear", align_corners=False)
            top = (resize - crop) // 2
            t = t[:, :, top : top + crop, top : top + crop]
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return ((t - mean) / std).contiguous()


CIFAR10 = DataSpec("cifar10", CIFAR10_CLASSES, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], 32, 3)
#: CIFAR-10 photos brought to 224 px by the standard evaluation transform (resize 256, centre crop 224).
CIFAR10_224 = DataSpec(
    "cifar10", CIFAR10_CLASSES, [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616], 224, 3, upscale=(256, 224)
)
MNIST = DataSpec("mnist", MNIST_CLASSES, [0.1307], [0.3081], 28, 1)


def load_cifar_tar(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every ``<class>/<name>.jpg`` member of a CIFAR-10 JPEG tar, in sorted member order.

    Returns ``uint8`` images ``(N, 32, 32, 3)`` and ``int64`` labels (official class order).
    """
    class_index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    with tarfile.open(path) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")), key=lambda m: m.name
        )
        images = np.empty((len(members), 32, 32, 3), dtype=np.uint8)
        labels = np.empty(len(members), dtype=np.int64)
        for i, member in enumerate(members):
            handle = tar.extractfile(member)
            if handle is None:
                raise ValueError(f"{path}: cannot read {member.name}")
            with Image.open(io.BytesIO(handle.read())) as img:
                images[i] = np.asarray(img.convert("RGB"), dtype=np.uint8)
            labels[i] = class_index[Path(member.name).parent.name]
    return images, labels


def load_idx(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a gzipped MNIST idx image/label pair into ``uint8 (N, 28, 28, 1)`` images and ``int64`` labels."""
    with gzip.open(images_path, "rb") as fh:
        raw = fh.read()
    magic, count, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    if magic != 2051:
        raise ValueError(f"{images_path}: not an idx3 image file")
    images = np.frombuffer(raw[16:], dtype=np.uint8, count=int(count * rows * cols)).reshape(count, rows, cols, 1)
    with gzip.open(labels_path, "rb") as fh:
        raw = fh.read()
    magic, n_labels = np.frombuffer(raw[:8], dtype=">u4")
    if magic != 2049 or n_labels != count:
        raise ValueError(f"{labels_path}: not the label file of {images_path.name}")
    return images.copy(), np.frombuffer(raw[8:], dtype=np.uint8, count=int(n_labels)).astype(np.int64)


def crop_flip(padded: np.ndarray, idx: np.ndarray, rng: np.random.Generator, size: int, flip: bool) -> np.ndarray:
    """Random ``size``×``size`` crops of 4-pixel zero-padded images, plus a random horizontal flip if ``flip``."""
    n = len(idx)
    dy = rng.integers(0, 9, size=n)
    dx = rng.integers(0, 9, size=n)
    rows = dy[:, None] + np.arange(size)[None, :]
    cols = dx[:, None] + np.arange(size)[None, :]
    if flip:
        cols = np.where((rng.random(n) < 0.5)[:, None], cols[:, ::-1], cols)
    return padded[idx[:, None, None], rows[:, :, None], cols[:, None, :]]


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels (bit-reproducible reruns)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


@torch.no_grad()
def accuracy(model: nn.Module, spec: DataSpec, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of a torch model on ``uint8`` NHWC images (on the model's device)."""
    model.eval()
    if spec.upscale is not None:
        batch = min(batch, 100)  # 224-px activations: 1,000 images would take gigabytes
    device = next(model.parameters()).device
    correct = 0
    for s in range(0, len(images), batch):
        predicted = model(spec.normalize(images[s : s + batch]).to(device)).argmax(1).cpu().numpy()
        correct += int((predicted == labels[s : s + batch]).sum())
    return correct / len(images)


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (SGD + Nesterov, OneCycle, weight decay on weights only)."""

    epochs: int
    seed: int = 0
    batch_size: int = 128
    max_lr: float = 0.1
    weight_decay: float = 5e-4
    augment_flip: bool = True
    device: str = "cpu"
    threads: int = NUM_THREADS  # torch intra-op threads on the CPU (recorded: results depend on it in the last bits)
    limit_batches: int = 0  # > 0: stop each epoch after this many batches (smoke runs)
    eval_each_epoch: bool = True  # measure the test accuracy after every epoch (else only at the end)


def train(
    make_model: Callable[[], nn.Module],
    spec: DataSpec,
    train_data: tuple[np.ndarray, np.ndarray],
    test_data: tuple[np.ndarray, np.ndarray],
    config: TrainConfig,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, dict[str, object]]:
    """Train a fresh model for ``config.epochs`` epochs with its own OneCycle schedule; return it and a summary.

    Every run starts from the same seed, so runs of different lengths share their initial weights and their
    data order, and differ only in how long (and with which schedule) they were trained, as in the paper.
    """
    seed_everything(config.seed)
    torch.set_num_threads(config.threads)
    x_train, y_train = train_data
    padded = np.pad(x_train, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="constant")
    rng = np.random.default_rng(config.seed)
    # channels_last is faster for these convolutions on CPU; the export uses the default layout.
    model = make_model().to(config.device, memory_format=torch.channels_last)
    steps = math.ceil(len(x_train) / config.batch_size)
    if config.limit_batches:
        steps = min(steps, config.limit_batches)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.max_lr,
        momentum=0.9,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.max_lr, epochs=config.epochs, steps_per_epoch=steps, pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss()
    started = time.perf_counter()
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        epoch_start = time.perf_counter()
        order = rng.permutation(len(x_train))
        loss_sum = 0.0
        for step in range(steps):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = crop_flip(padded, idx, rng, x_train.shape[1], config.augment_flip)  # at the stored size
            x = spec.normalize(batch).to(config.device).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(y_train[idx]).to(config.device)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            loss_sum += float(loss.detach()) * len(idx)
        seen = min(len(x_train), steps * config.batch_size)
        entry: dict[str, object] = {"epoch": epoch, "loss": round(loss_sum / seen, 4)}
        if config.eval_each_epoch:
            model = model.to(memory_format=torch.contiguous_format)
            entry["test_accuracy"] = round(accuracy(model, spec, *test_data), 4)
            model = model.to(memory_format=torch.channels_last)
        history.append(entry)
        test_text = f"  test {entry['test_accuracy']:.4f}" if "test_accuracy" in entry else ""
        log(
            f"  epoch {epoch}/{config.epochs}: loss {loss_sum / seen:.4f}{test_text}  "
            f"{time.perf_counter() - epoch_start:.0f}s"
        )
    model = model.to(memory_format=torch.contiguous_format).eval()
    test_accuracy = accuracy(model, spec, *test_data)
    model = model.cpu()  # exports and checks run on the CPU
    summary = {
        "seed": config.seed,
        "epochs": config.epochs,
        "batch_size": config.batch_size,
        "max_lr": config.max_lr,
        "weight_decay": config.weight_decay,
        "train_images": len(x_train),
        "device": config.device,
        "limit_batches": config.limit_batches,
        "train_wall_seconds": round(time.perf_counter() - started, 1),
        "history": history,
        "test_accuracy_torch": round(test_accuracy, 4),
        "num_threads": config.threads,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    return model, summary


def export(model: nn.Module, spec: DataSpec, out_dir: Path, stem: str) -> tuple[Path, Path]:
    """Write ``<stem>.onnx`` (opset 17, dynamic batch, kernelscope metadata) and ``<stem>.pt`` (TorchScript)."""
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path, ts_path = out_dir / f"{stem}.onnx", out_dir / f"{stem}.pt"
    dummy = torch.zeros(*spec.input_shape)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (dummy,),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.helper.set_model_props(
        proto,
        {
            "kernelscope.preprocessing": json.dumps(spec.preprocessing),
            "kernelscope.dataset": spec.dataset,
            "kernelscope.class_names": json.dumps(spec.class_names),
        },
    )
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(onnx_path))
    with torch.no_grad():
        traced = torch.jit.trace(model, (dummy,))
    metadata = {
        "preprocessing": spec.preprocessing,
        "dataset": spec.dataset,
        "class_names": spec.class_names,
        "input_shape": spec.input_shape,
    }
    torch.jit.save(traced, str(ts_path), _extra_files={"kernelscope.json": json.dumps(metadata)})
    return onnx_path, ts_path


def verify_export(
    onnx_path: Path, ts_path: Path, spec: DataSpec, images: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    """Check onnxruntime against the TorchScript file and measure the ONNX model's test accuracy.

    Raises ``AssertionError`` when the two files disagree by 1e-4 or more on 256 test images.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = NUM_THREADS
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(ts_path)).eval()
    probe = spec.normalize(images[:256])
    with torch.no_grad():
        ts_logits = scripted(probe).numpy()
    diff = float(np.abs(ts_logits - session.run(["logits"], {"input": probe.numpy()})[0]).max())
    assert diff < 1e-4, f"{onnx_path.name}: ONNX vs TorchScript logits differ by {diff}"
    correct = 0
    for s in range(0, len(images), 500):
        logits = session.run(["logits"], {"input": spec.normalize(images[s : s + 500]).numpy()})[0]
        correct += int((logits.argmax(1) == labels[s : s + 500]).sum())
    return {"test_accuracy_onnx": round(correct / len(images), 4), "onnx_vs_torchscript_max_abs_diff": diff}
