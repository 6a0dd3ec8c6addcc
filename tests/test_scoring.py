"""Exact scoring against a direct computation: the same model with kernel k's weights zeroed."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from kernelscope.data.dataset import ImageDataset
from kernelscope.data.preprocessing import PreparedData, resolve_preprocessing
from kernelscope.model.first_conv import find_conv
from kernelscope.scoring import KernelDropRunner, plan_groups, score_kernels

from builders import conv_classifier


def _direct_accuracy(model: onnx.ModelProto, kernel: int | None, x: np.ndarray, y: np.ndarray) -> float:
    edited = onnx.ModelProto()
    edited.CopyFrom(model)
    if kernel is not None:
        for tensor in edited.graph.initializer:
            if tensor.name in ("w", "b"):
                values = numpy_helper.to_array(tensor).copy()
                values[kernel] = 0
                tensor.CopyFrom(numpy_helper.from_array(values, tensor.name))
    session = ort.InferenceSession(edited.SerializeToString(), providers=["CPUExecutionProvider"])
    fixed = edited.graph.input[0].type.tensor_type.shape.dim[0].dim_value
    step = fixed or len(x)
    preds = np.concatenate([session.run(None, {"image": x[i : i + step]})[0].argmax(1) for i in range(0, len(x), step)])
    return float(np.mean(preds == y))


def _data(n=60, seed=1):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
    return ImageDataset("random", images, rng.integers(0, 4, n).astype(np.int64), "test", 4)


@pytest.mark.parametrize("batch", ["N", 1])
@pytest.mark.parametrize("batch_size", [7, 64])
def test_scores_equal_direct_computation(batch, batch_size):
    model = conv_classifier(batch=batch, out_channels=6, seed=4)
    dataset = _data()
    pre = resolve_preprocessing(input_shape=(batch, 3, 8, 8), input_dtype="float32", metadata=None, dataset=dataset)
    data = PreparedData(dataset, pre)
    layer = find_conv(model, "image")
    runner = KernelDropRunner(model, layer, "image", "logits")
    result = score_kernels(runner, data, batch_size=batch_size, run_size=64, bootstrap=50)
    x = pre.to_model_input(dataset.images)
    assert result.baseline_accuracy == pytest.approx(_direct_accuracy(model, None, x, dataset.labels))
    for k in range(6):
        assert result.kernels[k].accuracy == pytest.approx(_direct_accuracy(model, k, x, dataset.labels)), k
    mean = np.mean([s.accuracy for s in result.kernels])
    assert result.fragile == [s.index for s in result.kernels if s.accuracy < mean]
    assert sorted(result.fragile + result.null) == list(range(6))
    if batch == 1:
        assert runner.fixed_batch == 1 and runner.batch_made_dynamic


def test_variant_groups_cover_every_variant_once():
    groups = plan_groups(65, 128, 1024)
    assert sorted(np.concatenate(groups).tolist()) == list(range(65))
    assert max(len(g) for g in groups) <= 8
    assert plan_groups(3, 5000, 1024)[0].tolist() == [0] and len(plan_groups(3, 5000, 1024)) == 3


def test_fixed_batch_that_cannot_be_made_dynamic_falls_back_to_single_images():
    """A Slice that keeps batch entry 0 only is harmless at batch 1 but breaks any larger batch."""
    model = conv_classifier(batch=1, out_channels=4, seed=6)
    graph = model.graph
    gemm = next(n for n in graph.node if n.op_type == "Gemm")
    gemm.input[0] = "flat_first"
    for name, value in [("s0", [0]), ("s1", [1]), ("ax", [0])]:
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    graph.node.insert(len(graph.node) - 1, onnx.helper.make_node("Slice", ["flat", "s0", "s1", "ax"], ["flat_first"]))
    dataset = _data(n=20)
    pre = resolve_preprocessing(input_shape=(1, 3, 8, 8), input_dtype="float32", metadata=None, dataset=dataset)
    runner = KernelDropRunner(model, find_conv(model, "image"), "image", "logits")
    assert runner.fixed_batch == 1 and not runner.batchable and not runner.batch_made_dynamic
    result = score_kernels(runner, PreparedData(dataset, pre), batch_size=8, bootstrap=0)
    x = pre.to_model_input(dataset.images)
    for k in range(4):
        assert result.kernels[k].accuracy == pytest.approx(_direct_accuracy(model, k, x, dataset.labels))
    assert result.plan.variants_per_run == 1 and result.plan.images_per_run == 1


def test_mask_moves_past_ops_that_keep_a_zero_channel_zero():
    """Scoring masks after Relu (exactly equivalent, and keeps Conv+Relu fusable); targeting reads the Conv."""
    from kernelscope.model.surgery.kernel_mask import find_mask_site, infer_elem_types

    model = conv_classifier(out_channels=4)
    layer = find_conv(model, "image")
    types = infer_elem_types(model)
    scoring_site = find_mask_site(model, layer, "weights", types, commute=True)
    assert scoring_site.tensor == "pool"
    assert [p.split(":")[0] for p in scoring_site.passed] == ["Relu", "GlobalAveragePool"]
    assert find_mask_site(model, layer, "weights", types).tensor == "conv"
