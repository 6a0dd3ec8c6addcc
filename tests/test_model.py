"""Loading models and finding the audited convolution."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from kernelscope.errors import ModelError, UsageError
from kernelscope.model.first_conv import find_conv
from kernelscope.model.graph import GraphIndex
from kernelscope.model.loading import load_model

from builders import conv_classifier, save


def test_topological_order_ignores_file_order():
    model = conv_classifier(reverse_nodes=True)
    index = GraphIndex.build(model.graph)
    order = [model.graph.node[i].name for i in index.topological_order()]
    assert order == ["first_conv", "relu", "pool", "flatten", "fc"]


@pytest.mark.parametrize("weight_as", ["initializer", "constant", "identity"])
def test_weight_sources(weight_as, tmp_path):
    w = np.random.default_rng(3).standard_normal((5, 3, 3, 3)).astype(np.float32)
    model = load_model(save(conv_classifier(weight_as=weight_as, weight_values=w, out_channels=5), tmp_path / "m.onnx"))
    layer = find_conv(model.proto, model.image_input.name)
    assert layer.name == "first_conv"
    assert (layer.out_channels, layer.in_channels, layer.kernel_shape) == (5, 3, (3, 3))
    np.testing.assert_array_equal(layer.weight, w)


def test_first_conv_is_nearest_to_the_input_not_first_in_file(tmp_path):
    """A deeper Conv listed first in the file must not be taken for the first layer."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 3, 3)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["a", "w2"], ["b"], name="deep", pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["image"], ["nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Sub", ["nchw", "mean"], ["centered"], name="sub_mean"),
        helper.make_node("Conv", ["centered", "w1"], ["a"], name="shallow", pads=[1, 1, 1, 1]),
        helper.make_node("ReduceMean", ["b"], ["logits"], axes=[2, 3], keepdims=0),
    ]
    inits.append(numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "mean"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 8, 8, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    loaded = load_model(save(model, tmp_path / "nhwc.onnx"))
    assert find_conv(loaded.proto, "image").name == "shallow"
    assert find_conv(loaded.proto, "image", layer="deep").name == "deep"
    with pytest.raises(UsageError, match="no node named"):
        find_conv(loaded.proto, "image", layer="nope")
    with pytest.raises(UsageError, match="Transpose"):
        find_conv(loaded.proto, "image", layer="to_nchw")


def test_no_conv_is_a_one_line_model_error(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["image"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
    )
    model = load_model(save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match="no Conv layer") as info:
        find_conv(model.proto, "image")
    assert "\n" not in str(info.value)


def test_runtime_weight_is_refused(tmp_path):
    model = load_model(save(conv_classifier(weight_as="computed"), tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match="computed at run time by Add"):
        find_conv(model.proto, "image")


def test_weight_as_graph_input_is_refused(tmp_path):
    with pytest.raises(ModelError, match=r"the weight of Conv node .first_conv. is a graph input"):
        load_model(save(conv_classifier(weight_as="input"), tmp_path / "m.onnx"))


def test_nan_weights_are_refused(tmp_path):
    w = np.ones((4, 3, 3, 3), np.float32)
    w[1, 0, 0, 0] = np.nan
    model = load_model(save(conv_classifier(weight_values=w, out_channels=4), tmp_path / "m.onnx"))
    with pytest.raises(ModelError, match="NaN or Inf"):
        find_conv(model.proto, "image")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"", "empty"),
        (b"hello, this is text, not a model\n" * 3, "not a readable ONNX model"),
        (b"\x80\x04\x95random pickle bytes", "pickle"),
    ],
)
def test_unreadable_files(tmp_path, content, match):
    path = tmp_path / ("m.pt" if content.startswith(b"\x80") else "m.onnx")
    path.write_bytes(content)
    with pytest.raises(ModelError, match=match):
        load_model(path)


def test_external_data_outside_folder_is_refused(tmp_path):
    model = conv_classifier()
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(model, str(folder / "m.onnx"), save_as_external_data=True, location="w.bin", size_threshold=0)
    loaded = load_model(folder / "m.onnx")  # inside the folder: fine
    assert find_conv(loaded.proto, "image").out_channels == 6
    proto = onnx.load(str(folder / "m.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../w.bin"
    onnx.save(proto, str(folder / "evil.onnx"))
    with pytest.raises(ModelError, match="outside the model's folder"):
        load_model(folder / "evil.onnx")
    (folder / "w.bin").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(folder / "m.onnx")


def test_newer_opset_than_onnx_supports(tmp_path):
    model = conv_classifier()
    model.opset_import[0].version = onnx.defs.onnx_opset_version() + 5
    with pytest.raises(ModelError, match="newer than the installed onnx"):
        load_model(save(model, tmp_path / "m.onnx"))


def test_input_file_is_never_written(tmp_path):
    path = save(conv_classifier(batch=1), tmp_path / "m.onnx")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    model = load_model(path)
    find_conv(model.proto, "image")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
