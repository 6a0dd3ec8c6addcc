"""kernelscope's performance, side by side with the baselines it replaces, in ONE run on one machine.

    python bench/run.py [--json b.json] [--quick]

Models: the example CIFAR-10 CNN (32 first-layer kernels) and a CIFAR-style ResNet-18 (64 first-layer
kernels, random seeded weights: fine for timing). Images: real CIFAR-10 test images from
../shared/data/cifar10-jpg/test.tar when present, synthetic ones otherwise (the JSON says which).

Keys (ratios > 1 mean kernelscope is faster, unless stated):
- scoring_vs_floor: exact scoring time / time of (C_out + 1) x N plain onnxruntime forwards (goal <= 1.15)
- scoring_speedup_vs_rebuild: a new model and a new session per dropped kernel (the paper's loop) / ours (goal >= 3)
- fgsm_speedup_vs_per_eps: a gradient recomputed for each of E = 8 epsilons (one attack call per ε, as ART and
  torchattacks are used) / our sweep with one gradient per image (goal >= 3)
- mirror_vs_native: mirror forward throughput / native eager torch throughput (goal >= 0.8);
  mirror_grad_cosine: cosine of the input gradients (goal >= 0.9999)
- taylor_speedup, taylor_spearman, taylor_split_agreement: --method taylor vs exact on the example model
- peak_rss_mb: peak resident memory of a full `kernelscope inspect` on 10,000 images
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from kernelscope.attacks.gradients import InputGradient
from kernelscope.attacks.sweep import fgsm_sweep
from kernelscope.audit import InspectConfig, load_audit_inputs
from kernelscope.data import ImageDataset
from kernelscope.data.preprocessing import PreparedData
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.fast_scoring import fast_score, with_agreement
from kernelscope.mirror import OnnxMirror
from kernelscope.scoring import KernelDropRunner, score_kernels

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "models" / "cifar10_cnn.onnx"
TWIN = ROOT / "examples" / "models" / "cifar10_cnn.pt"
REAL = ROOT.parent / "shared" / "data" / "cifar10-jpg" / "test.tar"
EPSILONS = [0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.03]  # E = 8


def resnet18(num_classes: int = 10) -> torch.nn.Module:
    """CIFAR-style ResNet-18 (3x3 stem with 64 kernels, no max-pool), written here: torchvision is not used."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.skip = (
                nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                if stride != 1 or cin != cout
                else nn.Identity()
            )

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))

    layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    cin = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def export(module: torch.nn.Module, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17, input_names=["input"],
            output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip


def example_native() -> torch.nn.Module:
    """The example CNN as an eager torch module (the training script's class, weights from the TorchScript twin)."""
    spec = importlib.util.spec_from_file_location("train_example", ROOT / "examples" / "train_cifar10_cnn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.SmallCNN()
    net.load_state_dict(torch.jit.load(str(TWIN), map_location="cpu").state_dict())
    return net.eval()


def images(n: int, seed: int = 0) -> tuple[ImageDataset, str]:
    """n CIFAR-10 test images (real when ../shared has them), as a dataset."""
    if REAL.exists():
        from kernelscope.data import load_dataset
        from kernelscope.data.preprocessing import select_examples

        return select_examples(load_dataset(str(REAL)), n, seed), f"real CIFAR-10 test images ({REAL})"
    rng = np.random.default_rng(seed)
    synthetic = ImageDataset(
        "synthetic", rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n), "synthetic", 10
    )
    return synthetic, "synthetic images (../shared/data not found)"


def timed(fn) -> tuple[float, object]:
    started = time.perf_counter()
    value = fn()
    return time.perf_counter() - started, value


def plain_forward_seconds(path: Path, x: np.ndarray, batch: int) -> float:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    session.run(None, {"input": x[:batch]})
    seconds, _ = timed(lambda: [session.run(None, {"input": x[i : i + batch]}) for i in range(0, len(x), batch)])
    return seconds


def rebuild_seconds(path: Path, x: np.ndarray, batch: int, kernels: list[int]) -> float:
    """The paper's loop: for each kernel, edit the weights, build a new model and session, run all images."""
    proto = onnx.load(str(path))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    started = time.perf_counter()
    for k in kernels:
        edited = onnx.ModelProto()
        edited.CopyFrom(proto)
        for tensor in edited.graph.initializer:
            if tensor.name in conv.input[1:3]:
                values = numpy_helper.to_array(tensor).copy()
                values[k] = 0
                tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(edited.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for i in range(0, len(x), batch):
            session.run(None, {"input": x[i : i + batch]})
    return time.perf_counter() - started


def scoring_figures(path: Path, dataset: ImageDataset, batch: int, rebuild_kernels: int | None) -> dict:
    config = InspectConfig(data="unused", batch_size=batch, bootstrap=0)
    inputs = _inputs(path, dataset, config)
    runner = KernelDropRunner(inputs.model.proto, inputs.layer, "input", "logits", batching=inputs.batching)
    score_kernels(
        runner,
        PreparedData(inputs.data.dataset.subset(np.arange(min(64, len(dataset)))), inputs.data.preprocessing),
        bootstrap=0,
    )
    exact_s, scoring = timed(lambda: score_kernels(runner, inputs.data, batch_size=batch, bootstrap=0))
    x = inputs.data.preprocessing.to_model_input(inputs.data.dataset.images)
    channels = inputs.layer.out_channels
    floor = plain_forward_seconds(path, x, batch) * (channels + 1)
    kernels = list(range(channels)) if rebuild_kernels is None else list(range(rebuild_kernels))
    rebuild = rebuild_seconds(path, x, batch, kernels) * (channels + 1) / len(kernels)
    return {
        "kernels": channels,
        "images": len(x),
        "exact_seconds": exact_s,
        "floor_seconds": floor,
        "rebuild_seconds": rebuild,
        "rebuild_kernels_measured": len(kernels),
        "scoring_vs_floor": exact_s / floor,
        "scoring_speedup_vs_rebuild": rebuild / exact_s,
        "inputs": inputs,
        "runner": runner,
        "scoring": scoring,
    }


def _inputs(path: Path, dataset: ImageDataset, config: InspectConfig):
    """load_audit_inputs on an in-memory data set (written to a temporary .npz)."""
    folder = Path(tempfile.mkdtemp(prefix="ks-bench-"))
    npz = folder / "data.npz"
    np.savez(npz, x=dataset.images, y=dataset.labels)
    from dataclasses import replace

    inputs = load_audit_inputs(path, replace(config, data=str(npz)))
    return inputs


def fgsm_figures(inputs, module: torch.nn.Module, batch: int) -> dict:
    data = inputs.data
    evaluator = OnnxEvaluator(inputs.batching, "input", "logits")
    gradient = InputGradient(module, data.preprocessing)
    ours, _ = timed(lambda: fgsm_sweep(gradient, evaluator, data, EPSILONS, fragile=[0], null=[1], batch_size=batch))

    def per_epsilon():
        # One attack call per ε, each recomputing the gradient (what looping an attack library over ε does).
        for epsilon in EPSILONS:
            fgsm_sweep(gradient, evaluator, data, [epsilon], fragile=[0], null=[1], batch_size=batch)

    baseline, _ = timed(per_epsilon)
    return {
        "epsilons": len(EPSILONS),
        "sweep_seconds": ours,
        "per_eps_seconds": baseline,
        "fgsm_speedup_vs_per_eps": baseline / ours,
    }


def mirror_figures(proto: onnx.ModelProto, native: torch.nn.Module, x: np.ndarray, batch: int) -> dict:
    mirror = OnnxMirror(proto).eval()
    batches = [torch.from_numpy(x[i : i + batch]) for i in range(0, len(x), batch)]

    def forward(module):
        with torch.no_grad():
            for b in batches:
                module(b)

    forward(mirror), forward(native)  # warm-up
    mirror_s, _ = timed(lambda: forward(mirror))
    native_s, _ = timed(lambda: forward(native))
    grads = []
    probe = torch.from_numpy(x[:32])
    for module in (mirror, native):
        p = probe.clone().requires_grad_(True)
        torch.nn.functional.cross_entropy(module(p), torch.arange(32) % 10).backward()
        grads.append(p.grad.flatten().double())
    cosine = float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0))
    return {
        "mirror_images_per_second": len(x) / mirror_s,
        "native_images_per_second": len(x) / native_s,
        "mirror_vs_native": native_s / mirror_s,
        "mirror_grad_cosine": cosine,
    }


