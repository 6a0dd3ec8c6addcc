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
    runner = KernelDropRunner(model, find_conv(model, "image"), "image", "logits", mechanism="mask")
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


def _batch_from_input_head(mix: bool) -> onnx.ModelProto:
    """conv_classifier with its Flatten replaced by a Reshape whose target is computed from the image's batch
    (torch.export style: Shape -> Gather(0) -> Unsqueeze -> Concat -> Reshape).

    ``mix=False``: Reshape(pool, [N * C]) -> Sigmoid -> Reshape([-1, C]); at a stacked batch of V*N onnxruntime
    refuses it (``input_shape_size == requested_shape_size``; a plain Reshape(pool, [N, C]) is rewritten by
    onnxruntime's optimizer and runs). ``mix=True``: Reshape(pool, [N, -1, C]) -> Transpose(1, 0, 2)
    -> Reshape([-1, C]): the identity at batch N, but at V*N it silently interleaves images and variants.
    """
    from onnx import helper

    model = conv_classifier(out_channels=5, seed=9)
    graph = model.graph
    flatten = next(n for n in graph.node if n.op_type == "Flatten")
    position = list(graph.node).index(flatten)
    graph.node.remove(flatten)
    consts = {"zero": [0], "channels": [5], "minus_one": [-1], "channels_tail": [-1, 5]}
    for name, value in consts.items():
        graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.int64), name))
    nodes = [
        helper.make_node("Shape", ["image"], ["image_shape"]),
        helper.make_node("Gather", ["image_shape", "zero"], ["batch"], axis=0),
    ]
    if mix:
        nodes += [
            helper.make_node("Concat", ["batch", "minus_one", "channels"], ["target"], axis=0),
            helper.make_node("Reshape", ["pool", "target"], ["grouped"]),
            helper.make_node("Transpose", ["grouped"], ["swapped"], perm=[1, 0, 2]),
            helper.make_node("Reshape", ["swapped", "channels_tail"], ["flat"]),
        ]
    else:
        nodes += [
            helper.make_node("Mul", ["batch", "channels"], ["target"]),
            helper.make_node("Reshape", ["pool", "target"], ["long"]),
            helper.make_node("Sigmoid", ["long"], ["squashed"]),
            helper.make_node("Reshape", ["squashed", "channels_tail"], ["flat"]),
        ]
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("fork", [True, False], ids=["forked-at-input", "no-fork"])
@pytest.mark.parametrize("mix", [False, True], ids=["reshape-refused", "silently-mixed"])
def test_stacked_variants_are_verified_at_the_batch_they_run(mix, fork, monkeypatch):
    """Issue 12 item 3: a batch computed from the input breaks when variants are stacked into V*N after the mask.

    The Reshape reads the batch of the image input, a tensor that bypasses the mask: the variants fork at the
    input itself (tiled V times), so the batch it reads is V*N and stacking holds. Where no fork point is found
    (``fork=False``), the stacking check catches the broken stack and the variants run one at a time.
    """
    import kernelscope.scoring as scoring

    if not fork:
        monkeypatch.setattr(scoring, "batch_expansion_point", lambda *args: None)
    model = _batch_from_input_head(mix)
    dataset = _data(n=30, seed=3)
    pre = resolve_preprocessing(input_shape=("N", 3, 8, 8), input_dtype="float32", metadata=None, dataset=dataset)
    x = pre.to_model_input(dataset.images)
    # The graph itself is fine at any batch, and the stacked masked graph without a fork is not: the premise.
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.run(None, {"image": x})[0].shape == (30, 4)
    runner = KernelDropRunner(model, find_conv(model, "image"), "image", "logits", mechanism="mask")
    assert runner.batchable and runner.stacking
    result = score_kernels(runner, PreparedData(dataset, pre), batch_size=16, run_size=64, bootstrap=0)
    assert result.baseline_accuracy == pytest.approx(_direct_accuracy(model, None, x, dataset.labels))
    for k in range(5):
        assert result.kernels[k].accuracy == pytest.approx(_direct_accuracy(model, k, x, dataset.labels)), k
    if fork:
        assert runner.expansion is not None and runner.expansion.tensor == "image"
        assert runner.stacking and runner.stacking_note is None and result.plan.variants_per_run == 3
        return
    assert not runner.stacking and result.plan.variants_per_run == 1
    note = runner.stacking_note
    assert note is not None and "run one at a time" in note
    assert ("requested_shape_size" in note) if not mix else ("differ from the one-variant runs" in note)
    # 2 image batches x 6 variants, one per run, plus the stacked run of each shape (16 and 14 images) that failed
    assert result.plan.runs == 2 * 6 + 2


def test_stacking_that_reproduces_the_separate_runs_is_kept():
    model = conv_classifier(out_channels=5, seed=9)
    dataset = _data(n=30, seed=3)
    pre = resolve_preprocessing(input_shape=("N", 3, 8, 8), input_dtype="float32", metadata=None, dataset=dataset)
    runner = KernelDropRunner(model, find_conv(model, "image"), "image", "logits", mechanism="mask")
    result = score_kernels(runner, PreparedData(dataset, pre), batch_size=16, run_size=64, bootstrap=0)
    assert runner.stacking and runner.stacking_note is None
    # groups of 3 variants (64 // 16 = 4 per run, balanced: 3 + 3); each (V, N) shape is checked once by V + 1 runs
    assert result.plan.variants_per_run == 3
    shapes = {(3, 16), (3, 14)}
    assert result.plan.runs == 2 * 2 + sum(3 for _ in shapes)


def test_inspect_reports_the_stacking_fallback(tmp_path, capsys, monkeypatch):
    import json

    import kernelscope.scoring as scoring
    from kernelscope.cli.app import main

    from builders import random_npz, save

    monkeypatch.setattr(scoring, "batch_expansion_point", lambda *args: None)  # a graph no fork point fixes

    path = save(_batch_from_input_head(False), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=20)
    code = main(
        [
            str(a)
            for a in [
                "inspect",
                path,
                "-d",
                data,
                "--no-attack",
                "--mechanism",
                "mask",
                "--json",
                tmp_path / "r.json",
                "-q",
            ]
        ]
    )
    assert code == 0, capsys.readouterr().err
    doc = json.loads((tmp_path / "r.json").read_text())
    assert any("variants were run one at a time" in w for w in doc["warnings"])
    assert doc["execution"]["variants_per_run"] == 1
