"""Mirror speed vs native torch, and the cost of an FGSM sweep vs its floor, on the example model.

    python bench/attack_cost.py [--images 1000] [--json PATH]

- mirror forward (and forward+backward) throughput vs the TorchScript twin of the same weights;
- input-gradient cosine similarity between the mirror and the twin;
- a full ε sweep (kernelscope's FGSM with targeting) vs its floor: one mirror forward+backward per image
  plus E plain onnxruntime forwards per image.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import onnxruntime as ort
import torch

from kernelscope.attacks.fgsm import default_epsilons
from kernelscope.audit import InspectConfig, inspect_model
from kernelscope.data import load_dataset
from kernelscope.data.preprocessing import select_examples
from kernelscope.mirror import OnnxMirror
from kernelscope.model.loading import load_model

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples/models/cifar10_cnn.onnx"
TWIN = ROOT / "examples/models/cifar10_cnn.pt"
SAMPLE = ROOT / "examples/data/cifar10-sample"


def best_of(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    report = inspect_model(MODEL, InspectConfig(data=str(SAMPLE), limit=args.images, bootstrap=0))
    pre = report.data.preprocessing
    x = pre.to_model_input(select_examples(load_dataset(str(SAMPLE)), args.images, 0).images)
    batches = [torch.from_numpy(x[i : i + args.batch_size]) for i in range(0, len(x), args.batch_size)]
    mirror = OnnxMirror(load_model(MODEL).proto).eval()
    twin = torch.jit.load(str(TWIN), map_location="cpu").eval()

    def forward(module):
        with torch.no_grad():
            for b in batches:
                module(b)

    def forward_backward(module):
        for b in batches:
            b = b.clone().requires_grad_(True)
            module(b).logsumexp(1).sum().backward()

    results = {
        "images": len(x),
        "torch_threads": torch.get_num_threads(),
        "mirror_forward_images_per_second": len(x) / best_of(lambda: forward(mirror)),
        "native_forward_images_per_second": len(x) / best_of(lambda: forward(twin)),
        "mirror_forward_backward_images_per_second": len(x) / best_of(lambda: forward_backward(mirror)),
        "native_forward_backward_images_per_second": len(x) / best_of(lambda: forward_backward(twin)),
    }
    results["mirror_vs_native_forward"] = (
        results["mirror_forward_images_per_second"] / results["native_forward_images_per_second"]
    )
    probe = torch.from_numpy(x[:64])
    grads = []
    for module in (mirror, twin):
        p = probe.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(module(p), torch.zeros(64, dtype=torch.long)).backward()
        grads.append(p.grad.flatten().double())
    results["grad_cosine"] = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))

    # Sweep vs its floor: one mirror forward+backward per image + E plain onnxruntime forwards per image.
    epsilons = default_epsilons("cifar10", "lin")
    full = inspect_model(MODEL, InspectConfig(data=str(SAMPLE), limit=args.images, bootstrap=0))
    sweep = full.attack.sweep
    session = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    plain = best_of(
        lambda: [session.run(None, {"input": x[i : i + args.batch_size]}) for i in range(0, len(x), args.batch_size)]
    )
    floor = len(x) / results["mirror_forward_backward_images_per_second"] + len(epsilons) * plain
    results.update(
        {
            "epsilons": len(epsilons),
            "sweep_seconds": sweep.seconds_gradient + sweep.seconds_evaluation,
            "sweep_gradient_seconds": sweep.seconds_gradient,
            "sweep_evaluation_seconds": sweep.seconds_evaluation,
            "sweep_floor_seconds": floor,
            "sweep_vs_floor": (sweep.seconds_gradient + sweep.seconds_evaluation) / floor,
        }
    )
    for key, value in results.items():
        print(f"{key:44s} {value:,.4f}" if isinstance(value, float) else f"{key:44s} {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
