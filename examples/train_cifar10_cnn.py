#!/usr/bin/env python
"""Train a small, seeded CNN on real CIFAR-10 JPEGs and export it for ``kernelscope``.

The script reads ``train.tar`` / ``test.tar`` (members ``<class>/<nnnn>.jpg``) directly with
:mod:`tarfile` and Pillow, decodes every image once into a ``uint8`` array of shape ``(N, 32, 32, 3)``,
trains a four-layer CNN on the CPU and exports the *same* weights to

* ``<out>/cifar10_cnn.onnx`` (legacy TorchScript-based ONNX exporter, opset 17, dynamic batch), and
* ``<out>/cifar10_cnn.pt`` (TorchScript, ``torch.jit.trace`` + ``torch.jit.save``),

both carrying the preprocessing convention, the dataset name and the class names as metadata.
Afterwards it checks that onnxruntime and TorchScript agree on a batch of test images and reports the
ONNX model's top-1 accuracy on the full 10,000-image test set.

Input convention (normalization is *not* part of the graph): ``(pixel * scale - mean) / std`` in NCHW,
``scale = 1/255``, CIFAR-10 mean ``(0.4914, 0.4822, 0.4465)`` and std ``(0.2470, 0.2435, 0.2616)``.

Example (from the repository root)::

    python examples/train_cifar10_cnn.py --epochs 20
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import random
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from PIL import Image
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = (REPO_ROOT / ".." / "shared" / "data" / "cifar10-jpg").resolve()
DEFAULT_OUT = REPO_ROOT / "examples" / "models"

CLASS_NAMES: list[str] = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
SCALE = 1.0 / 255.0
MEAN: list[float] = [0.4914, 0.4822, 0.4465]
STD: list[float] = [0.2470, 0.2435, 0.2616]
PREPROCESSING: dict[str, object] = {
    "scale": SCALE,
    "mean": MEAN,
    "std": STD,
    "layout": "NCHW",
    "size": [32, 32],
    "channels": 3,
}
INPUT_SHAPE: list[int] = [1, 3, 32, 32]
NUM_THREADS = 2


def load_tar(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Decode every ``<class>/<name>.jpg`` member of a tar file.

    Members are processed in sorted name order so the result is deterministic.

    Args:
        path: Path to ``train.tar`` or ``test.tar``.

    Returns:
        ``(images, labels)``: a ``uint8`` array ``(N, 32, 32, 3)`` (RGB) and an ``int64`` array ``(N,)``
        with indices into :data:`CLASS_NAMES`.
    """
    class_index = {name: i for i, name in enumerate(CLASS_NAMES)}
    with tarfile.open(path) as tar:
        members = sorted(
            (m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith(".jpg")),
            key=lambda m: m.name,
        )
        images = np.empty((len(members), 32, 32, 3), dtype=np.uint8)
        labels = np.empty(len(members), dtype=np.int64)
        for i, member in enumerate(members):
            cls = Path(member.name).parent.name
            fh = tar.extractfile(member)
            assert fh is not None, member.name
            with Image.open(io.BytesIO(fh.read())) as img:
                arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
            if arr.shape != (32, 32, 3):
                raise ValueError(f"{member.name}: unexpected shape {arr.shape}")
            images[i] = arr
            labels[i] = class_index[cls]
    return images, labels


class SmallCNN(nn.Module):
    """Three conv/BN/ReLU/max-pool stages, global average pooling and a linear classifier.

    The first convolution has 32 3x3 kernels over the 3 RGB channels (the layer ``kernelscope`` audits).
    """

    def __init__(self, num_classes: int = 10) -> None:
        """Build the network.

        Args:
            num_classes: Number of output logits.
        """
        super().__init__()

        def stage(cin: int, cout: int) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]

        self.features = nn.Sequential(*stage(3, 32), *stage(32, 64), *stage(64, 128))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``(N, num_classes)`` for a normalized NCHW batch ``x``."""
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(x)


def normalize(batch_nhwc: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert a ``uint8`` NHWC batch to the model's normalized float32 NCHW input."""
    t = torch.as_tensor(batch_nhwc).permute(0, 3, 1, 2).float() * SCALE
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return ((t - mean) / std).contiguous()


