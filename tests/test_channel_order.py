"""``--channel-order bgr``: models trained on blue-green-red images (Caffe, OpenCV) get their channels reversed
before the normalization, in onnxruntime's input and in the mirror's differentiable one alike."""

from __future__ import annotations

import json

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from kernelscope.attacks.gradients import model_input_from_unit_pixels
from kernelscope.cli.app import main
from kernelscope.data.preprocessing import Preprocessing

from builders import conv_classifier, random_npz, save


def _bgr_twin(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The same network for BGR input: its first layer's input channels reversed (and a BGR mean)."""
    twin = onnx.ModelProto()
    twin.CopyFrom(proto)
    for i, tensor in enumerate(twin.graph.initializer):
        if tensor.name == "w":
            twin.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor)[:, ::-1], "w"))
    return twin


def test_the_numpy_and_torch_inputs_reverse_the_channels_the_same_way():
    rgb = Preprocessing(1 / 255, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7), "NCHW", (4, 4), 3, "float32")
    bgr = Preprocessing(1 / 255, (0.3, 0.2, 0.1), (0.7, 0.6, 0.5), "NCHW", (4, 4), 3, "float32", channel_order="bgr")
    pixels = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3)).astype(np.float32)
    # BGR normalization of the pixels = RGB normalization, channels reversed (mean / std in BGR order)
    np.testing.assert_allclose(bgr.normalize(pixels), rgb.normalize(pixels)[:, ::-1], rtol=1e-6)
    x01 = torch.as_tensor(pixels / 255.0, dtype=torch.float32)
    np.testing.assert_allclose(model_input_from_unit_pixels(x01, bgr).numpy(), bgr.normalize(pixels), atol=1e-5)


def test_a_bgr_model_told_so_audits_as_its_rgb_original(tmp_path):
    proto = conv_classifier(out_channels=6, seed=3)
    rgb_path, bgr_path = save(proto, tmp_path / "rgb.onnx"), save(_bgr_twin(proto), tmp_path / "bgr.onnx")
    data = random_npz(tmp_path / "d.npz", n=40)
    docs = {}
    for name, path, extra in (
        ("rgb", rgb_path, []),
        ("bgr", bgr_path, ["--channel-order", "bgr"]),
        ("bgr-unsaid", bgr_path, []),
    ):
        out = tmp_path / f"{name}.json"
        args = ["inspect", str(path), "--data", str(data), "--bootstrap", "0", "--eps", "0.05", "--json", str(out)]
        assert main([*args, "-q", *extra]) == 0
        docs[name] = json.loads(out.read_text())
    rgb, bgr, unsaid = docs["rgb"], docs["bgr"], docs["bgr-unsaid"]
    assert bgr["data"]["preprocessing"]["channel_order"] == "bgr"
    assert bgr["data"]["preprocessing"]["sources"]["channel_order"] == "option"
    assert [k["accuracy"] for k in bgr["kernels"]] == [k["accuracy"] for k in rgb["kernels"]]
    assert bgr["fgsm"] == rgb["fgsm"]  # the mirror's gradients went through the same reversal
    # fed RGB, the BGR model sees other images: the flag is what makes the two agree
    assert [k["accuracy"] for k in unsaid["kernels"]] != [k["accuracy"] for k in rgb["kernels"]]


def test_channel_order_from_metadata_and_bad_values(tmp_path, capsys):
    proto = _bgr_twin(conv_classifier(out_channels=6, seed=3))
    entry = proto.metadata_props.add()
    entry.key, entry.value = "kernelscope.preprocessing", json.dumps({"channel_order": "BGR"})
    path, data = save(proto, tmp_path / "m.onnx"), random_npz(tmp_path / "d.npz", n=12)
    out = tmp_path / "r.json"
    assert main(["inspect", str(path), "--data", str(data), "--no-attack", "--json", str(out), "-q"]) == 0
    pre = json.loads(out.read_text())["data"]["preprocessing"]
    assert pre["channel_order"] == "bgr" and pre["sources"]["channel_order"] == "model metadata"
    capsys.readouterr()
    code = main(["inspect", str(path), "--data", str(data), "--channel-order", "grb"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "rgb or bgr" in err and len(err.splitlines()) == 1


def test_bgr_needs_three_channels(tmp_path, capsys):
    path = save(conv_classifier(out_channels=4, in_channels=1, seed=0), tmp_path / "g.onnx")
    data = random_npz(tmp_path / "g.npz", n=8, channels=1)
    code = main(["inspect", str(path), "--data", str(data), "--no-attack", "--channel-order", "bgr"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "3-channel" in err and len(err.splitlines()) == 1
