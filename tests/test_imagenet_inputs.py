"""ImageNet-style inputs: ``--resize 256 --crop 224`` (the standard evaluation transform), the ``imagenet``
preset, synset-named class folders mapped by ``--classes FILE``, and a 224-px model through ``inspect``; checked
against a transform and an onnxruntime run written here independently."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from kernelscope.cli.app import main
from kernelscope.data.folders import load_class_index, load_image_folder

SYNSETS = ["n01440764", "n01443537", "n02102040"]  # three ImageNet synsets, at output indices 0, 1 and 217
INDICES = {"n01440764": 0, "n01443537": 1, "n02102040": 217}


def _photo(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A smooth random colour image (JPEG-friendly), not square, larger than the crop."""
    coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3)).astype(np.uint8)
    return Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory):
    """An ImageNet-validation-style folder: <synset>/<file>.JPEG, photos of several sizes and aspects."""
    root = tmp_path_factory.mktemp("imagenet") / "val"
    rng = np.random.default_rng(0)
    sizes = [(300, 400), (375, 500), (500, 333), (256, 256), (480, 640)]
    for s, synset in enumerate(SYNSETS):
        (root / synset).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            _photo(rng, h, w).save(root / synset / f"ILSVRC2012_val_{s * 10 + i:08d}.JPEG", quality=92)
    index = root.parent / "imagenet_class_index.json"
    index.write_text(json.dumps({str(v): [k, f"class {v}"] for k, v in INDICES.items()}))
    return root, index


def _reference_transform(path: Path) -> np.ndarray:
    """Resize the shorter side to 256 (bilinear), centre-crop 224: torchvision's evaluation transform."""
    image = Image.open(path).convert("RGB")
    scale = 256 / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BILINEAR)
    pixels = np.asarray(image)
    top, left = round((pixels.shape[0] - 224) / 2), round((pixels.shape[1] - 224) / 2)
    return pixels[top : top + 224, left : left + 224]


def test_resize_and_centre_crop_match_the_standard_transform(val_folder):
    root, index = val_folder
    data = load_image_folder(root, resize=256, crop=224, class_index=index)
    # A partial index (3 of ImageNet's 1,000 classes) gives the labels, not the number of classes.
    assert data.images.shape == (15, 224, 224, 3) and data.num_classes is None and data.class_names is None
    files = sorted(p for p in root.rglob("*.JPEG"))
    for pixels, path in zip(data.images, files, strict=True):
        np.testing.assert_array_equal(pixels, _reference_transform(path))
    assert data.labels.tolist() == [INDICES[p.parent.name] for p in files]
    complete = root.parent / "complete.json"
    complete.write_text(json.dumps({str(i): [s, f"label {i}"] for i, s in enumerate(SYNSETS)}))
    full = load_image_folder(root, resize=256, crop=224, class_index=complete)
    assert full.num_classes == 3 and full.class_names == ("label 0", "label 1", "label 2")


@pytest.mark.parametrize("kind", ["name-to-index", "index-to-list", "list", "text"])
def test_class_index_formats(tmp_path, kind):
    path = tmp_path / ("idx.txt" if kind == "text" else "idx.json")
    if kind == "name-to-index":
        path.write_text(json.dumps({"b": 1, "a": 0}))
    elif kind == "index-to-list":
        path.write_text(json.dumps({"0": ["a", "apple"], "1": ["b", "banana"]}))
    elif kind == "list":
        path.write_text(json.dumps(["a", "b"]))
    else:
        path.write_text("a apple, Malus\nb banana\n")
    mapping = load_class_index(path)
    assert {k: v[0] for k, v in mapping.items()} == {"a": 0, "b": 1}