def augment(padded: np.ndarray, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random 32x32 crop out of 4-px zero-padded images plus random horizontal flip.

    Args:
        padded: ``uint8`` array ``(N, 40, 40, 3)`` (training images padded by 4 px on each side).
        idx: Indices of the images in the batch.
        rng: Random generator (seeded, so augmentation is reproducible).

    Returns:
        ``uint8`` array ``(len(idx), 32, 32, 3)``.
    """
    n = len(idx)
    dy = rng.integers(0, 9, size=n)
    dx = rng.integers(0, 9, size=n)
    flip = rng.random(n) < 0.5
    rows = dy[:, None] + np.arange(32)[None, :]  # (n, 32)
    cols = dx[:, None] + np.arange(32)[None, :]  # (n, 32)
    cols = np.where(flip[:, None], cols[:, ::-1], cols)
    return padded[idx[:, None, None], rows[:, :, None], cols[:, None, :]]


@torch.no_grad()
def evaluate(model: nn.Module, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    """Top-1 accuracy of a PyTorch model on ``uint8`` NHWC images."""
    model.eval()
    correct = 0
    for s in range(0, len(images), batch):
        logits = model(normalize(images[s : s + batch]))
        correct += int((logits.argmax(1).numpy() == labels[s : s + batch]).sum())
    return correct / len(images)


def torchscript_metadata() -> dict[str, object]:
    """Content of the ``kernelscope.json`` stored in the TorchScript archive.

    Same entries as the ONNX ``metadata_props`` but without the ``kernelscope.`` prefix (see
    docs/metadata.md), plus the ``input_shape`` needed to export the module to ONNX.
    """
    return {
        "preprocessing": PREPROCESSING,
        "dataset": "cifar10",
        "class_names": CLASS_NAMES,
        "input_shape": INPUT_SHAPE,
    }


def export(model: nn.Module, out_dir: Path) -> tuple[Path, Path]:
    """Export ``model`` to ONNX (with ``metadata_props``) and TorchScript (with ``kernelscope.json``).

    Returns:
        ``(onnx_path, torchscript_path)``.
    """
    model.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "cifar10_cnn.onnx"
    ts_path = out_dir / "cifar10_cnn.pt"
    dummy = torch.zeros(*INPUT_SHAPE)

    torch.onnx.export(
        model,
        (dummy,),
        str(onnx_path),
        dynamo=False,
        opset_version=17,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    proto = onnx.load(str(onnx_path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(
        proto,
        {
            "kernelscope.preprocessing": json.dumps(PREPROCESSING),
            "kernelscope.dataset": "cifar10",
            "kernelscope.class_names": json.dumps(CLASS_NAMES),
        },
    )
    onnx.checker.check_model(proto)
    onnx.save(proto, str(onnx_path))

    with torch.no_grad():
        traced = torch.jit.trace(model, (dummy,))
    extra_files = {"kernelscope.json": json.dumps(torchscript_metadata())}
    torch.jit.save(traced, str(ts_path), _extra_files=extra_files)
    return onnx_path, ts_path


def first_conv_params(proto: onnx.ModelProto) -> list[np.ndarray]:
    """Return the weight (and bias, if any) initializers of the first ``Conv`` node of an ONNX model."""
    inits = {init.name: init for init in proto.graph.initializer}
    conv = next(node for node in proto.graph.node if node.op_type == "Conv")
    return [numpy_helper.to_array(inits[name]) for name in conv.input[1:] if name]


def torchscript_as_onnx(module: torch.jit.ScriptModule) -> onnx.ModelProto:
    """Export a loaded TorchScript module to ONNX in memory, with the same legacy exporter settings.

    This mirrors how kernelscope converts a ``.pt`` file before auditing it, so comparing its first Conv
    with the shipped ONNX file's shows that both files lead to the same audited kernels.
    """
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(*INPUT_SHAPE),),
            buffer,
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def verify(
    onnx_path: Path, ts_path: Path, images: np.ndarray, labels: np.ndarray, batch: int = 500
) -> tuple[float, float]:
    """Compare onnxruntime against TorchScript and compute ONNX top-1 accuracy on all ``images``.

    Returns:
        ``(max_abs_logit_diff, onnx_accuracy)``; raises ``AssertionError`` if the diff is >= 1e-4.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = NUM_THREADS
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])

    extra = {"kernelscope.json": ""}
    ts_model = torch.jit.load(str(ts_path), _extra_files=extra)
    ts_model.eval()
    assert json.loads(extra["kernelscope.json"]) == torchscript_metadata()

    # The exporter folds each BatchNorm into the Conv before it (eval mode), so the ONNX first Conv holds
    # W * gamma / sqrt(var + eps) plus a bias; the TorchScript file holds the raw conv and BN parameters.
    # Exporting the TorchScript module the same way must give bit-identical first-Conv parameters.
    shipped = first_conv_params(onnx.load(str(onnx_path)))
    from_ts = first_conv_params(torchscript_as_onnx(ts_model))
    assert len(shipped) == len(from_ts) == 2, "expected a first Conv with weight and (folded BN) bias"
    assert all(np.array_equal(a, b) for a, b in zip(shipped, from_ts, strict=True)), (
        "first Conv parameters differ between the ONNX file and the exported TorchScript file"
    )

    probe = normalize(images[:256])
    with torch.no_grad():
        ts_logits = ts_model(probe).numpy()
    ort_logits = sess.run(["logits"], {"input": probe.numpy()})[0]
    max_diff = float(np.abs(ts_logits - ort_logits).max())
    assert max_diff < 1e-4, f"ONNX vs TorchScript logits differ by {max_diff}"

    correct = 0
    for s in range(0, len(images), batch):
        x = normalize(images[s : s + batch]).numpy()
        logits = sess.run(["logits"], {"input": x})[0]
        correct += int((logits.argmax(1) == labels[s : s + batch]).sum())
    return max_diff, correct / len(images)


