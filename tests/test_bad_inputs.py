"""A generated corpus of bad inputs: each one gives exit code 2, one clear stderr line, and writes nothing.

Every case builds its files in a fresh folder (no committed binaries), runs ``main`` in-process, and checks
that the folder is byte-for-byte what it was before the run: no report, no hardened model, no temp file,
and no input file touched. The model, data and option corpora run through ``inspect`` and ``neurons`` (with
``neurons``' own messages where it looks at the final linear layer instead of the first Conv, and its own
cases: no linear layer, a layer that is not Gemm/MatMul, weights computed at run time, attack options).
Also here: pickles are never unpickled, Ctrl-C leaves nothing behind, and ``inspect`` and ``neurons`` are
deterministic for a given ``--seed``.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from kernelscope.cli.app import main
from kernelscope.report.json_report import dumps

from builders import conv_classifier, random_npz, save

ROOT = Path(__file__).resolve().parents[1]
TORCHSCRIPT = ROOT / "examples" / "models" / "cifar10_cnn.pt"

#: What a run writes when nothing stops it: every case names these, so a stray file would show up.
REPORT = "report.json"
HARDENED = "hardened.onnx"


# ----------------------------------------------------------------------------------------------- helpers


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``folder`` (hidden temp files included)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("kernelscope: error:"), err
    assert "Traceback" not in err
    assert not lines[0].startswith("kernelscope: error: unexpected "), f"an unforeseen exception: {lines[0]}"
    return lines[0]


def _model(folder: Path, name: str = "model.onnx", **kwargs: object) -> Path:
    return save(conv_classifier(out_channels=4, classes=4, **kwargs), folder / name)  # type: ignore[arg-type]


def _npz(folder: Path, name: str = "data.npz", **arrays: np.ndarray) -> Path:
    np.savez(folder / name, **arrays)
    return folder / name


def _images(n: int = 12, size: int = 8, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, size, size, channels), dtype=np.uint8)


def _labels(n: int = 12, classes: int = 4) -> np.ndarray:
    return np.arange(n) % classes


def _image_folder(folder: Path, classes: int = 4, per_class: int = 2, size: int = 8) -> Path:
    root = folder / "images"
    rng = np.random.default_rng(2)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


def _graph_model(nodes: list, inputs: list, outputs: list, initializers: list, opset: int = 13) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 8)
    return model


def _external_model(folder: Path) -> tuple[Path, onnx.ModelProto]:
    """``model.onnx`` with every tensor in ``weights.bin``; returns the path and the bare (unloaded) proto."""
    path = folder / "model.onnx"
    onnx.save(
        conv_classifier(out_channels=4, classes=4),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    return path, onnx.load(str(path), load_external_data=False)


def _relocate_external(folder: Path, location: str) -> Path:
    path, proto = _external_model(folder)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(proto.SerializeToString())
    return path


class _Evil:
    """A pickle payload that creates ``marker`` when unpickled (via ``os.system``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[[str], int], tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _marker(folder: Path) -> Path:
    return folder.parent / f"{folder.name}-pwned"


# -------------------------------------------------------------------------------------- model builders
# Each builder makes its files in ``d`` and returns the model path; the data is a fitting npz.


def _m_empty(d: Path) -> Path:
    (d / "m.onnx").write_bytes(b"")
    return d / "m.onnx"


def _m_random(d: Path) -> Path:
    (d / "m.onnx").write_bytes(np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return d / "m.onnx"


def _m_truncated(d: Path) -> Path:
    data = conv_classifier(out_channels=4, classes=4).SerializeToString()
    (d / "m.onnx").write_bytes(data[: len(data) // 2])
    return d / "m.onnx"


def _m_text(d: Path) -> Path:
    (d / "m.onnx").write_text("name,accuracy\nresnet,0.9\n")
    return d / "m.onnx"


def _m_no_conv(d: Path) -> Path:
    model = _graph_model(
        [helper.make_node("GlobalAveragePool", ["image"], ["p"]), helper.make_node("Flatten", ["p"], ["logits"])],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [],
    )
    return save(model, d / "m.onnx")


def _m_two_inputs(d: Path) -> Path:
    model = conv_classifier(out_channels=4, classes=4)
    model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["N", 3, 8, 8]))
    model.graph.node.insert(0, helper.make_node("Mul", ["raw", "mask"], ["image"]))
    model.graph.input[0].name = "raw"
    return save(model, d / "m.onnx")


def _m_rank2_input(d: Path) -> Path:
    model = _graph_model(
        [
            helper.make_node("Reshape", ["image", "shape"], ["image4"]),
            helper.make_node("Conv", ["image4", "w"], ["c"], name="conv"),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["logits"]),
        ],
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 192])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])],
        [
            numpy_helper.from_array(np.array([1, 3, 8, 8], dtype=np.int64), "shape"),
            numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w"),
        ],
    )
    return save(model, d / "m.onnx")


def _m_weights(value: float) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
        w[1, 0, 1, 1] = value
        return _model(d, weight_values=w)

    return build


def _m_unsupported_op(d: Path) -> Path:
    model = conv_classifier(out_channels=4, classes=4)
    fc = next(n for n in model.graph.node if n.op_type == "Gemm")
    fc.output[0] = "scores"
    # Det of a square matrix built from the scores: an op the mirror does not implement, fine in onnxruntime.
    model.graph.node.extend(
        [
            helper.make_node("Hardmax", ["scores"], ["hard"], axis=1),
            helper.make_node("Transpose", ["hard"], ["hard_t"], perm=[1, 0]),
            helper.make_node("Einsum", ["hard_t", "hard"], ["square"], equation="ij,jk->ik"),
            helper.make_node("Det", ["square"], ["det"]),
            helper.make_node("Add", ["scores", "det"], ["logits"]),
        ]
    )
    return save(model, d / "m.onnx")


