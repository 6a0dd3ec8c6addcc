"""``inspect --layers all`` on the reference ResNet-8: wall time against the floor, and the Ray backend.

    python bench/layers_backends.py [--limit 1000] [--skip-ray] [--json out.json]

Measures, on the shipped CIFAR-10 sample (``examples/data/cifar10-sample``):

1. exact scoring of every Conv (``--layers all``, local backend) against its floor: for each layer,
   (C_out + 1) plain onnxruntime forward passes of the unmodified model over the N images, in one session
   with the same threads; and the same for ``--method hybrid``;
2. the Ray backend against the local one at the same total cores: local with 2 onnxruntime threads vs a
   local Ray with 2 one-CPU workers (scoring only, the Ray start-up reported apart), and 1 vs 2 Ray workers;
3. a scaling model for W workers from the measured per-task cost: t(W) = driver part + tasks x task cost / W;
4. with ``--resnet50``: the forward cost of a ResNet-50-shaped network at 224 px (random weights, built here
   with torch, bottleneck blocks 3-4-6-3), one thread, to project a full ``--layers all`` scan of ResNet-50 on
   10,000 images onto 1, 8 and 64 one-CPU workers.

Scoring alone is timed (the data load, the mirror check and the attack are the same for every backend).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "cifar10_resnet8_e10.onnx"
DATA = ROOT / "examples" / "data" / "cifar10-sample"


def _inputs(limit: int):
    from kernelscope.audit import InspectConfig, load_audit_inputs

    config = InspectConfig(data=str(DATA), limit=limit, bootstrap=0)
    return load_audit_inputs(MODEL, config)


def _floor(inputs, layers, threads: int, batch_size: int = 128) -> float:
    """Σ over layers of (C_out + 1) forward passes of the unmodified model over every image (seconds)."""
    from kernelscope.runtime import make_session

    session = make_session(inputs.batching.proto, None, threads)
    name, output = inputs.image_input, inputs.output.name
    batches = [x for x, _ in inputs.data.batches(batch_size)]
    session.run([output], {name: batches[0]})  # warm-up
    started = time.perf_counter()
    for x in batches:
        session.run([output], {name: x})
    one_pass = time.perf_counter() - started
    return one_pass * sum(layer.out_channels + 1 for layer in layers)


def _score_all(inputs, layers, method: str, backend, threads: int) -> tuple[float, list]:
    from kernelscope.layers import score_layer
    from kernelscope.scoring import KernelDropRunner

    started = time.perf_counter()
    audits = []
    for layer in layers:
        runner = KernelDropRunner(
            inputs.model.proto, layer, inputs.image_input, inputs.output.name, threads=threads,
            batching=inputs.batching,
        )  # fmt: skip
        audit = score_layer(
            runner, inputs.data, method=method, compare_exact=False, batch_size=128, run_size=1024, seed=0,
            bootstrap=0, loss="cross_entropy", backend=backend, progress=_quiet(),
        )  # fmt: skip
        audits.append(audit)
    return time.perf_counter() - started, audits


def _quiet():
    from kernelscope.progress import NO_PROGRESS

    return NO_PROGRESS


def _predictions(audits) -> list:
    return [[k.accuracy for k in a.scoring.kernels] for a in audits if a.scoring is not None]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument("--ray-only", action="store_true", help="local exact scoring and the Ray runs only")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--resnet50", action="store_true", help="also project a ResNet-50 224-px scan")
    args = parser.parse_args()

    from kernelscope.backends.local import LocalBackend
    from kernelscope.model.first_conv import select_convs

    inputs = _inputs(args.limit)
    layers = select_convs(inputs.model.proto, inputs.image_input, "all").layers
    n = len(inputs.data)
    kernels = sum(layer.out_channels for layer in layers)
    results: dict = {"model": str(MODEL.relative_to(ROOT)), "images": n, "layers": len(layers), "kernels": kernels}
    print(f"{MODEL.name}: {len(layers)} layers, {kernels} kernels, {n} images")

    exact_s, exact = _score_all(inputs, layers, "exact", LocalBackend(), threads=2)
    results["exact_seconds_local_2_threads"] = exact_s
    if args.ray_only:
        _ray_part(inputs, layers, exact, exact_s, results)
        _write(args, results)
        return 0
    floor2 = _floor(inputs, layers, threads=2)
    hybrid_s, hybrid = _score_all(inputs, layers, "hybrid", LocalBackend(), threads=2)
    scored = sum(len(a.fast.exact_kernels) for a in hybrid)
    results |= {
        "floor_seconds_2_threads": floor2,
        "exact_seconds_local_2_threads": exact_s,
        "exact_ratio_to_floor": exact_s / floor2,
        "hybrid_seconds_local_2_threads": hybrid_s,
        "hybrid_ratio_to_floor": hybrid_s / floor2,
        "hybrid_exactly_scored_kernels": scored,
    }
    print(f"floor (Σ (C_out+1) forwards, 2 threads): {floor2:.1f} s")
    print(f"exact, local, 2 threads: {exact_s:.1f} s = {exact_s / floor2:.2f}x floor")
    print(f"hybrid, local, 2 threads: {hybrid_s:.1f} s = {hybrid_s / floor2:.2f}x floor ({scored}/{kernels} exact)")

    if not args.skip_ray:
        _ray_part(inputs, layers, exact, exact_s, results)
    if args.resnet50:
        results["resnet50"] = _resnet50_projection()
    _write(args, results)
    return 0


def _write(args, results: dict) -> None:
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _ray_part(inputs, layers, exact, exact_s: float, results: dict) -> None:
    """Ray with 2 and 1 one-CPU workers against the local figure ``exact_s``."""
    import ray

    from kernelscope.backends.ray import RayBackend

    for workers in (2, 1):
        started = time.perf_counter()
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        backend = RayBackend(None, threads=1)
        startup = time.perf_counter() - started
        # The driver's own runs (the first task of each shape) use both cores, as in the CLI.
        seconds, audits = _score_all(inputs, layers, "exact", backend, threads=2)
        same = _predictions(audits) == _predictions(exact)
        results[f"ray_{workers}_workers"] = {
            "startup_seconds": startup, "scoring_seconds": seconds, "remote_tasks": backend.remote_tasks,
            "same_scores_as_local": same,
        }  # fmt: skip
        print(
            f"ray, {workers} worker(s) x 1 thread: start-up {startup:.1f} s, scoring {seconds:.1f} s, "
            f"{backend.remote_tasks} remote tasks, same scores as local: {same}"
        )
        ray.shutdown()
    two, one = results["ray_2_workers"], results["ray_1_workers"]
    overhead = two["scoring_seconds"] / exact_s - 1
    task = one["scoring_seconds"] / max(one["remote_tasks"], 1)  # one worker: seconds per task, serial
    results |= {"ray_overhead_vs_local_same_cores": overhead, "seconds_per_task_one_worker": task}
    print(f"Ray (2 workers) vs local (2 threads), scoring: {overhead:+.1%}")
    print(f"1 -> 2 workers: {one['scoring_seconds'] / two['scoring_seconds']:.2f}x faster")
    print(f"measured cost per task (1 worker): {task * 1000:.0f} ms")


def _resnet50_projection(images: int = 10_000, batch: int = 8) -> dict:
    """Seconds per 224-px image of a ResNet-50-shaped network (1 onnxruntime thread) and the projected scan."""
    import io

    import onnx
    import torch

    from kernelscope.model.first_conv import select_convs
    from kernelscope.runtime import make_session

    net = _resnet50().eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 3, 224, 224),), buffer, dynamo=False, opset_version=17, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    layers = select_convs(proto, "input", "all").layers
    kernels = sum(layer.out_channels for layer in layers)
    session = make_session(proto, None, 1)
    x = np.random.default_rng(0).uniform(size=(batch, 3, 224, 224)).astype(np.float32)
    session.run(None, {"input": x})
    started = time.perf_counter()
    session.run(None, {"input": x})
    per_image = (time.perf_counter() - started) / batch
    # Upper bound: every variant a full forward (forking at a block's input saves the part before it).
    core_seconds = (kernels + len(layers)) * images * per_image
    projection = {
        "layers": len(layers), "kernels": kernels, "seconds_per_image_1_thread": per_image, "images": images,
        "core_seconds_upper_bound": core_seconds,
        "days_on_workers": {str(w): core_seconds / w / 86400 for w in (1, 8, 64)},
    }  # fmt: skip
    print(
        f"ResNet-50-shaped, 224 px: {len(layers)} convs, {kernels} kernels, {per_image * 1000:.0f} ms/image on 1 "
        f"thread; a full scan of {images} images <= {core_seconds / 86400:.0f} core-days: "
        + ", ".join(f"{w} workers {d:.1f} days" for w, d in projection["days_on_workers"].items())
    )
    return projection


def _resnet50():
    """torchvision's ResNet-50 shape (bottlenecks 3-4-6-3, widths 64-128-256-512), from tests/imagenet_shapes.py."""
    sys.path.insert(0, str(ROOT / "tests"))
    from imagenet_shapes import resnet50

    return resnet50()


if __name__ == "__main__":
    sys.exit(main())
