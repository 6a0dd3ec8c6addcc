"""Peak memory of scoring a 224-px ResNet-50 on 500 and 5,000 streamed photos (does it grow with N?).

    python bench/resnet50_memory.py [--data ../shared/data/cifar10-jpg/test.tar] [--images 500,5000]

The network is torchvision's ResNet-50 shape (tests/imagenet_shapes.py, full width, random weights, exported
here). The images are real photos — the CIFAR-10 test JPEGs of ``../shared/data`` — brought to 224 x 224 by
the standard evaluation transform (``--resize 256 --crop 224``, which upscales these 32-px photos), with the
ImageNet preset; no accuracy is reported (random weights, data the network was not made for).

Each N runs in its own process (peak RSS is per process): load the folder (it streams above 256 MB of
pixels), build the scoring runner with the default memory budget, and score two variants — the baseline and
kernel 0 dropped — over all N images with the mechanism the probe picks. Two variants, because the full 65
would take hours on two cores (65 x 5,000 ResNet-50 forwards) and memory does not depend on how many
variants run one after the other: the sessions mechanism holds one variant's session at a time, the mask at
most the budget's variants per run. Reported: peak RSS, seconds, images per second, the mechanism.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg" / "test.tar"


def _child(model: str, data: str, images: int, classes: str) -> dict:
    import numpy as np

    from kernelscope.audit import InspectConfig, load_audit_inputs
    from kernelscope.data.preprocessing import PreprocessingOptions
    from kernelscope.model.memory import DEFAULT_MEMORY, budgeted_run
    from kernelscope.scoring import DEFAULT_RUN_SIZE, KernelDropRunner, drop_masks, predict_variants

    started = time.perf_counter()
    config = InspectConfig(
        data=data,
        limit=images,
        bootstrap=0,
        preprocessing=PreprocessingOptions(resize=256, crop=224, preset="imagenet"),
        class_index=Path(classes),
    )
    inputs = load_audit_inputs(Path(model), config)
    loaded = time.perf_counter() - started
    runner = KernelDropRunner(
        inputs.model.proto, inputs.layer, inputs.image_input, inputs.output.name, batching=inputs.batching
    )
    run_size, batch = budgeted_run(runner, DEFAULT_MEMORY, DEFAULT_RUN_SIZE, 128)
    masks = drop_masks(inputs.layer.out_channels)[:2]
    clock = time.perf_counter()
    preds, plan = predict_variants(runner, inputs.data, masks, batch_size=batch, run_size=run_size)
    seconds = time.perf_counter() - clock
    streamed = type(inputs.data.dataset.images).__name__
    return {
        "images": images,
        "streamed": streamed,
        "load_seconds": loaded,
        "scoring_seconds": seconds,
        "variant_images_per_second": 2 * images / seconds,
        "mechanism": plan.mechanism,
        "batch": batch,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "predictions_mb": preds.nbytes / 2**20,
        "changed": int(np.count_nonzero(preds[0] != preds[1])),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--images", default="500,5000")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1], int(args.child[2]), args.child[3])))
        return 0
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from imagenet_shapes import CIFAR10_AS_IMAGENET, export, resnet50

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "resnet50.onnx"
        torch.manual_seed(0)
        export(resnet50(), model)
        # The photos' ten folders as ImageNet classes (--classes FILE, a partial index: the 1,000 outputs stay).
        classes = Path(tmp) / "classes.json"
        classes.write_text(json.dumps(CIFAR10_AS_IMAGENET))
        for n in (int(v) for v in args.images.split(",")):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(model), args.data, str(n), str(classes)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            row = json.loads(out.stdout.strip().splitlines()[-1])
            results.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
