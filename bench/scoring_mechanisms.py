"""Exact first-layer scoring against its floor and the naive loop, per scoring mechanism, model by model.

    python bench/scoring_mechanisms.py                        # example CNN + the three ResNet-8, 1,000 images
    python bench/scoring_mechanisms.py --models resnet8_e10 --limit 500 --repeats 3
    python bench/scoring_mechanisms.py --models resnet18_224,mobilenetv2_224,resnet50_224 --limit 32

For each model, one onnxruntime thread everywhere, the same preprocessed images, runs alternating (so the
machine's drift hits every contender alike), best of ``--repeats``:

- **floor**: (C_out + 1) x N forward passes of the unmodified model in one session (batches of 128);
- **naive**: the paper's loop: per kernel, rewrite the model with the kernel's weights zeroed, build a new
  session, run the N images (plus the unmodified model once);
- **mask**: kernelscope with the kernel mask forced (one session, V variants per run);
- **sessions**: kernelscope with one session per variant forced (the model with the kernel's weights dropped);
- **auto**: kernelscope as it runs by default (it times both on a probe batch and keeps the cheaper).

The 224-px models (``*_224``) are built here with torch (torchvision's ResNet-18/-50 and MobileNetV2 shapes,
random weights, BatchNormalization folded by the inference-mode export), on random 224 x 224 images: timing
only, no accuracy is reported for them. Every contender's predictions are checked equal to the naive loop's.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from onnx import numpy_helper

from kernelscope.model.surgery.replace_weight import replace_conv_weight

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "cifar10-sample"
SMALL = ("cnn", "resnet8_e1", "resnet8_e5", "resnet8_e10")
LARGE = ("resnet18_224", "mobilenetv2_224", "resnet50_224")
BATCH = 128


def _model_path(name: str, folder: Path) -> Path:
    if name == "cnn":
        return ROOT / "examples" / "models" / "cifar10_cnn.onnx"
    if name.startswith("resnet8"):
        return ROOT / "examples" / "models" / f"cifar10_{name}.onnx"
    return _export_224(name, folder)


def _export_224(name: str, folder: Path) -> Path:
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from imagenet_shapes import export, mobilenet_v2, resnet18, resnet50

    build = {"resnet18_224": resnet18, "mobilenetv2_224": mobilenet_v2, "resnet50_224": resnet50}[name]
    torch.manual_seed(0)
    path = folder / f"{name}.onnx"
    export(build(), path)
    return path


def _inputs(path: Path, limit: int, folder: Path):
    from kernelscope.audit import InspectConfig, load_audit_inputs

    if "224" in path.name:
        rng = np.random.default_rng(0)
        data = folder / f"random224_{limit}.npz"
        if not data.exists():
            np.savez(data, x=rng.integers(0, 256, (limit, 224, 224, 3), dtype=np.uint8), y=rng.integers(0, 1000, limit))
        config = InspectConfig(
            data=str(data), limit=limit, bootstrap=0, mean="0.485,0.456,0.406", std="0.229,0.224,0.225", threads=1
        )
    else:
        config = InspectConfig(data=str(DATA), limit=limit, bootstrap=0, threads=1)
    return load_audit_inputs(path, config)


def _floor(inputs) -> tuple[float, np.ndarray]:
    from kernelscope.runtime import make_session

    session = make_session(inputs.batching.proto, ["CPUExecutionProvider"], 1)
    batches = [x for x, _ in inputs.data.batches(BATCH)]
    name, output = inputs.image_input, inputs.output.name
    session.run([output], {name: batches[0][:8]})
    started = time.perf_counter()
    for _ in range(inputs.layer.out_channels + 1):
        preds = np.concatenate([session.run([output], {name: x})[0].argmax(axis=1) for x in batches])
    return time.perf_counter() - started, preds


def _dropped(proto, layer, k: int):
    """The paper's variant, written independently of kernelscope's scorers: W[k] = 0 and b[k] = 0."""
    model = replace_conv_weight(
        proto, layer, np.where(np.arange(layer.out_channels)[:, None, None, None] == k, 0, layer.weight)
    )
    node = model.graph.node[layer.node_index]
    if len(node.input) > 2 and node.input[2]:
        bias = next(t for t in model.graph.initializer if t.name == node.input[2])
        values = numpy_helper.to_array(bias).copy()
        values[k] = 0
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    return model


def _naive(inputs) -> tuple[float, np.ndarray]:
    from kernelscope.runtime import make_session

    layer, name, output = inputs.layer, inputs.image_input, inputs.output.name
    batches = [x for x, _ in inputs.data.batches(BATCH)]
    started = time.perf_counter()
    rows = []
    for k in range(-1, layer.out_channels):
        proto = inputs.batching.proto if k < 0 else _dropped(inputs.batching.proto, layer, k)
        session = make_session(proto, ["CPUExecutionProvider"], 1)
        rows.append(np.concatenate([session.run([output], {name: x})[0].argmax(axis=1) for x in batches]))
    return time.perf_counter() - started, np.stack(rows)


def _kernelscope(inputs, mechanism: str | None) -> tuple[float, np.ndarray, str]:
    from kernelscope.scoring import KernelDropRunner, drop_masks, predict_variants

    runner = KernelDropRunner(
        inputs.model.proto, inputs.layer, inputs.image_input, inputs.output.name, threads=1,
        providers=["CPUExecutionProvider"], batching=inputs.batching,
    )  # fmt: skip
    started = time.perf_counter()
    if mechanism is not None:
        runner.use_mechanism(mechanism)
    preds, plan = predict_variants(runner, inputs.data, drop_masks(inputs.layer.out_channels), batch_size=BATCH)
    return time.perf_counter() - started, preds, plan.mechanism_note or plan.mechanism


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SMALL))
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            path = _model_path(name, folder)
            inputs = _inputs(path, args.limit, folder)
            times: dict[str, list[float]] = {}
            notes: dict[str, str] = {}
            naive_preds = None
            for _ in range(args.repeats):
                seconds, floor_preds = _floor(inputs)
                times.setdefault("floor", []).append(seconds)
                seconds, naive_preds = _naive(inputs)
                times.setdefault("naive", []).append(seconds)
                if not np.array_equal(naive_preds[0], floor_preds):
                    raise SystemExit(f"{name}: the naive loop's baseline differs from the floor's predictions")
                for label, mechanism in (("mask", "mask"), ("sessions", "sessions"), ("auto", None)):
                    seconds, preds, notes[label] = _kernelscope(inputs, mechanism)
                    times.setdefault(label, []).append(seconds)
                    if not np.array_equal(preds, naive_preds):
                        changed = int(np.count_nonzero(preds != naive_preds))
                        print(f"  {name} {label}: {changed} predictions differ from the naive loop's")
            best = {k: min(v) for k, v in times.items()}
            row = {
                "kernels": inputs.layer.out_channels,
                "images": len(inputs.data),
                "seconds": best,
                "vs_floor": {k: v / best["floor"] for k, v in best.items()},
                "naive_vs_auto": best["naive"] / best["auto"],
                "auto_chose": notes["auto"],
            }
            results[name] = row
            print(
                f"{name}: {row['kernels']} kernels x {row['images']} images; "
                + ", ".join(f"{k} {v:.2f} s ({row['vs_floor'][k]:.3f}x floor)" for k, v in best.items())
                + f"; naive / auto {row['naive_vs_auto']:.2f}; auto: {notes['auto']}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