def report(onnx_path: Path, ts_path: Path, max_diff: float, onnx_acc: float, n_test: int) -> None:
    """Print the export/verification results."""
    print(f"ONNX vs TorchScript max |logit diff| on 256 test images: {max_diff:.2e}")
    print(f"ONNX (onnxruntime) top-1 accuracy on the full {n_test}-image test set: {onnx_acc:.4f}")
    for path in (onnx_path, ts_path):
        print(f"wrote {path} ({path.stat().st_size} bytes)")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and PyTorch and request deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help="folder with train.tar/test.tar")
    p.add_argument("--epochs", type=int, default=20, help="training epochs (default: 20)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder for the model files")
    p.add_argument("--batch-size", type=int, default=128, help="mini-batch size (default: 128)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the OneCycle schedule")
    p.add_argument("--weight-decay", type=float, default=5e-4, help="SGD weight decay (default: 5e-4)")
    p.add_argument(
        "--export-only",
        action="store_true",
        help="skip training: reload the weights from <out>/cifar10_cnn.pt, re-export, re-verify",
    )
    p.add_argument(
        "--limit-batches", type=int, default=0, help="stop each epoch after this many batches (timing/debug)"
    )
    return p.parse_args(argv)


def reexport(args: argparse.Namespace, x_test: np.ndarray, y_test: np.ndarray) -> int:
    """Re-export the weights stored in ``<out>/cifar10_cnn.pt`` without training, then re-verify.

    The training fields of ``<out>/cifar10_cnn.train.json`` are kept; the export/verification fields
    are updated.
    """
    ts_path = args.out / "cifar10_cnn.pt"
    model = SmallCNN(len(CLASS_NAMES))
    model.load_state_dict(torch.jit.load(str(ts_path)).state_dict())
    model.eval()
    onnx_path, ts_path = export(model, args.out)
    max_diff, onnx_acc = verify(onnx_path, ts_path, x_test, y_test)
    report(onnx_path, ts_path, max_diff, onnx_acc, len(x_test))
    summary_path = args.out / "cifar10_cnn.train.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary.update(
        {
            "test_accuracy_onnx": round(onnx_acc, 4),
            "onnx_vs_torchscript_max_abs_diff": max_diff,
            "reexported_with_torch_version": torch.__version__,
        }
    )
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"updated {summary_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: load data, train, export, verify, write the training summary JSON."""
    args = parse_args(argv)
    torch.set_num_threads(NUM_THREADS)
    seed_everything(args.seed)
    t_start = time.perf_counter()

    t0 = time.perf_counter()
    x_test, y_test = load_tar(args.data_dir / "test.tar")
    if args.export_only:
        return reexport(args, x_test, y_test)
    x_train, y_train = load_tar(args.data_dir / "train.tar")
    print(
        f"decoded {len(x_train)} train / {len(x_test)} test images in {time.perf_counter() - t0:.1f}s",
        flush=True,
    )

    padded = np.pad(x_train, ((0, 0), (4, 4), (4, 4), (0, 0)), mode="constant")
    rng = np.random.default_rng(args.seed)
    # channels_last is ~25 % faster for these convolutions on CPU; the export uses the default layout.
    model = SmallCNN(len(CLASS_NAMES)).to(memory_format=torch.channels_last)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    if args.limit_batches:
        steps_per_epoch = min(steps_per_epoch, args.limit_batches)
    decay, no_decay = [], []
    for param in model.parameters():
        (no_decay if param.ndim <= 1 else decay).append(param)
    optimizer = torch.optim.SGD(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        momentum=0.9,
        nesterov=True,
    )
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss()

    t_train = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        model.train()
        t_ep = time.perf_counter()
        perm = rng.permutation(len(x_train))
        seen, loss_sum, correct = 0, 0.0, 0
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch_size : (step + 1) * args.batch_size]
            if len(idx) == 0:
                break
            x = normalize(augment(padded, idx, rng)).contiguous(memory_format=torch.channels_last)
            y = torch.from_numpy(y_train[idx])
            logits = model(x)
            loss = loss_fn(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            seen += len(idx)
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
        test_acc = evaluate(model, x_test, y_test)
        print(
            f"epoch {epoch:3d}/{args.epochs}  loss {loss_sum / seen:.4f}  train_acc {correct / seen:.4f}  "
            f"test_acc {test_acc:.4f}  lr {scheduler.get_last_lr()[0]:.4f}  "
            f"{time.perf_counter() - t_ep:.1f}s",
            flush=True,
        )
    train_seconds = time.perf_counter() - t_train
    model = model.to(memory_format=torch.contiguous_format)

    train_acc = evaluate(model, x_train, y_train)
    torch_test_acc = evaluate(model, x_test, y_test)
    onnx_path, ts_path = export(model, args.out)
    max_diff, onnx_acc = verify(onnx_path, ts_path, x_test, y_test)
    report(onnx_path, ts_path, max_diff, onnx_acc, len(x_test))

    summary = {
        "seed": args.seed,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_lr": args.lr,
        "weight_decay": args.weight_decay,
        "limit_batches": args.limit_batches,
        "train_wall_seconds": round(train_seconds, 1),
        "total_wall_seconds": round(time.perf_counter() - t_start, 1),
        "train_accuracy_no_aug": round(train_acc, 4),
        "test_accuracy_torch": round(torch_test_acc, 4),
        "test_accuracy_onnx": round(onnx_acc, 4),
        "onnx_vs_torchscript_max_abs_diff": max_diff,
        "num_threads": NUM_THREADS,
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
    }
    summary_path = args.out / "cifar10_cnn.train.json"
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {summary_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
