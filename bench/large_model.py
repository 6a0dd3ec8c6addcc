"""A model over 2 GB with external data: it loads, is scored, and its hardened copy keeps external data.

    python bench/large_model.py [--gigabytes 2.1] [--folder DIR]

The model is the tests' tiny Conv classifier plus one large initializer (ReduceSum of it, times 0, is added
to the logits, so it is part of the graph but does not change the predictions). Writes a few GB to
``--folder`` (default: a temporary folder, removed afterwards) and prints peak memory and timings.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from kernelscope.cli.app import main as kernelscope_main

from builders import conv_classifier, random_npz


def build(folder: Path, gigabytes: float) -> Path:
    model = conv_classifier(out_channels=6)
    graph = model.graph
    fc = next(n for n in graph.node if n.op_type == "Gemm")
    fc.output[0] = "scores"
    count = int(gigabytes * 1e9 / 4)
    graph.initializer.append(numpy_helper.from_array(np.ones(count, dtype=np.float32), "ballast"))
    graph.initializer.append(numpy_helper.from_array(np.zeros(1, dtype=np.float32), "zero"))
    graph.node.extend(
        [
            helper.make_node("ReduceSum", ["ballast"], ["ballast_sum"], keepdims=1),
            helper.make_node("Mul", ["ballast_sum", "zero"], ["nothing"]),
            helper.make_node("Add", ["scores", "nothing"], ["logits"]),
        ]
    )
    path = folder / "large.onnx"
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="large.onnx.data")
    return path


def peak_mb() -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=2.1)
    parser.add_argument("--folder", type=Path)
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="ks-large-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        path = build(folder, args.gigabytes)
        data = random_npz(folder / "d.npz", n=32)
        size = sum(p.stat().st_size for p in folder.glob("large.onnx*"))
        print(f"built {path} ({size / 1e9:.2f} GB with external data) in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        code = kernelscope_main(["inspect", str(path), "--data", str(data), "--no-attack", "--bootstrap", "0", "-q"])
        print(f"inspect: exit {code} in {time.perf_counter() - started:.1f} s, peak RSS so far {peak_mb():,.0f} MB")
        out = folder / "hardened.onnx"
        started = time.perf_counter()
        code2 = kernelscope_main(
            ["harden", str(path), "--data", str(data), "-o", str(out), "--noise", "0.01", "--sweep", "0.01", "-q"]
        )
        stored = onnx.load(str(out), load_external_data=False) if out.exists() else None
        external = stored is not None and any(t.data_location == TensorProto.EXTERNAL for t in stored.graph.initializer)
        print(
            f"harden: exit {code2} in {time.perf_counter() - started:.1f} s, external data kept: {external} "
            f"({sorted(p.name for p in folder.iterdir())}), peak RSS {peak_mb():,.0f} MB"
        )
        return 0 if code == 0 and code2 == 0 and external else 1
    finally:
        if args.folder is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