def _m_new_opset(d: Path) -> Path:
    return _model(d, "m.onnx", opset=onnx.defs.onnx_opset_version() + 1)


def _m_external_missing(d: Path) -> Path:
    path, _ = _external_model(d)
    (d / "weights.bin").unlink()
    return path


def _m_external_truncated(d: Path) -> Path:
    path, _ = _external_model(d)
    data = (d / "weights.bin").read_bytes()
    (d / "weights.bin").write_bytes(data[: len(data) // 2])
    return path


def _m_external_parent(d: Path) -> Path:
    sub = d / "sub"
    sub.mkdir()
    path = _relocate_external(sub, "../x.bin")
    os.replace(sub / "weights.bin", d / "x.bin")  # the data really is there: reading it would succeed
    return path


def _m_external_absolute(d: Path) -> Path:
    path = _relocate_external(d, str(d / "weights.bin"))
    return path


def _m_pickle(protocol: int) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        (d / "m.pt").write_bytes(pickle.dumps(_Evil(_marker(d)), protocol=protocol))
        return d / "m.pt"

    return build


def _m_torch_save(d: Path) -> Path:
    import torch

    torch.save(_Evil(_marker(d)), str(d / "m.pt"))  # a zip whose data.pkl runs the payload when loaded
    return d / "m.pt"


def _m_fake_torchscript(d: Path) -> Path:
    """A zip laid out like TorchScript (constants.pkl, data.pkl) whose pickles carry the payload."""
    payload = pickle.dumps(_Evil(_marker(d)), protocol=2)
    with zipfile.ZipFile(d / "m.pt", "w") as archive:
        archive.writestr("m/data.pkl", payload)
        archive.writestr("m/constants.pkl", payload)
        archive.writestr("m/version", "3\n")
    return d / "m.pt"


def _m_zip_not_torchscript(d: Path) -> Path:
    with zipfile.ZipFile(d / "m.pt", "w") as archive:
        archive.writestr("readme.txt", "just a zip")
    return d / "m.pt"


def _m_zip_named_onnx(d: Path) -> Path:
    with zipfile.ZipFile(d / "m.onnx", "w") as archive:
        archive.writestr("model.onnx", b"\x08\x07")
    return d / "m.onnx"


def _m_folder(d: Path) -> Path:
    (d / "m.onnx").mkdir()
    return d / "m.onnx"


def _m_int_input(d: Path) -> Path:
    model = conv_classifier(out_channels=4, classes=4)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT64
    return save(model, d / "m.onnx")


def _m_bad_metadata(d: Path) -> Path:
    model = conv_classifier(out_channels=4, classes=4)
    helper.set_model_props(model, {"kernelscope.preprocessing": "{not json"})
    return save(model, d / "m.onnx")


def _m_bad_reshape(initializer: str) -> Callable[[Path], Path]:
    """``initializer`` stored flat and reshaped by a Reshape node ('fold') to a shape of another size."""

    def build(d: Path) -> Path:
        model = conv_classifier(out_channels=4, classes=4)
        stored = next(t for t in model.graph.initializer if t.name == initializer)
        flat = numpy_helper.to_array(stored).reshape(-1)
        stored.CopyFrom(numpy_helper.from_array(flat, f"{initializer}_flat"))
        model.graph.initializer.append(numpy_helper.from_array(np.array([3, flat.size // 3 + 1], np.int64), "shape"))
        model.graph.node.insert(
            0, helper.make_node("Reshape", [f"{initializer}_flat", "shape"], [initializer], name="fold")
        )
        return save(model, d / "m.onnx")

    return build


MODEL_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    ("empty-file", _m_empty, "is empty (0 bytes)"),
    ("random-bytes", _m_random, "not a readable ONNX model"),
    ("truncated-model", _m_truncated, "not a readable ONNX model"),
    ("text-named-onnx", _m_text, "not a readable ONNX model"),
    ("zip-named-onnx", _m_zip_named_onnx, "could not be loaded as TorchScript: file in archive is not in a"),
    ("folder-as-model", _m_folder, "is a folder"),
    ("missing-model", lambda d: d / "nothing.onnx", "model file not found"),
    ("no-conv", _m_no_conv, "no Conv layer"),
    ("weight-is-graph-input", lambda d: _model(d, weight_as="input"), "first_conv' is a graph input ('w')"),
    ("weight-computed", lambda d: _model(d, weight_as="computed"), "is computed at run time by Add"),
    ("two-image-inputs", _m_two_inputs, "has 2 inputs (raw, mask)"),
    ("rank-2-input", _m_rank2_input, "expects a 4-D image batch"),
    ("int64-input", _m_int_input, "has element type INT64"),
    ("nan-weights", _m_weights(float("nan")), "contains 1 NaN or Inf values"),
    ("inf-weights", _m_weights(float("inf")), "contains 1 NaN or Inf values"),
    ("zero-channel-conv", lambda d: _model(d, weight_values=np.zeros((0, 3, 3, 3), np.float32)), "0 output channels"),
    ("unsupported-op", _m_unsupported_op, "does not support: Einsum (opset 13), Det (opset 13)"),
    ("weight-bad-reshape", _m_bad_reshape("w"), "Reshape node 'fold' cannot be applied to its constant input"),
    ("opset-too-new", _m_new_opset, "newer than the installed onnx"),
    ("opset-too-old", lambda d: _model(d, opset=6), "supports opset 7 and newer"),
    ("bad-metadata-json", _m_bad_metadata, "metadata 'kernelscope.preprocessing' is not valid JSON"),
    ("external-data-missing", _m_external_missing, "external data file 'weights.bin' for tensor"),
    ("external-data-truncated", _m_external_truncated, "is too short for tensor"),
    ("external-data-parent", _m_external_parent, "outside the model's folder"),
    ("external-data-absolute", _m_external_absolute, "only paths inside the model's folder are allowed"),
    ("pickle-protocol-0", _m_pickle(0), "is not a TorchScript archive (no zip header)"),
    ("pickle-protocol-2", _m_pickle(2), "kernelscope never unpickles"),
    ("pickle-protocol-5", _m_pickle(5), "kernelscope never unpickles"),
    ("torch-save-zip", _m_torch_save, "written by torch.save (a pickle)"),
    ("fake-torchscript-zip", _m_fake_torchscript, "could not be loaded as TorchScript"),
    ("zip-not-torchscript", _m_zip_not_torchscript, "could not be loaded as TorchScript"),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_bad_model(capsys: pytest.CaptureFixture[str], tmp_path: Path, build, message: str) -> None:
    data = random_npz(tmp_path / "data.npz", n=12)
    model = build(tmp_path)
    before = _snapshot(tmp_path)
    code = main(["inspect", str(model), "--data", str(data), "--json", str(tmp_path / REPORT), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in _one_line_error(err), err
    assert _snapshot(tmp_path) == before
    assert not _marker(tmp_path).exists(), "a pickle was unpickled"


def test_the_pickle_payload_is_live(tmp_path: Path) -> None:
    """Control for the pickle cases: unpickling the same payload does create the marker."""
    marker = _marker(tmp_path)
    pickle.loads(pickle.dumps(_Evil(marker), protocol=2))
    assert marker.exists()


def test_unsupported_op_runs_without_the_attack(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = random_npz(tmp_path / "data.npz", n=12)
    model = _m_unsupported_op(tmp_path)
    code = main(["inspect", str(model), "--data", str(data), "--no-attack", "--bootstrap", "0", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    code = main(["inspect", str(model), "--data", str(data), "--bootstrap", "0", "-q"])
    assert "--no-attack" in _one_line_error(capsys.readouterr().err)
    assert code == 2


# --------------------------------------------------------------------------------------- data builders
# Each builder makes the data in ``d`` and returns the ``--data`` argument; the model is a 4-class 8x8 RGB one.


def _d_empty_folder(d: Path) -> str:
    (d / "images").mkdir()
    return str(d / "images")


def _d_empty_class(d: Path) -> str:
    root = _image_folder(d)
    (root / "class9").mkdir()
    return str(root)


def _d_corrupt_image(d: Path) -> str:
    root = _image_folder(d)
    png = (root / "class1" / "0.png").read_bytes()
    (root / "class1" / "0.png").write_bytes(png[: len(png) // 2])
    return str(root)


def _d_text_image(d: Path) -> str:
    root = _image_folder(d)
    (root / "class2" / "9.jpg").write_text("not a jpeg")
    return str(root)


def _d_truncated_tar(d: Path) -> str:
    import tarfile

    root = _image_folder(d)
    with tarfile.open(d / "images.tar", "w") as tar:
        tar.add(root, arcname="images")
    data = (d / "images.tar").read_bytes()
    (d / "images.tar").write_bytes(data[: len(data) // 3])
    return str(d / "images.tar")


def _d_npz_random_bytes(d: Path) -> str:
    (d / "data.npz").write_bytes(np.random.default_rng(3).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    return str(d / "data.npz")


def _d_npz_single_array(d: Path) -> str:
    np.save(d / "data.npy", _images())
    os.replace(d / "data.npy", d / "data.npz")
    return str(d / "data.npz")


def _d_npz_object(d: Path) -> str:
    np.savez(d / "data.npz", x=np.array([_Evil(_marker(d))], dtype=object), y=np.array([0]))
    return str(d / "data.npz")


DATA_CASES: list[tuple[str, Callable[[Path], str], str]] = [
    ("npz-zero-images", lambda d: str(_npz(d, x=_images(0), y=_labels(0))), "holds no examples"),
    ("empty-folder", _d_empty_folder, "has no class sub-folders"),
    ("empty-class-folder", _d_empty_class, "holds no images"),
    ("npz-rank-2", lambda d: str(_npz(d, x=np.zeros((12, 64), np.uint8), y=_labels())), "x has shape (12, 64)"),
    ("npz-5-channels", lambda d: str(_npz(d, x=_images(channels=5), y=_labels())), "neither axis 1 nor axis 3"),
    ("labels-out-of-range", lambda d: str(_npz(d, x=_images(), y=_labels(classes=7))), "has label 6 but the model"),
    ("labels-negative", lambda d: str(_npz(d, x=_images(), y=_labels() - 1)), "negative labels"),
    ("labels-fractional", lambda d: str(_npz(d, x=_images(), y=_labels() + 0.5)), "non-integer values"),
    ("fewer-classes", lambda d: str(_image_folder(d, classes=3)), "defines 3 classes but the model outputs 4"),
    ("one-hot-fewer-classes", lambda d: str(_npz(d, x=_images(), y=np.eye(3)[_labels(classes=3)])), "defines 3"),
    ("npz-without-x", lambda d: str(_npz(d, images=_images(), y=_labels())), "no array named x"),
    ("npz-without-y", lambda d: str(_npz(d, x=_images(), labels=_labels())), "no array named y"),
    ("npz-length-mismatch", lambda d: str(_npz(d, x=_images(), y=_labels(11))), "x has 12 images but y has 11"),
    ("npz-nan-pixels", lambda d: str(_npz(d, x=np.full((12, 8, 8, 3), np.nan, np.float32), y=_labels())), "NaN"),
    ("npz-normalised-pixels", lambda d: str(_npz(d, x=_images() / 128.0 - 1.0, y=_labels())), "not normalised"),
    ("npz-random-bytes", _d_npz_random_bytes, "is not a .npz file (no zip header)"),
    ("npz-single-array", _d_npz_single_array, "holds a single array"),
    ("npz-object-array", _d_npz_object, "store plain numeric arrays"),
    ("npz-wrong-size", lambda d: str(_npz(d, x=_images(size=6), y=_labels())), "the images are 6x6"),
    ("corrupt-image", _d_corrupt_image, "cannot read image"),
    ("text-as-image", _d_text_image, "9.jpg (not an image format Pillow knows)"),
    ("truncated-tar", _d_truncated_tar, "images.tar"),
    ("data-names-nothing", lambda d: str(d / "nowhere"), "no such data set or file"),
    ("data-unknown-file", lambda d: str(_model(d, "other.onnx")), "don't know how to read"),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
def test_bad_data(capsys: pytest.CaptureFixture[str], tmp_path: Path, build, message: str) -> None:
    model = _model(tmp_path)
    data = build(tmp_path)
    before = _snapshot(tmp_path)
    code = main(["inspect", str(model), "--data", data, "--json", str(tmp_path / REPORT), "--bootstrap", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in _one_line_error(err), err
    assert _snapshot(tmp_path) == before
    assert not _marker(tmp_path).exists()


# ------------------------------------------------------------------------------------------ bad options


def _existing(path: Path) -> Path:
    path.write_text("keep me")
    return path


def _existing_report(d: Path) -> list[str]:
    return ["--json", str(_existing(d / REPORT))]


OPTION_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("json-in-missing-folder", lambda d: ["--json", str(d / "missing" / "r.json")], "does not exist"),
    ("json-is-the-input", lambda d: ["--json", str(d / "model.onnx")], "is the input file"),
    ("json-is-a-folder", lambda d: ["--json", str(d)], "is a folder"),
    ("json-exists", _existing_report, "already exists; pass --force"),
    ("limit-0", lambda d: ["--limit", "0"], "--limit must be a positive"),
    ("limit-negative", lambda d: ["--limit", "-3"], "--limit must be a positive"),
    ("limit-abc", lambda d: ["--limit", "abc"], "Invalid value for '--limit'"),
    ("eps-negative", lambda d: ["--eps", "-0.1"], "must be finite and >= 0"),
    ("eps-nan", lambda d: ["--eps", "nan"], "must be finite and >= 0"),
    ("eps-abc", lambda d: ["--eps", "abc"], "--eps must be numbers"),
    ("batch-size-0", lambda d: ["--batch-size", "0"], "--batch-size must be positive"),
    ("size-0", lambda d: ["--size", "0,32"], "--size must be positive integers"),
    ("channels-2", lambda d: ["--channels", "2"], "--channels must be 1 or 3"),
    ("layout-ncwh", lambda d: ["--layout", "NCWH"], "layout must be NCHW, NHWC or NHW"),
    ("drop-foo", lambda d: ["--drop", "foo"], "--drop must be"),
    ("bootstrap-negative", lambda d: ["--bootstrap", "-1"], "--bootstrap must be 0 or more"),
    ("atol-0", lambda d: ["--atol", "0"], "--atol must be positive"),
    ("std-0", lambda d: ["--std", "0,1,1"], "std must not contain 0"),
    ("scale-negative", lambda d: ["--scale", "-1"], "--scale must be positive"),
    ("bounds-reversed", lambda d: ["--bounds", "1,0"], "--bounds needs two numbers"),
    ("device-tpu", lambda d: ["--device", "tpu"], "--device must be auto, cpu or cuda"),
    ("layer-missing", lambda d: ["--layer", "nope"], "no node named 'nope'"),
    ("layer-empty", lambda d: ["--layer", ""], "--layer needs a node name or output name, not an empty string"),
    ("output-missing", lambda d: ["--output", "nope"], "no output named 'nope'"),
    ("min-accuracy-2", lambda d: ["--min-accuracy", "2"], "--min-accuracy is a fraction"),
    ("plots-is-the-json", lambda d: ["--plots", str(d / REPORT), "--json", str(d / REPORT)], "is also a file of"),
    ("unknown-option", lambda d: ["--frobnicate"], "No such option"),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in OPTION_CASES], ids=[c[0] for c in OPTION_CASES])
def test_bad_option(capsys: pytest.CaptureFixture[str], tmp_path: Path, build, message: str) -> None:
    model = _model(tmp_path)
    data = random_npz(tmp_path / "data.npz", n=12)
    args = build(tmp_path)
    if "--json" not in args:
        args += ["--json", str(tmp_path / REPORT)]
    before = _snapshot(tmp_path)
    code = main(["inspect", str(model), "--data", str(data), "--bootstrap", "0", *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in _one_line_error(err), err
    assert _snapshot(tmp_path) == before


def test_torchscript_input_shape_must_have_4_dims(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = random_npz(tmp_path / "data.npz", n=12, size=32)
    before = _snapshot(tmp_path)
    code = main(
        ["inspect", str(TORCHSCRIPT), "--data", str(data), "--input-shape", "1,3", "--json", str(tmp_path / REPORT)]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--input-shape needs 4 integers" in _one_line_error(err)
    assert _snapshot(tmp_path) == before


HARDEN_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    ("noise-negative", lambda d: ["--noise", "-1"], "--noise"),
    ("val-fraction-1.5", lambda d: ["--val-fraction", "1.5"], "--val-fraction must be between 0 and 1"),
    ("svd-foo", lambda d: ["--svd", "foo"], "--svd must be"),
    ("clean-budget-200", lambda d: ["--clean-budget", "200"], "--clean-budget"),
    ("eps-negative", lambda d: ["--eps", "-0.5"], "--eps must be a positive number"),
    ("out-is-the-input", lambda d: ["-o", str(d / "model.onnx")], "is the input file"),
    ("out-in-missing-folder", lambda d: ["-o", str(d / "missing" / "h.onnx")], "does not exist"),
    ("out-exists", lambda d: ["-o", str(_existing(d / HARDENED))], "already exists; pass --force"),
    ("out-data-exists", lambda d: ["-o", str(_existing(d / f"{HARDENED}.data").with_suffix(""))], ".data already"),
    ("bad-model", lambda d: ["-o", str(d / HARDENED), "--layer", "relu"], "is a Relu node"),
]


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in HARDEN_CASES], ids=[c[0] for c in HARDEN_CASES])
def test_bad_harden_option(capsys: pytest.CaptureFixture[str], tmp_path: Path, build, message: str) -> None:
    model = _model(tmp_path)
    data = random_npz(tmp_path / "data.npz", n=12)
    args = build(tmp_path)
    if "-o" not in args:
        args += ["-o", str(tmp_path / HARDENED)]
    before = _snapshot(tmp_path)
    code = main(["harden", str(model), "--data", str(data), "--json", str(tmp_path / REPORT), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in _one_line_error(err), err
    assert _snapshot(tmp_path) == before


def test_harden_bad_model_and_data(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    data = random_npz(tmp_path / "data.npz", n=12)
    outside = _m_external_parent(tmp_path)
    good = _model(tmp_path, "ok.onnx")
    out = str(tmp_path / HARDENED)
    before = _snapshot(tmp_path)
    code = main(["harden", str(outside), "--data", str(data), "-o", out])
    assert code == 2
    assert "outside the model's folder" in _one_line_error(capsys.readouterr().err)
    code = main(["harden", str(good), "--data", str(tmp_path / "nope.npz"), "-o", out])
    assert code == 2
    assert "no such data set or file" in _one_line_error(capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


# ----------------------------------------------------------------------------------------------- neurons
# ``neurons`` reads the same model files, data and shared options as ``inspect``: the corpora above run through
# it too. Where it looks at another part of the graph (the final linear layer, not the first Conv) the expected
# message differs, and a few inputs are not bad for it at all.


def _neurons(capsys: pytest.CaptureFixture[str], model: Path, data: str | Path, *args: str) -> tuple[int, str]:
    """Run ``neurons`` with the cheapest attack settings; (exit code, stderr)."""
    code = main(["neurons", str(model), "--data", str(data), "--steps", "1", "--k", "1", *args])
    return code, capsys.readouterr().err


def _gemm(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == "Gemm")


def _initializer(model: onnx.ModelProto, name: str) -> onnx.TensorProto:
    return next(t for t in model.graph.initializer if t.name == name)


def _n_no_linear_layer(d: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten is the output: 4 scores, no Gemm or MatMul anywhere."""
    model = conv_classifier(out_channels=4, classes=4)
    model.graph.node.remove(_gemm(model))
    model.graph.node[-1].output[0] = "logits"
    return save(model, d / "m.onnx")


def _n_after_the_gemm(op: str, value: np.ndarray) -> Callable[[Path], Path]:
    """The Gemm's output goes through ``op`` with a constant ``value`` (node 'calibrate') to the scores."""

    def build(d: Path) -> Path:
        model = conv_classifier(out_channels=4, classes=4)
        _gemm(model).output[0] = "raw"
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), "calibration"))
        model.graph.node.append(helper.make_node(op, ["raw", "calibration"], ["logits"], name="calibrate"))
        return save(model, d / "m.onnx")

    return build


def _n_gemm_input_computed(position: int) -> Callable[[Path], Path]:
    """The Gemm's weight (1) or bias (2) is the output of an Add node ('doubled'), not a stored constant."""

    def build(d: Path) -> Path:
        model = conv_classifier(out_channels=4, classes=4)
        gemm = _gemm(model)
        stored = gemm.input[position]
        gemm.input[position] = f"{stored}_doubled"
        model.graph.node.insert(0, helper.make_node("Add", [stored, stored], [f"{stored}_doubled"], name="doubled"))
        return save(model, d / "m.onnx")

    return build


def _n_gemm_trans_a(d: Path) -> Path:
    """The features are transposed to one image per column and the Gemm has transA=1."""
    model = conv_classifier(out_channels=4, classes=4)
    gemm = _gemm(model)
    gemm.input[0] = "flat_t"
    gemm.attribute.append(helper.make_attribute("transA", 1))
    index = list(model.graph.node).index(gemm)
    model.graph.node.insert(index, helper.make_node("Transpose", ["flat"], ["flat_t"], perm=[1, 0]))
    return save(model, d / "m.onnx")


def _n_gemm_weight(value: float) -> Callable[[Path], Path]:
    def build(d: Path) -> Path:
        model = conv_classifier(out_channels=4, classes=4)
        fc = _initializer(model, "fc")
        array = numpy_helper.to_array(fc).copy()
        array[2, 1] = value
        fc.CopyFrom(numpy_helper.from_array(array, "fc"))
        return save(model, d / "m.onnx")

    return build


def _n_gemm_bias_per_image(d: Path) -> Path:
    """A fixed batch of 12 with a (12, 4) Gemm bias: valid ONNX, but the bias is not one value per class."""
    model = conv_classifier(out_channels=4, classes=4, batch=12)
    bias = _initializer(model, "fc_b")
    bias.CopyFrom(numpy_helper.from_array(np.zeros((12, 4), np.float32), "fc_b"))
    return save(model, d / "m.onnx")


def _n_per_pixel_matmul(d: Path, name: str = "m.onnx") -> Path:
    """A MatMul ('mix') applied to every pixel of the NHWC activations, before the pooling and the Gemm."""
    model = conv_classifier(out_channels=4, classes=4)
    pool = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    pool.input[0] = "mixed"
    index = list(model.graph.node).index(pool)
    model.graph.initializer.append(numpy_helper.from_array(np.eye(4, dtype=np.float32), "mix_w"))
    nodes = list(model.graph.node)
    nodes[index:index] = [
        helper.make_node("Transpose", ["relu"], ["nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("MatMul", ["nhwc", "mix_w"], ["mixed_nhwc"], name="mix"),
        helper.make_node("Transpose", ["mixed_nhwc"], ["mixed"], perm=[0, 3, 1, 2]),
    ]
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return save(model, d / name)


#: ``inspect`` model cases whose expected message differs for ``neurons``; None: not a bad input for ``neurons``.
NEURONS_MODEL_MESSAGES: dict[str, str | None] = {
    "no-conv": None,  # a 3-class model against 4-class data; 'no-linear-layer' below is its neurons twin
    "weight-computed": None,  # the first Conv's weight does not matter to neurons: the run succeeds
    "nan-weights": "the features 'flat' of layer 'fc' are NaN or infinite on 12 of 12 images",
    "inf-weights": "the features 'flat' of layer 'fc' are NaN or infinite on 12 of 12 images",
    "zero-channel-conv": "onnxruntime cannot load the model",
    "unsupported-op": "comes from Add node 'logits', not from a final linear layer",
    "weight-bad-reshape": "onnxruntime cannot load the model",  # neurons never folds the Conv's weight
}

NEURONS_MODEL_CASES: list[tuple[str, Callable[[Path], Path], str]] = [
    (name, build, NEURONS_MODEL_MESSAGES.get(name, message))  # type: ignore[misc]
    for name, build, message in MODEL_CASES
    if NEURONS_MODEL_MESSAGES.get(name, message) is not None
] + [
    ("no-linear-layer", _n_no_linear_layer, "comes from GlobalAveragePool node 'pool', not from a final linear"),
    ("per-class-mul", _n_after_the_gemm("Mul", np.array([1.0, -1.0, 2.0, 1.0])), "from Mul node 'calibrate'"),
    ("negative-temperature", _n_after_the_gemm("Mul", np.array(-2.0)), "from Mul node 'calibrate'"),
    # A per-class Add after the Gemm is a separate bias (Gemm+Add, tests/test_neurons_patterns.py); per image it is not.
    ("per-image-add", _n_after_the_gemm("Add", np.ones((12, 4))), "the bias of Add node 'calibrate' has shape [12, 4]"),
    ("gemm-weight-computed", _n_gemm_input_computed(1), "weight of Gemm node 'fc' is not a constant (it is computed"),
    ("gemm-bias-computed", _n_gemm_input_computed(2), "bias of Gemm node 'fc' is not a constant (it is computed"),
    ("gemm-trans-a", _n_gemm_trans_a, "Gemm node 'fc' has transA=1"),
    ("gemm-nan-weight", _n_gemm_weight(float("nan")), "the weights of Gemm node 'fc' contain NaN or Inf"),
    ("gemm-inf-weight", _n_gemm_weight(float("-inf")), "the weights of Gemm node 'fc' contain NaN or Inf"),
    ("gemm-bias-per-image", _n_gemm_bias_per_image, "the bias of Gemm node 'fc' has shape [12, 4]"),
    ("gemm-weight-bad-reshape", _m_bad_reshape("fc"), "Reshape node 'fold' cannot be applied to its constant"),
]


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in NEURONS_MODEL_CASES], ids=[c[0] for c in NEURONS_MODEL_CASES]
)
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a numpy warning would be a second stderr line
def test_bad_model_neurons(capsys: pytest.CaptureFixture[str], tmp_path: Path, build, message: str) -> None:
    data = random_npz(tmp_path / "data.npz", n=12)
    model = build(tmp_path)
    before = _snapshot(tmp_path)
    code, err = _neurons(capsys, model, data, "--json", str(tmp_path / REPORT))
    assert code == 2, err
    assert message in _one_line_error(err), err
    assert _snapshot(tmp_path) == before
    assert not _marker(tmp_path).exists(), "a pickle was unpickled"


def test_neurons_runs_where_inspect_refuses_the_first_conv(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """Control for the skipped 'weight-computed' case: the first Conv's weight is not the neurons' business."""
    data = random_npz(tmp_path / "data.npz", n=12)
    model = _model(tmp_path, weight_as="computed")
    code, err = _neurons(capsys, model, data, "--no-attack", "-q")
    assert code == 0, err


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in DATA_CASES], ids=[c[0] for c in DATA_CASES])
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a numpy warning would be a second stderr line
def test_bad_data_neurons(capsys: pytest.CaptureFixture[str], tmp_path: Path, build, message: str) -> None:
    model = _model(tmp_path)
    data = build(tmp_path)
    before = _snapshot(tmp_path)
    code, err = _neurons(capsys, model, data, "--json", str(tmp_path / REPORT))
    assert code == 2, err
    assert message in _one_line_error(err), err
    assert _snapshot(tmp_path) == before
    assert not _marker(tmp_path).exists()


def _figure_in(d: Path) -> list[str]:
    """A --plots folder that already holds the neurons success figure (and an inspect figure, which is fine)."""
    (d / "figures").mkdir()
    _existing(d / "figures" / "fig1_kernel_accuracy.png")
    _existing(d / "figures" / "neurons_success_vs_k.png")
    return ["--plots", str(d / "figures")]


#: ``inspect`` option cases that differ for ``neurons``; None: the option does not exist there.
NEURONS_OPTION_MESSAGES: dict[str, str | None] = {
    "eps-negative": "--eps must be a positive number, not -0.1",
    "eps-nan": "--eps must be a positive number, not nan",
    "eps-abc": "Invalid value for '--eps'",
    "drop-foo": None,
    "bootstrap-negative": None,
    "min-accuracy-2": None,
}

NEURONS_OPTION_CASES: list[tuple[str, Callable[[Path], list[str]], str]] = [
    (name, build, NEURONS_OPTION_MESSAGES.get(name, message))  # type: ignore[misc]
    for name, build, message in OPTION_CASES
    if NEURONS_OPTION_MESSAGES.get(name, message) is not None
] + [
    ("layer-is-a-conv", lambda d: ["--layer", "first_conv"], "--layer 'first_conv' is a Conv node; choose a Gemm"),
    ("layer-is-a-relu", lambda d: ["--layer", "relu"], "--layer 'relu' is a Relu node; choose a Gemm"),
    ("layer-per-pixel-matmul", lambda d: ["--layer", "mix"], "holds 256 values per image but layer 'mix' has 4"),
    ("k-0", lambda d: ["--k", "0"], "--k must be positive integers, not '0'"),
    ("k-negative", lambda d: ["--k", "1,-4"], "--k must be positive integers, not '1,-4'"),
    ("k-fraction", lambda d: ["--k", "1.5"], "--k must be integers separated by commas, not '1.5'"),
    ("k-abc", lambda d: ["--k", "abc"], "--k must be integers separated by commas, not 'abc'"),
    ("k-empty", lambda d: ["--k", ","], "--k needs positive neuron counts, not []"),
    ("eps-0", lambda d: ["--eps", "0"], "--eps must be a positive number, not 0.0"),
    ("eps-inf", lambda d: ["--eps", "inf"], "--eps must be a positive number, not inf"),
    ("steps-0", lambda d: ["--steps", "0"], "--steps must be at least 1, not 0"),
    ("steps-negative", lambda d: ["--steps", "-5"], "--steps must be at least 1, not -5"),
    ("steps-abc", lambda d: ["--steps", "abc"], "Invalid value for '--steps'"),
    ("step-size-0", lambda d: ["--step-size", "0"], "--step-size must be a positive number, not 0.0"),
    ("step-size-negative", lambda d: ["--step-size", "-0.1"], "--step-size must be a positive number, not -0.1"),
    ("step-size-nan", lambda d: ["--step-size", "nan"], "--step-size must be a positive number, not nan"),
    ("lam-negative", lambda d: ["--lam", "-1"], "--lam must be 0 or more, not -1.0"),
    ("lam-nan", lambda d: ["--lam", "nan"], "--lam must be 0 or more, not nan"),
    ("lam-inf", lambda d: ["--lam", "inf"], "--lam must be 0 or more, not inf"),
    ("norm-l1", lambda d: ["--norm", "l1"], "--norm must be linf or l2, not 'l1'"),
    ("top-0", lambda d: ["--top", "0"], "--top must be positive, not 0"),
    ("top-negative", lambda d: ["--top", "-2"], "--top must be positive, not -2"),
    ("html-is-a-folder", lambda d: ["--html", str(d)], "is a folder; give a file path"),
    ("html-exists", lambda d: ["--html", str(_existing(d / "r.html"))], "already exists; pass --force"),
    ("html-is-the-json", lambda d: ["--html", str(d / REPORT)], "is also another output of this command"),
    ("html-in-missing-folder", lambda d: ["--html", str(d / "missing" / "r.html")], "does not exist"),
    ("plots-is-a-file", lambda d: ["--plots", str(_existing(d / "figures.png"))], "is a file; give a folder"),
    ("plots-figure-exists", _figure_in, "neurons_success_vs_k.png already exists; pass --force to overwrite it"),
    ("plots-is-the-html", lambda d: ["--plots", str(d / "r.html"), "--html", str(d / "r.html")], "also a file"),
]


@pytest.mark.parametrize(
    ("build", "message"), [c[1:] for c in NEURONS_OPTION_CASES], ids=[c[0] for c in NEURONS_OPTION_CASES]
)
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a numpy warning would be a second stderr line
def test_bad_option_neurons(capsys: pytest.CaptureFixture[str], tmp_path: Path, build, message: str) -> None:
    model = _n_per_pixel_matmul(tmp_path, "model.onnx")  # the builders' model plus a MatMul before the pooling
    data = random_npz(tmp_path / "data.npz", n=12)
    args = build(tmp_path)
    if "--json" not in args:
        args += ["--json", str(tmp_path / REPORT)]
    before = _snapshot(tmp_path)
    code, err = _neurons(capsys, model, data, *args)
    assert code == 2, err
    assert message in _one_line_error(err), err
    assert _snapshot(tmp_path) == before


def test_neurons_option_control(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The model of the option cases is fine for neurons: it is the options that are refused."""
    model = _n_per_pixel_matmul(tmp_path, "model.onnx")
    data = random_npz(tmp_path / "data.npz", n=12)
    code, err = _neurons(capsys, model, data, "-q")
    assert code == 0, err


# ---------------------------------------------------------------------------------- Ctrl-C, determinism


@pytest.mark.parametrize("command", ["inspect", "harden"])
def test_ctrl_c_mid_run_leaves_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    from kernelscope import scoring

    model = _model(tmp_path)
    data = random_npz(tmp_path / "data.npz", n=24)
    calls = {"n": 0}
    original = scoring.KernelDropRunner.predict

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:  # let the baseline run, then stop in the middle of the kernels
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(scoring.KernelDropRunner, "predict", interrupted)
    before = _snapshot(tmp_path)
    args = ["-o", str(tmp_path / HARDENED), "--noise", "0.01"] if command == "harden" else ["--no-attack"]
    code = main(
        [command, str(model), "--data", str(data), "--json", str(tmp_path / REPORT), "--batch-size", "4", *args]
    )
    err = capsys.readouterr().err
    assert calls["n"] > 2
    assert code == 130
    assert "interrupted" in _one_line_error(err)
    assert _snapshot(tmp_path) == before
    assert list(tmp_path.iterdir()) == sorted(tmp_path.iterdir())  # nothing hidden either (rglob covers it)


def test_ctrl_c_while_writing_leaves_no_temp_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kernelscope import io

    model = _model(tmp_path)
    data = random_npz(tmp_path / "data.npz", n=12)

    def interrupted_fsync(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(io.os, "fsync", interrupted_fsync)
    before = _snapshot(tmp_path)
    code = main(["inspect", str(model), "--data", str(data), "--no-attack", "--json", str(tmp_path / REPORT), "-q"])
    err = capsys.readouterr().err
    assert code == 130
    assert "interrupted" in _one_line_error(err)
    assert _snapshot(tmp_path) == before


def test_same_seed_same_json_with_the_attack(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    model = _model(tmp_path)
    data = random_npz(tmp_path / "data.npz", n=40)
    texts = []
    for name in ("a.json", "b.json"):
        code = main(
            ["inspect", str(model), "--data", str(data), "--limit", "30", "--seed", "7", "--bootstrap", "200",
             "--eps", "0.01,0.05", "--json", str(tmp_path / name), "-q"]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        doc = json.loads((tmp_path / name).read_text())
        assert doc["fgsm"] and doc["targeting"]
        doc.pop("timings")
        doc.pop("execution", None)  # how the variants ran: the measured choice may differ between runs
        texts.append(dumps(doc))  # the writer's own serialization: byte-for-byte comparable
    assert texts[0] == texts[1]


def test_neurons_same_seed_same_json_with_the_attacks(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte-identical ``neurons`` JSON (less ``timings``) for the same --seed, random starts included; the
    random starts of both attacks are drawn from --seed, as for ``inspect --attack pgd``."""
    from kernelscope.neurons import attack

    seeds: list[int] = []
    original = attack.pgd

    def recording(*args, **kwargs):
        seeds.append(kwargs["generator"].bit_generator.seed_seq.entropy)
        return original(*args, **kwargs)

    monkeypatch.setattr(attack, "pgd", recording)
    model = save(conv_classifier(out_channels=6, classes=4, seed=3), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "data.npz", n=40)
    texts = []
    for name in ("a.json", "b.json"):
        code = main(
            ["neurons", str(model), "--data", str(data), "--limit", "30", "--seed", "7", "--steps", "3",
             "--k", "1,2", "--random-start", "--json", str(tmp_path / name), "-q"]
        )  # fmt: skip
        assert code == 0, capsys.readouterr().err
        doc = json.loads((tmp_path / name).read_text())
        assert doc["neurons"]["single_neuron_attack"]["attacks"] > 0 and doc["neurons"]["pgd"]["images"] == 30
        doc.pop("timings")
        doc.pop("execution", None)  # how the variants ran: the measured choice may differ between runs
        texts.append(dumps(doc))  # the writer's own serialization: byte-for-byte comparable
    assert texts[0] == texts[1]
    assert seeds and set(seeds) == {7}


def test_onnxruntime_errors_are_not_printed_twice(tmp_path: Path) -> None:
    """onnxruntime logs its own copy of an error from C++ (fd 2, out of capsys's reach): a real process shows it."""
    model = conv_classifier(out_channels=4, classes=4)
    bias = next(t for t in model.graph.initializer if t.name == "fc_b")
    bias.raw_data = bias.raw_data[:11]  # 11 bytes for 4 floats: onnxruntime refuses the file
    path = save(model, tmp_path / "m.onnx")
    data = random_npz(tmp_path / "data.npz", n=12)
    proc = subprocess.run(
        [sys.executable, "-m", "kernelscope", "inspect", str(path), "--data", str(data), "--no-attack"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert "onnxruntime cannot load the model" in line and "raw_data size (11 bytes)" in line
    assert ".cc:" not in line  # no C++ source locations
