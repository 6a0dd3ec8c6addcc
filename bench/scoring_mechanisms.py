"""Exact first-layer scoring against its floor and the naive loop, per scoring mechanism, model by model.

    python bench/scoring_mechanisms.py                        # example CNN + the three ResNet-8, 1,000 images
    python bench/scoring_mechanisms.py --models resnet8_e10 --limit 500
    python bench/scoring_mechanisms.py --models resnet18_224,mobilenetv2_224,resnet50_224 --limit 64
    python bench/scoring_mechanisms.py --models stem224 --limit 200   # the trained 224-px example
    python bench/scoring_mechanisms.py --models resnet50_224 --limit 500 --variants 8   # 8 of 65 timed, scaled

For each model, one onnxruntime thread everywhere, the same preprocessed images, the contenders interleaved
variant group by variant group (the order rotating), so the machine's drift hits them alike:

- **floor**: (C_out + 1) x N forward passes of the unmodified model in one session (batches of 128);
- **naive**: the paper's loop: per kernel, rewrite the model with the kernel's weights zeroed, build a new
  session, run the N images (plus the unmodified model once);
- **mask**: kernelscope with the kernel mask forced (one session, V variants per run);
- **sessions**: kernelscope with one session per variant forced (the model with the kernel's weights dropped);
- **auto**: kernelscope as it runs by default: it times both on a probe batch and keeps the cheaper; its
  cost is the chosen mechanism's plus the probe's.

``stem224`` is the trained 224-px example (examples/models/cifar10_stem224.onnx) on the sample photos brought
to 224 px by ``--resize 256 --crop 224``, as it was trained. The other 224-px models (``*_224``) are built
here with torch (torchvision's ResNet-18/-50 and MobileNetV2 shapes, random weights, BatchNormalization folded
by the inference-mode export), on random 224 x 224 images: timing only, no accuracy is reported for them.
Every contender's predictions are checked equal to the naive loop's.

``--variants V`` times only the first variant groups covering V variants (the baseline first) and scales each
contender's time to all C_out + 1 (every variant costs the same in each mechanism: the same network, one kernel
dropped); auto's probe runs once per job and is added unscaled. For models whose full job takes hours here.
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
from kernelscope.scoring import drop_masks

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "data" / "cifar10-sample"
SMALL = ("cnn", "resnet8_e1", "resnet8_e5", "resnet8_e10")
LARGE = ("stem224", "resnet18_224", "mobilenetv2_224", "resnet50_224")
BATCH = 128


def _model_path(name: str, folder: Path) -> Path:
    if name == "cnn":
        return ROOT / "examples" / "models" / "cifar10_cnn.onnx"
    if name.startswith("resnet8") or name == "stem224":
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

    if path.name == "cifar10_stem224.onnx":  # trained on upscaled photos: the sample, upscaled alike
        from kernelscope.data.preprocessing import PreprocessingOptions

        upscale = PreprocessingOptions(resize=256, crop=224)
        config = InspectConfig(data=str(DATA), limit=limit, bootstrap=0, threads=1, preprocessing=upscale)
    elif "224" in path.name:
        rng = np.random.default_rng(0)
        data = folder / f"random224_{limit}.npz"
        if not data.exists():
            np.savez(data, x=rng.integers(0, 256, (limit, 224, 224, 3), dtype=np.uint8), y=rng.integers(0, 1000, limit))
        from kernelscope.data.preprocessing import PreprocessingOptions

        imagenet = PreprocessingOptions(preset="imagenet")
        config = InspectConfig(data=str(data), limit=limit, bootstrap=0, threads=1, preprocessing=imagenet)
    else:
        config = InspectConfig(data=str(DATA), limit=limit, bootstrap=0, threads=1)
    return load_audit_inputs(path, config)


def _dropped(proto, layer, k: int):
    """The paper's variant, written independently of kernelscope's scorers: W[k] = 0 and b[k] = 0."""
    keep = np.arange(layer.out_channels)[:, None, None, None] != k
    model = replace_conv_weight(proto, layer, np.where(keep, layer.weight, 0))
    node = model.graph.node[layer.node_index]
    if len(node.input) > 2 and node.input[2]:
        bias = next(t for t in model.graph.initializer if t.name == node.input[2])
        values = numpy_helper.to_array(bias).copy()
        values[k] = 0
        bias.CopyFrom(numpy_helper.from_array(values, bias.name))
    return model


def _contenders(inputs):
    """The four ways to score, each a function (variant group, preprocessed batches) -> predictions (|g|, N)."""
    from kernelscope.runtime import make_session
    from kernelscope.scoring import KernelDropRunner

    layer, name, output = inputs.layer, inputs.image_input, inputs.output.name
    plain = make_session(inputs.batching.proto, ["CPUExecutionProvider"], 1)

    def runner(mechanism):
        return KernelDropRunner(
            inputs.model.proto, layer, name, output, threads=1, providers=["CPUExecutionProvider"],
            batching=inputs.batching, mechanism=mechanism,
        )  # fmt: skip

    mask, sessions = runner("mask"), runner("sessions")
    masks = drop_masks(layer.out_channels)

    def floor(group, batches):  # the unmodified model, once per variant: the work scoring cannot avoid
        return np.stack([np.concatenate([plain.run([output], {name: x})[0].argmax(1) for x in batches]) for _ in group])

    def naive(group, batches):
        rows = []
        for v in group:
            proto = inputs.batching.proto if v == 0 else _dropped(inputs.batching.proto, layer, v - 1)
            session = make_session(proto, ["CPUExecutionProvider"], 1)
            rows.append(np.concatenate([session.run([output], {name: x})[0].argmax(1) for x in batches]))
        return np.stack(rows)

    def masked(group, batches):
        return np.concatenate([mask.predict(x, masks[group]) for x in batches], axis=1)

    def per_variant(group, batches):
        return np.stack([np.concatenate([sessions.predict(x, masks[[v]])[0] for x in batches]) for v in group])

    return {"floor": floor, "naive": naive, "mask": masked, "sessions": per_variant}


def _auto_choice(inputs, batches) -> tuple[str, float]:
    """What ``--mechanism auto`` picks for this job, and what its probe costs (seconds)."""
    from kernelscope.scoring import DEFAULT_RUN_SIZE, KernelDropRunner, plan_groups

    runner = KernelDropRunner(
        inputs.model.proto, inputs.layer, inputs.image_input, inputs.output.name, threads=1,
        providers=["CPUExecutionProvider"], batching=inputs.batching,
    )  # fmt: skip
    variants, n = inputs.layer.out_channels + 1, len(inputs.data)
    group = len(plan_groups(variants, BATCH, DEFAULT_RUN_SIZE)[0])
    assert runner.session is not None  # built by every mechanism's first run anyway: not the probe's cost
    built = time.perf_counter()
    chosen = runner.choose_mechanism(batches[0], n, variants, group)
    return chosen, time.perf_counter() - built


def main() -> int:
    from kernelscope.scoring import DEFAULT_RUN_SIZE, plan_groups

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(SMALL))
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--variants", type=int, default=None, help="time this many variants, scale to all")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in args.models.split(","):
            path = _model_path(name, folder)
            inputs = _inputs(path, args.limit, folder)
            batches = [x for x, _ in inputs.data.batches(BATCH)]
            contenders = _contenders(inputs)
            for run in contenders.values():  # warm-up: first sessions, arenas, the mask's stacking checks
                run(np.array([0, 1]), batches[:1])
            variants = inputs.layer.out_channels + 1
            seconds = dict.fromkeys(contenders, 0.0)
            preds = {k: [] for k in contenders}
            order = list(contenders)
            groups = plan_groups(variants, BATCH, DEFAULT_RUN_SIZE)
            if args.variants:
                covered = np.cumsum([len(g) for g in groups])
                groups = groups[: int(np.searchsorted(covered, min(args.variants, variants))) + 1]
            timed = sum(len(g) for g in groups)
            for g, group in enumerate(groups):
                # Interleaved group by group, the order rotating: this machine's speed drifts by +-10 % over
                # seconds, which would swamp a difference of a few per cent between whole runs.
                for label in order[g % 4 :] + order[: g % 4]:
                    started = time.perf_counter()
                    preds[label].append(contenders[label](group, batches))
                    seconds[label] += time.perf_counter() - started
            stacked = {k: np.concatenate(v) for k, v in preds.items()}
            for label in ("mask", "sessions", "floor"):
                different = int(np.count_nonzero(stacked[label] != stacked["naive"])) if label != "floor" else 0
                if different:
                    print(f"  {name} {label}: {different} predictions differ from the naive loop's")
            seconds = {k: v * variants / timed for k, v in seconds.items()}  # 1 unless --variants
            chosen, probe = _auto_choice(inputs, batches)
            seconds["auto"] = seconds[chosen] + probe
            row = {
                "kernels": inputs.layer.out_channels,
                "images": len(inputs.data),
                "timed_variants": timed,
                "seconds": seconds,
                "vs_floor": {k: v / seconds["floor"] for k, v in seconds.items()},
                "naive_vs_auto": seconds["naive"] / seconds["auto"],
                "auto_chose": chosen,
                "probe_seconds": probe,
            }
            results[name] = row
            print(
                f"{name}: {row['kernels']} kernels x {row['images']} images"
                + (f" ({timed} of {variants} variants timed, scaled)" if timed < variants else "")
                + "; "
                + ", ".join(f"{k} {v:.2f} s ({row['vs_floor'][k]:.3f}x)" for k, v in seconds.items())
                + f"; naive / auto {row['naive_vs_auto']:.2f}; auto chose {chosen} (probe {probe:.2f} s)",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
