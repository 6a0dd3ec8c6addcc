"""kernelscope end to end on a GPU, each run against the same run on the CPU (issue 15, item 3).

    python bench/gpu.py [--json gpu.json]              # on a machine with CUDA: about 6 minutes
    python bench/gpu.py --device cpu --quick           # smoke run of this script on a CPU-only machine

Runs the command line as a user would, once with ``--device cuda`` (or ``--device``) and once with
``--device cpu``, each in its own process, and reads both JSON reports:

1. ``inspect`` of the example CIFAR-10 CNN on its 1,000 sample images with ``--attack pgd`` (exact scoring,
   the FGSM sweep and PGD through the mirror);
2. ``inspect`` of a 224-px ResNet-50 shape (``tests/imagenet_shapes.py``, seeded random weights, exported
   here) on 64 sample photos brought to 224 px by ``--resize 256 --crop 224`` (timing only: random weights);
3. ``neurons`` of the example CNN on 200 sample images;
4. ``harden --method jacobian --epochs 1`` of the example CNN (fine-tuning on the sample images).

For each: wall seconds on each device and their ratio; the devices each report names (a run asked for CUDA
must name it for both onnxruntime and torch: no silent CPU fallback); and whether the results agree across
devices (baseline accuracy, every kernel's accuracy, the attacks' accuracies or success rates), since
float32 kernels differ between devices only in the last bits. The table goes to the terminal and, with
``--json``, to a file (record it in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CNN = ROOT / "examples" / "models" / "cifar10_cnn.onnx"
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"
#: kernel accuracies and attack rates may differ across devices by this many images' worth (float32
#: kernels differ in the last bits, and an image on a decision boundary can go either way)
AGREE_IMAGES = 2


def _run(argv: list[str], out: Path) -> tuple[float, dict]:
    """Run ``python -m kernelscope ARGV --json OUT``; return its wall seconds and its JSON report."""
    out.unlink(missing_ok=True)  # the previous job's report must not pass for this one's
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "kernelscope", *argv, "--json", str(out), "--quiet", "--force"],
                          capture_output=True, text=True)  # fmt: skip
    seconds = time.perf_counter() - started
    # harden exits 1 when no candidate is confirmed: a result, with its report written
    if done.returncode not in ((0, 1) if argv[0] == "harden" else (0,)) or not out.exists():
        raise SystemExit(f"kernelscope {' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-400:]}")
    return seconds, json.loads(out.read_text())


def _figures(doc: dict) -> dict[str, float]:
    """The results to compare across devices, by name (accuracies and rates as fractions)."""
    found: dict[str, float] = {}
    for key in ("baseline_accuracy", "clean_accuracy"):
        if isinstance(doc.get(key), float):
            found[key] = doc[key]
    for kernel in doc.get("kernels") or []:
        found[f"kernel {kernel['index']} accuracy"] = kernel["accuracy"]
    for attack in ("fgsm", "pgd"):  # inspect's sweeps: lists of {epsilon, accuracy} (neurons' "pgd" is not one)
        rows = doc.get(attack)
        for row in rows if isinstance(rows, list) else []:
            found[f"{attack} accuracy at eps {row['epsilon']:g}"] = row["accuracy"]
    neurons = doc.get("neurons") or {}
    single = neurons.get("single_neuron_attack") or {}
    for k, rate in zip(single.get("k", []), single.get("success_rate", []), strict=True):
        found[f"single-neuron success, k={k}"] = rate
    if neurons.get("pgd"):
        found["neurons' PGD success"] = neurons["pgd"]["success_rate"]
    for side in ("before", "after"):
        measured = (doc.get("harden") or {}).get(side) or {}
        if measured:
            found[f"harden {side}: clean accuracy"] = measured["clean_accuracy"]
            for row in measured.get("fgsm") or []:
                found[f"harden {side}: fgsm accuracy at eps {row['epsilon']:g}"] = row["accuracy"]
    return found


def _compare(cpu: dict, other: dict, images: int) -> tuple[bool, str]:
    """Whether every shared figure agrees within :data:`AGREE_IMAGES` images, and the largest difference."""
    a, b = _figures(cpu), _figures(other)
    shared = sorted(set(a) & set(b))
    if not shared:
        return False, "no figures to compare"
    worst = max(shared, key=lambda k: abs(a[k] - b[k]))
    gap = abs(a[worst] - b[worst])
    return gap <= AGREE_IMAGES / images + 1e-12, f"{len(shared)} figures; largest gap {gap:.4f} ({worst})"


def _resnet50(folder: Path) -> tuple[Path, Path]:
    """The ResNet-50 shape written out, and a class-index file mapping the sample's folders to its outputs."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from imagenet_shapes import CIFAR10_AS_IMAGENET, export, resnet50

    torch.manual_seed(0)
    path, classes = folder / "resnet50_224.onnx", folder / "classes.json"
    export(resnet50(), path)
    classes.write_text(json.dumps(CIFAR10_AS_IMAGENET))
    return path, classes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="the device measured against the CPU (default cuda)")
    parser.add_argument("--quick", action="store_true", help="fewer images everywhere (a smoke run)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    n_cnn, n_224, n_neurons, n_harden = (100, 8, 20, 200) if args.quick else (1000, 64, 200, 1000)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        resnet50, classes = _resnet50(folder)
        jobs = [
            ("inspect CNN, --attack pgd", n_cnn,
             ["inspect", str(CNN), "--data", str(SAMPLE), "--limit", str(n_cnn), "--attack", "pgd"]),
            ("inspect ResNet-50 shape, 224 px", n_224,
             ["inspect", str(resnet50), "--data", str(SAMPLE), "--limit", str(n_224), "--resize", "256",
              "--crop", "224", "--preset", "imagenet", "--classes", str(classes), "--bootstrap", "0"]),
            ("neurons CNN", n_neurons, ["neurons", str(CNN), "--data", str(SAMPLE), "--limit", str(n_neurons)]),
            ("harden CNN, jacobian fine-tuning", n_harden,
             ["harden", str(CNN), "--data", str(SAMPLE), "--limit", str(n_harden), "--method", "jacobian",
              "--epochs", "1", "--train-data", str(SAMPLE), "-o", str(folder / "hardened.onnx")]),
        ]  # fmt: skip
        for label, images, argv in jobs:
            timed = {}
            for device in (args.device, "cpu"):
                seconds, doc = _run([*argv, "--device", device], folder / f"{device}.json")
                named = doc.get("devices") or {}
                if device != "cpu" and any(v not in (None, device) for v in named.values()):
                    raise SystemExit(f"{label}: asked for {device}, the report names {named}")
                timed[device] = (seconds, doc, named)
            agree, detail = _compare(timed["cpu"][1], timed[args.device][1], images)
            row = {
                "run": label,
                "images": images,
                f"{args.device}_seconds": round(timed[args.device][0], 2),
                "cpu_seconds": round(timed["cpu"][0], 2),
                "speedup": round(timed["cpu"][0] / timed[args.device][0], 2),
                "devices": timed[args.device][2],
                "results_agree": agree,
                "comparison": detail,
                "timings": timed[args.device][1].get("timings", {}),
            }
            rows.append(row)
            print(
                f"{label}: {args.device} {row[f'{args.device}_seconds']} s, cpu {row['cpu_seconds']} s "
                f"({row['speedup']}x); devices {row['devices']}; results {'agree' if agree else 'DIFFER'}: {detail}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["results_agree"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