class _Stem224(torch.nn.Module):
    """An ImageNet-shaped first layer (7 x 7, stride 2) and pool, 1,000 classes; small enough for a test."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 7, stride=2, padding=3)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.fc = torch.nn.Linear(8, 1000)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv(x))).mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def stem224(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    net = _Stem224().eval()
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 3, 224, 224),), buffer, dynamo=False, opset_version=17, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    model = tmp_path_factory.mktemp("stem224") / "stem224.onnx"
    onnx.save(onnx.load_from_string(buffer.getvalue()), str(model))
    return model


GEOMETRY = ["--resize", "256", "--crop", "224", "--preset", "imagenet"]


def test_a_224_px_model_is_audited_on_resized_and_cropped_photos(val_folder, stem224, tmp_path, capsys):
    root, index = val_folder
    model = stem224
    out = tmp_path / "r.json"
    args = ["inspect", str(model), "--data", str(root), "--resize", "256", "--crop", "224", "--preset", "imagenet"]
    args += ["--classes", str(index), "--eps", "0.002", "--bootstrap", "0", "--json", str(out), "-q"]
    assert main(args) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    pre = doc["data"]["preprocessing"]
    assert pre["mean"] == [0.485, 0.456, 0.406] and pre["std"] == [0.229, 0.224, 0.225] and pre["size"] == [224, 224]
    assert doc["data"]["n"] == 15 and doc["layer"]["kernel_shape"] == [7, 7] and len(doc["kernels"]) == 8
    # The baseline is what onnxruntime gives on the same transform, normalized by hand.
    files = sorted(root.rglob("*.JPEG"))
    x = np.stack([_reference_transform(p) for p in files]).astype(np.float32) / 255.0
    x = ((x - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])).astype(np.float32)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    predictions = session.run(None, {"input": x.transpose(0, 3, 1, 2)})[0].argmax(axis=1)
    labels = np.array([INDICES[p.parent.name] for p in files])
    assert doc["baseline_accuracy"] == pytest.approx(float(np.mean(predictions == labels)))


@pytest.mark.parametrize(
    "command",
    [
        ["inspect", "--method", "hybrid", "--no-attack", "--bootstrap", "0"],
        [
            "harden",
            "--method",
            "adversarial",
            "--epochs",
            "1",
            "--strengths",
            "1",
            "--sweep",
            "0.002",
            "--pgd-steps",
            "2",
            "--pgd-restarts",
            "1",
            "--clean-budget",
            "100",
            "--force-write",
        ],
        ["neurons", "--steps", "2", "--k", "1"],
    ],
    ids=["inspect-hybrid", "harden", "neurons"],
)
def test_a_224_px_model_goes_through_every_command(val_folder, stem224, tmp_path, capsys, command):
    root, index = val_folder
    args = [command[0], str(stem224), "--data", str(root), *GEOMETRY, "--classes", str(index), *command[1:]]
    if command[0] == "harden":  # fine-tuning at 224 px on other photos of the same classes
        train = tmp_path / "train"
        rng = np.random.default_rng(1)
        for synset in SYNSETS:
            (train / synset).mkdir(parents=True)
            for i in range(3):
                _photo(rng, 260 + 20 * i, 300).save(train / synset / f"{i}.JPEG", quality=92)
        args += ["--train-data", str(train), "-o", str(tmp_path / "h.onnx")]
    out = tmp_path / "r.json"
    code = main([*args, "--json", str(out), "-q"])
    # A random-weight model: harden may find nothing to gain (exit 1, nothing written); it must get that far.
    assert code == 0 or (command[0] == "harden" and code == 1), capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["data"]["preprocessing"]["size"] == [224, 224] and doc["data"]["n"] == 15
    if command[0] == "harden":
        assert doc["harden"]["candidates"] and doc["harden"]["before"]["robustness"]["worst"] is not None
        if (tmp_path / "h.onnx").exists():
            onnx.checker.check_model(str(tmp_path / "h.onnx"), full_check=True)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--preset", "coco"], "--preset must be one of"),
        (["--resize", "0"], "--resize must be a positive"),
        (["--crop", "600"], "smaller than --crop 600"),
    ],
)
def test_bad_geometry_options_are_one_line_errors(val_folder, tmp_path, capsys, extra, needle):
    root, _ = val_folder
    model = tmp_path / "m.onnx"
    from builders import conv_classifier, save

    save(conv_classifier(out_channels=4, seed=1), model)
    code = main(["inspect", str(model), "--data", str(root), "--no-attack", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_folder_options_on_other_data_and_unknown_folders_are_refused(val_folder, tmp_path, capsys):
    from builders import conv_classifier, random_npz, save

    root, _ = val_folder
    model = save(conv_classifier(out_channels=4, seed=1), tmp_path / "m.onnx")
    data = random_npz(tmp_path / "d.npz", n=10)
    code = main(["inspect", str(model), "--data", str(data), "--resize", "40", "--no-attack"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "apply to image folders" in err and len(err.splitlines()) == 1
    index = tmp_path / "two.json"
    index.write_text(json.dumps({SYNSETS[0]: 0, SYNSETS[1]: 1}))
    code = main(["inspect", str(model), "--data", str(root), "--classes", str(index), "--no-attack"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and SYNSETS[2] in err and "not in the class index" in err


@pytest.mark.parametrize("shape", ["resnet18", "resnet50", "mobilenet_v2"])
def test_imagenet_architectures_are_scored_like_the_zeroed_model(val_folder, tmp_path, capsys, shape):
    """ResNet-18/-50 and MobileNetV2 shapes at 224 px (narrow widths, the published stems: 64 kernels 7 x 7 / 2,
    or 32 of 3 x 3 / 2 with ReLU6): the mirror passes its parity check, and exact scores equal onnxruntime on
    the model with the kernel's weights zeroed, with either scoring mechanism."""
    import imagenet_shapes

    root, index = val_folder
    torch.manual_seed(1)
    net = getattr(imagenet_shapes, shape)(width=0.125 if shape != "mobilenet_v2" else 0.25)
    model = tmp_path / f"{shape}.onnx"
    imagenet_shapes.export(net, model)
    docs = {}
    for mechanism in ("mask", "sessions"):
        out = tmp_path / f"{mechanism}.json"
        args = ["inspect", str(model), "--data", str(root), *GEOMETRY, "--classes", str(index), "--json", str(out)]
        args += ["--eps", "0.002", "--bootstrap", "0", "--mechanism", mechanism, "-q"]
        assert main(args) == 0, capsys.readouterr().err
        docs[mechanism] = json.loads(out.read_text())
    doc = docs["mask"]
    assert doc["mirror"]["ok"] and doc["execution"]["mechanism"] == "mask"
    assert docs["sessions"]["execution"]["mechanism"] == "sessions"
    assert [k["accuracy"] for k in docs["sessions"]["kernels"]] == [k["accuracy"] for k in doc["kernels"]]
    kernels = 32 if shape == "mobilenet_v2" else 64
    assert len(doc["kernels"]) == kernels
    proto = onnx.load(str(model))
    conv = next(n for n in proto.graph.node if n.op_type == "Conv")
    x = np.stack([_reference_transform(p) for p in sorted(root.glob("*/*.JPEG"))]).astype(np.float32) / 255.0
    x = ((x - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225]).transpose(0, 3, 1, 2).astype(np.float32)
    labels = np.repeat([INDICES[s] for s in SYNSETS], 5)
    for k in (0, kernels // 2, kernels - 1):
        zeroed = onnx.ModelProto()
        zeroed.CopyFrom(proto)
        for tensor in zeroed.graph.initializer:
            if tensor.name in conv.input[1:]:
                values = onnx.numpy_helper.to_array(tensor).copy()
                values[k] = 0
                tensor.CopyFrom(onnx.numpy_helper.from_array(values, tensor.name))
        session = ort.InferenceSession(zeroed.SerializeToString(), providers=["CPUExecutionProvider"])
        accuracy = float(np.mean(session.run(None, {"input": x})[0].argmax(axis=1) == labels))
        assert doc["kernels"][k]["accuracy"] == pytest.approx(accuracy), k
