"""Self-checks of the test model zoo (tests/zoo.py) and its independent drop-accuracy reference.

These tests say nothing about kernelscope itself; they make sure the fixtures other tests rely on are what
they claim to be: every variant builds, runs in onnxruntime, is trained well above chance, and dropping
first-conv kernels changes accuracy (so scores are informative).  The reference is cross-checked against
plain torch with a forward hook, which is a third, unrelated implementation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import zoo  # tests/ is on sys.path under pytest's default "prepend" import mode (like builders.py)

ALL = list(zoo.BUILDERS)
ONNX_MODELS = [name for name in ALL if name != "torchscript"]
N_EVAL = 128
CHANCE_MARGIN = 0.35  # 4 classes: chance is 0.25


def _eval_set(model: zoo.ZooModel, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A held-out evaluation set, preprocessed for ``model``."""
    images, labels = zoo.tiny_dataset(
        N_EVAL, size=model.image_size, channels=model.channels, num_classes=model.num_classes, seed=seed
    )
    return zoo.preprocess_for(model, images), labels


def _session(path: Path) -> ort.InferenceSession:
    """A quiet CPU session."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _baseline(model: zoo.ZooModel) -> float:
    """Unmodified accuracy of ``model`` on the evaluation set."""
    x, labels = _eval_set(model)
    return zoo.reference_drop_accuracy(model.reference_path, model.conv_name, None, x, labels, model.logits_index)


# ------------------------------------------------------------------------------------------------ dataset


def test_tiny_dataset_shapes_and_determinism() -> None:
    """Images are uint8 NHWC, labels int64 in range, and the same seed gives the same data."""
    images, labels = zoo.tiny_dataset(32, size=(8, 8), channels=3, seed=3)
    assert images.shape == (32, 8, 8, 3) and images.dtype == np.uint8
    assert labels.shape == (32,) and labels.dtype == np.int64
    assert set(labels.tolist()) <= {0, 1, 2, 3}
    again_images, again_labels = zoo.tiny_dataset(32, size=(8, 8), channels=3, seed=3)
    np.testing.assert_array_equal(images, again_images)
    np.testing.assert_array_equal(labels, again_labels)
    other, _ = zoo.tiny_dataset(32, size=(8, 8), channels=3, seed=4)
    assert not np.array_equal(images, other)


@pytest.mark.parametrize(("size", "channels"), [((8, 8), 3), ((16, 16), 3), ((8, 8), 1)])
def test_tiny_dataset_is_learnable(size: tuple[int, int], channels: int) -> None:
    """The brightest quadrant predicts the label far better than chance (no training needed)."""
    images, labels = zoo.tiny_dataset(256, size=size, channels=channels, seed=11)
    h, w = size
    sums = images.astype(np.float64).sum(axis=3)
    quads = np.stack(
        [
            sums[:, : h // 2, : w // 2].sum((1, 2)),
            sums[:, : h // 2, w // 2 :].sum((1, 2)),
            sums[:, h // 2 :, : w // 2].sum((1, 2)),
            sums[:, h // 2 :, w // 2 :].sum((1, 2)),
        ],
        axis=1,
    )
    assert np.mean(np.argmax(quads, axis=1) == labels) > 0.5


# ------------------------------------------------------------------------------------------------ the zoo


def test_all_variants_built(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """Every registered variant is present and its file exists."""
    assert set(built_zoo) == set(ALL)
    for model in built_zoo.values():
        assert model.path.exists(), model.name
        assert model.reference_path is not None and model.reference_path.exists(), model.name


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_first_conv_facts(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    """conv_name names a node of type conv_op that is the first conv in data flow, with the stated shape."""
    model = built_zoo[name]
    proto = onnx.load(str(model.path))
    nodes = [node for node in proto.graph.node if node.name == model.conv_name]
    assert len(nodes) == 1
    assert nodes[0].op_type == model.conv_op
    assert zoo.first_conv_node(proto).name == model.conv_name
    weight_input = nodes[0].input[3 if model.conv_op == "QLinearConv" else 1]
    const = zoo._constant(proto.graph, weight_input)
    if const is None:  # QDQ: DequantizeLinear of the quantized weight
        producer = zoo._producer(proto.graph, weight_input)
        assert producer is not None and producer.op_type == "DequantizeLinear"
        const = zoo._constant(proto.graph, producer.input[0])
    assert const.get().shape == (model.out_channels, model.in_channels, *model.kernel_shape)
    assert proto.graph.output[model.logits_index].name == model.logits_output


@pytest.mark.parametrize("name", ONNX_MODELS)
def test_runs_in_onnxruntime(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    """The model runs on the preprocessed input and gives (N, num_classes) finite logits."""
    model = built_zoo[name]
    session = _session(model.path)
    inp = session.get_inputs()[0]
    assert inp.name == model.input_name
    x, _ = _eval_set(model)
    x = x[:1] if model.fixed_batch == 1 else x[:8]
    assert (
        inp.type
        == {"float32": "tensor(float)", "float16": "tensor(float16)", "uint8": "tensor(uint8)"}[model.input_dtype]
    )
    logits = session.run(None, {inp.name: x})[model.logits_index]
    assert logits.shape == (len(x), model.num_classes)
    assert np.all(np.isfinite(logits.astype(np.float32)))


@pytest.mark.parametrize("name", ALL)
def test_baseline_above_chance(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    """Trained models are clearly above chance on held-out data (quantized ones too)."""
    assert _baseline(built_zoo[name]) > CHANCE_MARGIN


@pytest.mark.parametrize("name", ALL)
def test_some_kernel_drop_changes_accuracy(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    """At least one first-conv kernel, when dropped, changes accuracy, so kernel scores are informative."""
    model = built_zoo[name]
    x, labels = _eval_set(model)
    base = _baseline(model)
    drops = [
        zoo.reference_drop_accuracy(model.reference_path, model.conv_name, k, x, labels, model.logits_index)
        for k in range(model.out_channels)
    ]
    assert any(abs(d - base) > 1e-9 for d in drops), drops
    assert len(set(drops)) > 1, drops


def test_reference_leaves_file_untouched(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """Dropping a kernel works on a copy (also for external data)."""
    model = built_zoo["external_data"]
    weights = model.path.parent / "weights.bin"
    before = [hashlib.sha256(p.read_bytes()).hexdigest() for p in (model.path, weights)]
    x, labels = _eval_set(model)
    zoo.reference_drop_accuracy(model.path, model.conv_name, 0, x, labels)
    assert [hashlib.sha256(p.read_bytes()).hexdigest() for p in (model.path, weights)] == before


def test_same_weights_give_same_drops(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """Variants that only differ in graph form (not weights) agree kernel by kernel with opset13."""
    same = [
        "opset9",
        "opset17",
        "opset_latest",
        "conv_bias_add",
        "constant_weight",
        "identity_weight",
        "external_data",
        "fixed_batch1",
        "fixed_batch1_flatten",
        "multi_output",
        "unsorted",
        "initializers_as_inputs",
        "torchscript",
    ]
    ref = built_zoo["opset13"]
    x, labels = _eval_set(ref)
    expected = [zoo.reference_drop_accuracy(ref.path, ref.conv_name, k, x, labels) for k in range(ref.out_channels)]
    for name in same:
        model = built_zoo[name]
        got = [
            zoo.reference_drop_accuracy(model.reference_path, model.conv_name, k, x, labels, model.logits_index)
            for k in range(model.out_channels)
        ]
        assert np.allclose(got, expected, atol=1.5 / N_EVAL), (name, got, expected)


@pytest.mark.parametrize("name", ["float16", "qdq", "qlinear", "conv_integer"])
def test_lossy_variants_track_float(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    """float16 and quantized drops stay close to the float32 ones (the zero-point handling is right)."""
    ref = built_zoo["opset13"]
    model = built_zoo[name]
    images, labels = zoo.tiny_dataset(N_EVAL, seed=5)
    x_ref, x = zoo.preprocess_for(ref, images), zoo.preprocess_for(model, images)
    for k in range(ref.out_channels):
        expected = zoo.reference_drop_accuracy(ref.path, ref.conv_name, k, x_ref, labels)
        got = zoo.reference_drop_accuracy(model.path, model.conv_name, k, x, labels)
        assert abs(got - expected) <= 0.05, (name, k, got, expected)


def test_qlinear_has_nonzero_weight_zero_point(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """uint8 QLinearConv weights have a non-zero zero point, so 'drop = zero point' is really exercised."""
    assert any(z != 0 for z in np.ravel(built_zoo["qlinear"].extra["weight_zero_point"]))


@pytest.mark.parametrize("name", ["opset17", "bn_unfused"])
def test_reference_matches_torch_hook(built_zoo: dict[str, zoo.ZooModel], name: str) -> None:
    """The ONNX reference equals torch with the channel zeroed by a hook (after BN when BN was folded)."""
    import torch

    model = built_zoo[name]
    net = zoo.trained_net(zoo.BASE)
    # the exporter folds eval-mode BN into the conv, so there the conv output *is* the BN output
    target = net.conv1 if name == "bn_unfused" else net.bn1
    images, labels = zoo.tiny_dataset(N_EVAL, seed=5)
    x = zoo.preprocess_for(model, images)
    for k in range(model.out_channels):

        def hook(_mod: object, _inp: object, out: torch.Tensor, k: int = k) -> torch.Tensor:
            out = out.clone()
            out[:, k] = 0
            return out

        handle = target.register_forward_hook(hook)
        try:
            with torch.no_grad():
                pred = net(torch.from_numpy(x)).argmax(1).numpy()
        finally:
            handle.remove()
        expected = float(np.mean(pred == labels))
        got = zoo.reference_drop_accuracy(model.path, model.conv_name, k, x, labels)
        assert abs(got - expected) <= 1.5 / N_EVAL, (k, got, expected)


# ------------------------------------------------------------------------------------------------ variants


def test_unsorted_is_not_topological(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """The unsorted node list is not topological, lists another conv first, and onnxruntime still runs it."""
    model = built_zoo["unsorted"]
    proto = onnx.load(str(model.path))
    assert not zoo.is_topologically_sorted(proto.graph)
    convs = [node.name for node in proto.graph.node if node.op_type == "Conv"]
    assert len(convs) >= 2 and convs[0] != model.conv_name
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(proto)
    _session(model.path)
    assert zoo.is_topologically_sorted(onnx.load(str(built_zoo["opset13"].path)).graph)


def test_graph_shapes_of_variants(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """Structural promises of the variants hold."""

    def load(name: str) -> onnx.ModelProto:
        return onnx.load(str(built_zoo[name].path))

    def consumers(proto: onnx.ModelProto, name: str) -> list[str]:
        return [n.op_type for n in zoo._consumers(proto.graph, name)]

    opsets = {name: load(name).opset_import[0].version for name in ("opset9", "opset13", "opset17", "opset_latest")}
    assert opsets["opset9"] == 9 and opsets["opset13"] == 13 and opsets["opset17"] == 17
    assert opsets["opset_latest"] >= 17

    proto = load("bn_unfused")
    assert consumers(proto, zoo.first_conv_node(proto).output[0]) == ["BatchNormalization"]

    proto = load("conv_bias_add")
    conv = zoo.first_conv_node(proto)
    assert len(conv.input) == 2 and consumers(proto, conv.output[0]) == ["Add"]

    proto = load("nhwc_transpose")
    assert built_zoo["nhwc_transpose"].layout == "NHWC"
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim][1:] == [16, 16, 3]

    ops = [n.op_type for n in load("norm_in_graph").graph.node]
    assert ops.index("Sub") < ops.index("Conv") and ops.index("Div") < ops.index("Conv")

    proto = load("cast_input")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert consumers(proto, proto.graph.input[0].name) == ["Cast"]

    proto = load("qdq")
    w = zoo._producer(proto.graph, zoo.first_conv_node(proto).input[1])
    assert w is not None and w.op_type == "DequantizeLinear"

    proto = load("conv_integer")
    assert [n.op_type for n in proto.graph.node if n.name == built_zoo["conv_integer"].extra["bias_add"]] == ["Add"]

    proto = load("float16")
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert all(i.data_type != onnx.TensorProto.FLOAT for i in proto.graph.initializer)

    proto = load("constant_weight")
    assert zoo._producer(proto.graph, zoo.first_conv_node(proto).input[1]).op_type == "Constant"
    proto = load("identity_weight")
    assert zoo._producer(proto.graph, zoo.first_conv_node(proto).input[1]).op_type == "Identity"

    proto = load("initializers_as_inputs")
    assert {i.name for i in proto.graph.initializer} <= {i.name for i in proto.graph.input}

    assert [o.name for o in load("multi_output").graph.output] == ["features", "logits"]
    assert built_zoo["multi_output"].logits_index == 1


def test_external_data_is_external(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """All tensors live in weights.bin; the .onnx file alone has no raw weights."""
    model = built_zoo["external_data"]
    bare = onnx.load(str(model.path), load_external_data=False)
    assert all(init.data_location == onnx.TensorProto.EXTERNAL for init in bare.graph.initializer)
    assert (model.path.parent / "weights.bin").stat().st_size > 0


def test_fixed_batch_variants(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """Both fixed-batch models declare batch 1; only fixed_batch1 bakes 1 into a Reshape shape."""
    for name in ("fixed_batch1", "fixed_batch1_flatten"):
        model = built_zoo[name]
        assert model.fixed_batch == 1
        proto = onnx.load(str(model.path))
        assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    proto = onnx.load(str(built_zoo["fixed_batch1"].path))
    reshape = next(n for n in proto.graph.node if n.op_type == "Reshape")
    shape_const = zoo._constant(proto.graph, reshape.input[1])
    assert shape_const is not None and int(shape_const.get()[0]) == 1
    ops = [n.op_type for n in onnx.load(str(built_zoo["fixed_batch1_flatten"].path)).graph.node]
    assert "Flatten" in ops and "Reshape" not in ops


def test_torchscript_archive(built_zoo: dict[str, zoo.ZooModel]) -> None:
    """The .pt loads, carries kernelscope.json, and agrees with its reference ONNX export."""
    import torch

    model = built_zoo["torchscript"]
    assert model.path.suffix == ".pt"
    extra = {"kernelscope.json": ""}
    module = torch.jit.load(str(model.path), _extra_files=extra)
    assert json.loads(extra["kernelscope.json"]) == {"input_shape": [1, 3, 8, 8]}
    x, _ = _eval_set(model)
    with torch.no_grad():
        torch_logits = module(torch.from_numpy(x)).numpy()
    session = _session(model.reference_path)
    onnx_logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(torch_logits, onnx_logits, rtol=1e-4, atol=1e-4)
    conv = zoo.first_conv_node(onnx.load(str(model.reference_path)))
    assert conv.name == model.conv_name
    weight = numpy_helper.to_array(
        next(i for i in onnx.load(str(model.reference_path)).graph.initializer if i.name == conv.input[1])
    )
    assert weight.shape[0] == model.out_channels


def test_build_subset(tmp_path: Path) -> None:
    """build_zoo builds just the requested names and rejects unknown ones."""
    assert list(zoo.build_zoo(tmp_path, ["opset13", "qlinear"])) == ["opset13", "qlinear"]
    with pytest.raises(KeyError):
        zoo.build_zoo(tmp_path, ["nope"])
