"""The two ways of evaluating kernel variants — the kernel mask in one session, and one session per variant
with the kernel's weights dropped — give the same scores, the measured choice keeps the cheaper, and the
patched serialized variants equal models rewritten tensor by tensor."""

from __future__ import annotations

import json
import time

import export_zoo as ez
import numpy as np
import onnx
import pytest

import kernelscope.scoring as scoring
from kernelscope.cli.app import main
from kernelscope.data.dataset import ImageDataset
from kernelscope.data.preprocessing import PreparedData, resolve_preprocessing
from kernelscope.errors import ModelError
from kernelscope.model.first_conv import find_conv
from kernelscope.model.graph import GraphIndex, constant_value
from kernelscope.model.loading import load_model
from kernelscope.model.surgery.drop_weights import WeightDropper
from kernelscope.scoring import KernelDropRunner, score_kernels

from builders import conv_classifier, random_npz, save


def _prepared(proto, n=40, seed=0, size=8):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    dataset = ImageDataset("t", images, rng.integers(0, 4, n), "t", [str(i) for i in range(4)])
    shape = [d.dim_value or "N" for d in proto.graph.input[0].type.tensor_type.shape.dim]
    pre = resolve_preprocessing(input_shape=tuple(shape), input_dtype="float32", metadata=None, dataset=dataset)
    return PreparedData(dataset, pre)


def _scores(result):
    return [(k.accuracy, k.correct_to_wrong, k.wrong_to_correct) for k in result.kernels]


@pytest.mark.parametrize("batch", [None, 1])
def test_one_session_per_variant_scores_like_the_mask(batch):
    model = conv_classifier(out_channels=6, seed=4, batch=batch)
    layer = find_conv(model, "image")
    data = _prepared(model, n=37)
    results = {}
    for mechanism in ("mask", "sessions"):
        runner = KernelDropRunner(model, layer, "image", "logits", mechanism=mechanism)
        results[mechanism] = score_kernels(runner, data, batch_size=16, run_size=64, bootstrap=0)
        assert results[mechanism].plan.mechanism == mechanism
    assert _scores(results["sessions"]) == _scores(results["mask"])
    assert results["sessions"].baseline_accuracy == results["mask"].baseline_accuracy
    assert results["sessions"].plan.variants_per_run == 1


def test_each_variant_session_is_built_once_per_block_of_images():
    model = conv_classifier(out_channels=5, seed=2)
    runner = KernelDropRunner(model, find_conv(model, "image"), "image", "logits", mechanism="sessions")
    score_kernels(runner, _prepared(model, n=50), batch_size=8, bootstrap=0)
    assert runner.sessions_built == 6  # the baseline and five dropped kernels, each serving all 7 image shards


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_quantized_weights_are_dropped_at_their_zero_point(tmp_path, fmt):
    path = ez.quantize_static("poolcnn", tmp_path, fmt)
    loaded = load_model(path)
    layer = find_conv(loaded.proto, loaded.image_input.name)
    dropper = WeightDropper(loaded.proto, layer)
    keep = np.ones(layer.out_channels, dtype=bool)
    keep[[0, 3]] = False
    variant = onnx.load_from_string(dropper.model_bytes(keep))
    dropped = find_conv(variant, loaded.image_input.name).weight
    assert np.all(dropped[[0, 3]] == 0) and np.array_equal(dropped[keep], layer.weight[keep])
    images = ez.images(24, seed=5)
    dataset = ImageDataset("zoo", images, np.zeros(24, dtype=np.int64), "zoo", ez.CLASSES)
    pre = resolve_preprocessing(
        input_shape=loaded.image_input.shape, input_dtype=str(loaded.image_input.dtype), metadata=None, dataset=dataset
    )
    scores = {}
    for mechanism in ("mask", "sessions"):
        runner = KernelDropRunner(loaded.proto, layer, loaded.image_input.name, "logits", mechanism=mechanism)
        result = score_kernels(runner, PreparedData(dataset, pre), batch_size=8, bootstrap=0)
        scores[mechanism] = [k.changed_predictions for k in result.kernels]
    assert scores["sessions"] == scores["mask"]


