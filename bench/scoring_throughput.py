"""Scoring throughput next to plain onnxruntime forward throughput of the same model, on the same machine.

    python bench/scoring_throughput.py [--model examples/models/cifar10_cnn.onnx] [--data DATA] [--limit N]

Prints (C_out + 1) x N kernel-variant evaluations per second for kernelscope's exact scorer, and images per
second for plain forward passes of the unmodified model (the floor: scoring needs (C_out + 1) x N of them).
The ratio floor_time / scoring_time > 1 means kernelscope beats the naive floor (it shares the first
convolution across variants). Data defaults to the shipped CIFAR-10 sample.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from kernelscope.audit import InspectConfig, inspect_model

ROOT = Path(__file__).resolve().parents[1]


def plain_forward_seconds(model_path: Path, x: np.ndarray, batch_size: int, input_name: str, repeats: int) -> float:
    """Best-of-``repeats`` seconds for one pass of plain onnxruntime over ``x`` in batches."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    session.run(None, {input_name: x[:batch_size]})  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for i in range(0, len(x), batch_size):
            session.run(None, {input_name: x[i : i + batch_size]})
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "examples/models/cifar10_cnn.onnx")
    parser.add_argument("--data", default=str(ROOT / "examples/data/cifar10-sample"))
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    config = InspectConfig(data=args.data, limit=args.limit, batch_size=args.batch_size, bootstrap=0)
    inspect_model(args.model, InspectConfig(data=args.data, limit=64, bootstrap=0))  # warm caches and imports
    report = inspect_model(args.model, config)
    scoring = report.scoring
    variants = len(scoring.kernels) + 1
    n = scoring.n_images

    # The same preprocessed images, fed to the unmodified model.
    from kernelscope.data import load_dataset
    from kernelscope.data.preprocessing import select_examples

    dataset = select_examples(load_dataset(args.data), args.limit, 0)
    x = report.data.preprocessing.to_model_input(dataset.images)
    once = plain_forward_seconds(args.model, x, args.batch_size, report.model.input.name, repeats=3)
    floor = once * variants
    result = {
        "model": str(args.model),
        "kernels": len(scoring.kernels),
        "images": n,
        "scoring_seconds": scoring.seconds,
        "scoring_variant_images_per_second": variants * n / scoring.seconds,
        "plain_forward_images_per_second": n / once,
        "floor_seconds": floor,
        "scoring_vs_floor": scoring.seconds / floor,
        "variants_per_run": scoring.plan.variants_per_run,
        "images_per_run": scoring.plan.images_per_run,
        "machine": f"{platform.processor() or platform.machine()}, {ort.get_device()} onnxruntime {ort.__version__}",
    }
    for key, value in result.items():
        print(f"{key:38s} {value:,.3f}" if isinstance(value, float) else f"{key:38s} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
