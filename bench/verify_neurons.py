"""Check a ``kernelscope neurons --json`` report against an independent computation.

    python bench/verify_neurons.py REPORT.json

Reads W and b of the reported layer (a ``Gemm``) straight from the ONNX initializers, exposes the reported
``feature_tensor`` as an extra output of the model in onnxruntime, runs the same images with the same
preprocessing (read from the report), and recomputes every Δ(i, x) with plain loops over images, neurons and
classes; then compares each neuron's median |Δ| with the report's. No kernelscope sensitivity code is used;
only its data loader (so the images and their order are the same).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from kernelscope.data import load_dataset
from kernelscope.data.preprocessing import select_examples


def preprocess(images: np.ndarray, pre: dict) -> np.ndarray:
    """(pixel * scale - mean) / std in the report's layout."""
    x = (images.astype(np.float32) * np.float32(pre["scale"]) - np.float32(pre["mean"])) / np.float32(pre["std"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if pre["layout"] == "NCHW" else x)


def gemm_weights(model: onnx.ModelProto, name: str) -> tuple[np.ndarray, np.ndarray, str]:
    """(W as classes x features, b, data input) of the Gemm ``name``, with alpha, beta and transB applied."""
    node = next(n for n in model.graph.node if (n.name or n.output[0]) == name)
    if node.op_type != "Gemm":
        raise SystemExit(f"this check reads Gemm layers; {name!r} is a {node.op_type}")
    init = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    w = init[node.input[1]] if attrs.get("transB", 0) else init[node.input[1]].T
    w = attrs.get("alpha", 1.0) * w
    b = attrs.get("beta", 1.0) * init[node.input[2]].reshape(-1) if len(node.input) > 2 else np.zeros(len(w))
    return w, b, node.input[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report")
    args = parser.parse_args()
    doc = json.loads(Path(args.report).read_text())
    neurons = doc["neurons"]
    model = onnx.load(doc["model"]["path"])
    w, b, feature = gemm_weights(model, neurons["layer"])
    assert feature == neurons["feature_tensor"], (feature, neurons["feature_tensor"])
    model.graph.output.append(helper.make_tensor_value_info(feature, TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    data = select_examples(load_dataset(doc["data"]["source"]), doc["data"]["limit"], doc["data"]["seed"])
    x = preprocess(data.images, doc["data"]["preprocessing"])
    input_name = doc["model"]["input"]["name"]
    f = np.concatenate([session.run([feature], {input_name: x[i : i + 250]})[0] for i in range(0, len(x), 250)])
    f = f.reshape(len(x), -1).astype(np.float64)
    relu = neurons["relu_features"]
    size = np.empty_like(f)
    for n in range(len(f)):
        z = w @ f[n] + b
        y = int(np.argmax(z))
        for i in range(f.shape[1]):
            best = np.inf
            for j in range(len(z)):
                if j == y or w[j, i] == w[y, i]:
                    continue
                delta = (z[y] - z[j]) / (w[j, i] - w[y, i])
                if (not relu or f[n, i] + delta >= 0) and abs(delta) < best:
                    best = abs(delta)
            size[n, i] = best
    expected = np.median(size, axis=0)
    reported = np.array(
        [np.inf if s["median_abs_delta"] is None else s["median_abs_delta"] for s in neurons["sensitivity"]]
    )
    finite = np.isfinite(expected)
    same_inf = bool(np.all(np.isinf(reported[~finite])))
    rel = np.abs(reported[finite] - expected[finite]) / np.maximum(np.abs(expected[finite]), 1e-12)
    worst = float(rel.max()) if rel.size else 0.0
    print(
        f"{len(f)} images, {f.shape[1]} neurons ({'ReLU' if relu else 'unconstrained'} features): median |Δ| of "
        f"every neuron matches within a relative {worst:.2e}"
        + ("" if same_inf else "; MISMATCH in the infinite entries")
    )
    print(f"  e.g. neuron {int(np.argmin(expected))}: independent {expected.min():.6g}, report "
          f"{reported[int(np.argmin(expected))]:.6g}")  # fmt: skip
    return 0 if worst < 1e-6 and same_inf else 1


if __name__ == "__main__":
    sys.exit(main())