def test_patched_variants_equal_models_rewritten_tensor_by_tensor():
    model = conv_classifier(out_channels=7, seed=8)
    layer = find_conv(model, "image")
    dropper = WeightDropper(model, layer)
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = rng.random(7) > 0.4
        fast, slow = onnx.load_from_string(dropper.model_bytes(keep)), dropper.slow_model(keep)
        for tensor in slow.graph.initializer:
            ours = next(t for t in fast.graph.initializer if t.name == tensor.name)
            assert onnx.numpy_helper.to_array(ours).tobytes() == onnx.numpy_helper.to_array(tensor).tobytes()
        index = GraphIndex.build(fast.graph)
        node = fast.graph.node[layer.node_index]
        weight, bias = (constant_value(index, name)[0] for name in node.input[1:3])
        assert np.all(weight[~keep] == 0) and np.all(bias[~keep] == 0)
        assert np.array_equal(weight[keep], layer.weight[keep])


def test_a_convinteger_is_left_to_the_mask(tmp_path, monkeypatch):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = ez.export_onnx("poolcnn", tmp_path / "f.onnx", 13)
    path = tmp_path / "dyn.onnx"
    quantize_dynamic(str(src), str(path), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    loaded = load_model(path)
    layer = find_conv(loaded.proto, loaded.image_input.name)
    assert layer.op_type == "ConvInteger"
    with pytest.raises(ModelError, match="ConvInteger"):
        WeightDropper(loaded.proto, layer)
    monkeypatch.setattr(scoring, "MIN_PROBED_SECONDS", 0.0)
    runner = KernelDropRunner(loaded.proto, layer, loaded.image_input.name, "logits")
    dataset = ImageDataset("zoo", ez.images(16, seed=2), np.zeros(16, dtype=np.int64), "zoo", ez.CLASSES)
    pre = resolve_preprocessing(
        input_shape=loaded.image_input.shape, input_dtype=str(loaded.image_input.dtype), metadata=None, dataset=dataset
    )
    result = score_kernels(runner, PreparedData(dataset, pre), batch_size=8, bootstrap=0)
    assert result.plan.mechanism == "mask" and "ConvInteger" in result.plan.mechanism_note


@pytest.mark.parametrize("slow", ["mask", "sessions"])
def test_the_measured_choice_keeps_the_cheaper_mechanism(monkeypatch, slow):
    """Make one mechanism's runs 200 ms slower: the probe must see it and keep the other.

    The delay must dominate a session build (tens of ms on a loaded machine), which the comparison counts
    once per variant: 20 ms was not enough when another job shared the cores."""
    model = conv_classifier(out_channels=4, seed=3)
    runner = KernelDropRunner(model, find_conv(model, "image"), "image", "logits")
    target = "_run" if slow == "mask" else "_plain_run"
    original = getattr(KernelDropRunner, target)

    def delayed(self, *args):
        time.sleep(0.2)
        return original(self, *args)

    monkeypatch.setattr(KernelDropRunner, target, delayed)
    monkeypatch.setattr(scoring, "MIN_PROBED_SECONDS", 0.0)
    monkeypatch.setattr(scoring, "PROBE_SHARE", 1e9)  # always affordable here
    data = _prepared(model, n=40)
    result = score_kernels(runner, data, batch_size=16, bootstrap=0)
    kept = "sessions" if slow == "mask" else "mask"
    assert result.plan.mechanism == kept
    costs = result.plan.mechanism_costs
    assert costs is not None and costs["probe_images"] == 16
    assert (costs["mask_ms_per_variant_image"] > costs["sessions_ms_per_variant_image"]) == (slow == "mask")
    reference = KernelDropRunner(model, find_conv(model, "image"), "image", "logits", mechanism="mask")
    monkeypatch.undo()
    assert _scores(result) == _scores(score_kernels(reference, data, batch_size=16, bootstrap=0))


def test_inspect_names_the_mechanism_and_refuses_bad_ones(tmp_path, capsys, monkeypatch):
    path = save(conv_classifier(out_channels=4, seed=1), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=24)
    out = tmp_path / "r.json"
    base = ["inspect", str(path), "-d", str(data), "--no-attack", "--bootstrap", "0", "-q"]
    assert main([*base, "--mechanism", "sessions", "--json", str(out)]) == 0
    execution = json.loads(out.read_text())["execution"]
    assert execution["mechanism"] == "sessions" and "as asked" in execution["mechanism_note"]
    assert main([*base, "--json", str(out), "--force"]) == 0
    execution = json.loads(out.read_text())["execution"]
    assert execution["mechanism"] == "mask" and "a short job" in execution["mechanism_note"]
    monkeypatch.setattr(scoring, "MIN_PROBED_SECONDS", 0.0)
    monkeypatch.setattr(scoring, "PROBE_SHARE", 1e9)
    assert main([*base, "--json", str(out), "--force"]) == 0
    doc = json.loads(out.read_text())
    assert (
        doc["execution"]["mechanism"] in ("mask", "sessions")
        and "measured cheaper" in doc["execution"]["mechanism_note"]
    )
    assert doc["timings"]["mechanism_probe_mask_ms_per_variant_image"] > 0
    assert doc["timings"]["mechanism_probe_sessions_ms_per_variant_image"] > 0
    capsys.readouterr()
    for extra, needle in (
        (["--mechanism", "fast"], "--mechanism must be"),
        (["--mechanism", "sessions", "--drop", "channel"], "--drop weights"),
    ):
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1


def test_without_timing_the_share_of_work_before_the_fork_decides(monkeypatch):
    """First layer: almost nothing before the fork, so one session per variant; a deep layer whose variants
    fork after most of the network keeps the mask. Both score like the other mechanism."""
    from kernelscope.model.cost import node_macs, share_before
    from kernelscope.model.first_conv import select_convs

    monkeypatch.setattr(scoring, "MIN_PROBED_SECONDS", 0.0)
    monkeypatch.setattr(scoring, "PROBE_SHARE", 0.0)  # timing never affordable: the estimate decides
    model = onnx.load(str(_two_convs()))
    layers = select_convs(model, "image", "all").layers
    macs = node_macs(model)
    first, second = (next(i for i, n in enumerate(model.graph.node) if n.output[0] == c.output) for c in layers)
    assert macs[first] == 16 * 16 * 8 * 3 * 3 * 3 and macs[second] == 16 * 16 * 64 * 8 * 3 * 3
    assert share_before(model, layers[1].output) == pytest.approx((macs[first] + macs[second]) / sum(macs.values()))
    data = _prepared(model, n=40, size=16)
    chosen = []
    for layer in layers:
        runner = KernelDropRunner(model, layer, "image", "logits")
        result = score_kernels(runner, data, batch_size=16, bootstrap=0)
        other = "mask" if runner.mechanism == "sessions" else "sessions"
        reference = score_kernels(
            KernelDropRunner(model, layer, "image", "logits", mechanism=other), data, batch_size=16, bootstrap=0
        )
        assert _scores(result) == _scores(reference)
        assert "estimated" in result.plan.mechanism_note
        chosen.append(result.plan.mechanism)
    assert chosen == ["sessions", "mask"]


def _two_convs():
    """image -> Conv 3->8 3x3 -> Relu -> Conv 8->64 3x3 -> Relu -> global pool -> Gemm (4 classes), 16 px."""
    import tempfile
    from pathlib import Path

    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.3, (64, 8, 3, 3)).astype(np.float32), "w2"),
        numpy_helper.from_array(rng.normal(0, 0.1, 64).astype(np.float32), "b2"),
        numpy_helper.from_array(rng.normal(0, 0.5, (4, 64)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(np.zeros(4, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes, "two", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])], inits,
    )  # fmt: skip
    path = Path(tempfile.mkdtemp()) / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path
