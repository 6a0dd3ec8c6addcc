"""``inspect --layers all`` on the reference ResNet-8: wall time against the floor, and the Ray backend.

    python bench/layers_backends.py [--limit 1000] [--skip-ray] [--json out.json]

Measures, on the shipped CIFAR-10 sample (``examples/data/cifar10-sample``):

1. exact scoring of every Conv (``--layers all``, local backend) against its floor: for each layer,
   (C_out + 1) plain onnxruntime forward passes of the unmodified model over the N images, in one session
   with the same threads; and the same for ``--method hybrid``;
2. the Ray backend against the local one at the same total cores: local with 2 onnxruntime threads vs a
   local Ray with 2 one-CPU workers (scoring only, the Ray start-up reported apart), and 1 vs 2 Ray workers;
3. a scaling model for W workers from the measured per-task cost: t(W) = driver part + tasks x task cost / W.

Scoring alone is timed (the data load, the mirror check and the attack are the same for every backend).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

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
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from kernelscope.backends.local import LocalBackend
    from kernelscope.model.first_conv import select_convs

    inputs = _inputs(args.limit)
    layers = select_convs(inputs.model.proto, inputs.image_input, "all").layers
    n = len(inputs.data)
    kernels = sum(layer.out_channels for layer in layers)
    results: dict = {"model": str(MODEL.relative_to(ROOT)), "images": n, "layers": len(layers), "kernels": kernels}
    print(f"{MODEL.name}: {len(layers)} layers, {kernels} kernels, {n} images")

    floor2 = _floor(inputs, layers, threads=2)
    exact_s, exact = _score_all(inputs, layers, "exact", LocalBackend(), threads=2)
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
        import ray

        from kernelscope.backends.ray import RayBackend

        for workers in (2, 1):
            started = time.perf_counter()
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
            backend = RayBackend(None, threads=1)
            startup = time.perf_counter() - started
            seconds, audits = _score_all(inputs, layers, "exact", backend, threads=1)
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
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
