"""Check a ``kernelscope inspect --json`` report against an independent computation.

    python bench/verify_scores.py REPORT.json

For every kernel k of the audited Conv, zero W[k] and b[k] directly in the model's initializers, run the
edited model in onnxruntime on the same images with the same preprocessing (read from the report), and
compare the accuracy with the report's. No kernelscope scoring code is used; only its data loader (so the
images and their order are the same) and the report's recorded preprocessing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from kernelscope.data import load_dataset
from kernelscope.data.preprocessing import select_examples


def preprocess(images: np.ndarray, pre: dict) -> np.ndarray:
    """(pixel * scale - mean) / std in the report's layout."""
    x = (images.astype(np.float32) * np.float32(pre["scale"]) - np.float32(pre["mean"])) / np.float32(pre["std"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if pre["layout"] == "NCHW" else x)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report")
    args = parser.parse_args()
    doc = json.loads(Path(args.report).read_text())
    model = onnx.load(doc["model"]["path"])
    conv = next(n for n in model.graph.node if (n.name or n.output[0]) == doc["layer"]["name"])
    weight, bias = conv.input[1], conv.input[2] if len(conv.input) > 2 else None
    data = select_examples(load_dataset(doc["data"]["source"]), doc["data"]["limit"], doc["data"]["seed"])
    x = preprocess(data.images, doc["data"]["preprocessing"])
    input_name = doc["model"]["input"]["name"]

    def accuracy(kernel: int | None) -> float:
        edited = onnx.ModelProto()
        edited.CopyFrom(model)
        if kernel is not None:
            for tensor in edited.graph.initializer:
                if tensor.name in (weight, bias):
                    values = numpy_helper.to_array(tensor).copy()
                    values[kernel] = 0
                    tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
        session = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
        preds = np.concatenate(
            [session.run(None, {input_name: x[i : i + 500]})[0].argmax(1) for i in range(0, len(x), 500)]
        )
        return float(np.mean(preds == data.labels))

    worst = abs(accuracy(None) - doc["baseline_accuracy"])
    for entry in doc["kernels"]:
        worst = max(worst, abs(accuracy(entry["index"]) - entry["accuracy"]))
    print(f"{len(doc['kernels'])} kernels + baseline on {len(x)} images: max |report - direct| = {worst:.3g}")
    return 0 if worst == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