def peak_rss_mb(data_spec: str) -> float:
    """Peak RSS (MB) of a full `kernelscope inspect` (kernel scores + default FGSM sweep), measured by the child
    process itself so nothing else that ran (or runs) here is counted."""
    with tempfile.TemporaryDirectory() as folder:
        argv = ["inspect", str(EXAMPLE), "--data", data_spec, "--json", str(Path(folder) / "r.json"), "-q"]
        code = (
            "import resource, sys\n"
            "from kernelscope.cli.app import main\n"
            f"code = main({argv!r})\n"
            # VmHWM belongs to this program's own address space; ru_maxrss would also count the parent's
            # pages the child had right after fork, before exec.
            "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
            "print(int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "sys.exit(code)\n"
        )
        done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quick", action="store_true", help="fewer images (a smoke run, not for the record)")
    args = parser.parse_args()
    n_small, n_resnet, n_rss = (200, 32, 1000) if args.quick else (2000, 128, 10000)
    started = time.perf_counter()
    results: dict = {
        "machine": f"{platform.machine()}, {platform.system()}, torch {torch.__version__} ({torch.get_num_threads()} "
        f"threads), onnxruntime {ort.__version__} {ort.get_device()}",
    }

    dataset, source = images(n_small)
    results["data"] = source
    small = scoring_figures(EXAMPLE, dataset, 128, None)
    native_small = example_native()
    x_small = small["inputs"].data.preprocessing.to_model_input(small["inputs"].data.dataset.images)
    results["example"] = {k: v for k, v in small.items() if k not in ("inputs", "runner", "scoring")}
    results["example"] |= fgsm_figures(small["inputs"], OnnxMirror(small["inputs"].model.proto).eval(), 128)
    results["example"] |= mirror_figures(small["inputs"].model.proto, native_small, x_small[:1000], 128)
    taylor_s, taylor = timed(lambda: fast_score("taylor", small["runner"], small["inputs"].data))
    agreement = with_agreement(
        taylor, [k.accuracy for k in small["scoring"].kernels], small["scoring"].fragile
    ).agreement
    results["example"] |= {
        "taylor_seconds": taylor_s,
        "taylor_speedup": small["exact_seconds"] / taylor_s,
        "taylor_spearman": agreement.spearman,
        "taylor_split_agreement": agreement.split_agreement,
    }

    with tempfile.TemporaryDirectory() as folder:
        torch.manual_seed(0)
        net = resnet18().eval()
        path = Path(folder) / "resnet18.onnx"
        export(net, path)
        resnet_data, _ = images(n_resnet, seed=1)
        big = scoring_figures(path, resnet_data, 64, 8)
        results["resnet18"] = {k: v for k, v in big.items() if k not in ("inputs", "runner", "scoring")}
        results["resnet18"] |= fgsm_figures(big["inputs"], OnnxMirror(big["inputs"].model.proto).eval(), 64)
        x_big = big["inputs"].data.preprocessing.to_model_input(big["inputs"].data.dataset.images)
        results["resnet18"] |= mirror_figures(big["inputs"].model.proto, net, x_big, 64)

    rss_spec = str(REAL) if REAL.exists() else None
    if rss_spec is None or args.quick:
        rss_data, _ = images(n_rss, seed=2)
        folder = Path(tempfile.mkdtemp(prefix="ks-bench-rss-"))
        np.savez(folder / "d.npz", x=rss_data.images, y=rss_data.labels)
        rss_spec = str(folder / "d.npz")
    results["peak_rss_mb"] = peak_rss_mb(rss_spec)
    results["peak_rss_images"] = n_rss

    # Headline keys: the example model's figures, and the ResNet-18's where it is the harder case.
    for key in ("scoring_vs_floor", "scoring_speedup_vs_rebuild", "fgsm_speedup_vs_per_eps", "mirror_vs_native",
                "mirror_grad_cosine", "taylor_speedup", "taylor_spearman", "taylor_split_agreement"):  # fmt: skip
        results[key] = results["example"][key]
    results["resnet18_scoring_vs_floor"] = results["resnet18"]["scoring_vs_floor"]
    results["resnet18_mirror_vs_native"] = results["resnet18"]["mirror_vs_native"]
    results["wall_seconds"] = time.perf_counter() - started

    goals = {
        "scoring_vs_floor": ("<=", 1.15), "resnet18_scoring_vs_floor": ("<=", 1.15),
        "scoring_speedup_vs_rebuild": (">=", 3), "fgsm_speedup_vs_per_eps": (">=", 3),
        "mirror_vs_native": (">=", 0.8), "resnet18_mirror_vs_native": (">=", 0.8),
        "mirror_grad_cosine": (">=", 0.9999), "taylor_speedup": (">=", 10), "taylor_spearman": (">=", 0.9),
    }  # fmt: skip
    print(f"{'figure':32s} {'value':>12s}  goal")
    for key, (op, goal) in goals.items():
        value = results[key]
        met = value <= goal if op == "<=" else value >= goal
        print(f"{key:32s} {value:12.4f}  {op} {goal}  {'met' if met else 'MISSED'}")
    for key in ("taylor_split_agreement", "peak_rss_mb", "wall_seconds"):
        print(f"{key:32s} {results[key]:12.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
