"""The reference models shipped in examples/: they load, their two formats agree, kernelscope audits them.

No ../shared data: the CIFAR-10 models are checked on the shipped 1,000-image sample, the MNIST model on
seeded random digits-like inputs (only the agreement of its two files is checked there).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from kernelscope.data.preprocessing import select_examples
from kernelscope.data.sources import load_dataset

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "examples" / "models"
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"
REFERENCE = ["cifar10_resnet8_e1", "cifar10_resnet8_e5", "cifar10_resnet8_e10", "mnist_cnn", "cifar10_stem224"]


def _normalize(images: np.ndarray, preprocessing: dict) -> np.ndarray:
    x = images.astype(np.float32) * np.float32(preprocessing["scale"])
    x = (x - np.array(preprocessing["mean"], np.float32)) / np.array(preprocessing["std"], np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def _metadata(stem: str) -> dict:
    import onnx

    props = {p.key: p.value for p in onnx.load(str(MODELS / f"{stem}.onnx")).metadata_props}
    return {"preprocessing": json.loads(props["kernelscope.preprocessing"]), "dataset": props["kernelscope.dataset"]}


@pytest.mark.parametrize("stem", REFERENCE)
def test_onnx_and_torchscript_agree(stem):
    meta = _metadata(stem)
    size, channels = meta["preprocessing"]["size"], meta["preprocessing"]["channels"]
    images = np.random.default_rng(0).integers(0, 256, size=(16, *size, channels), dtype=np.uint8)
    x = _normalize(images, meta["preprocessing"])
    session = ort.InferenceSession(str(MODELS / f"{stem}.onnx"), providers=["CPUExecutionProvider"])
    extra = {"kernelscope.json": ""}
    scripted = torch.jit.load(str(MODELS / f"{stem}.pt"), _extra_files=extra).eval()
    with torch.no_grad():
        expected = scripted(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, atol=1e-4, rtol=1e-4)
    assert json.loads(extra["kernelscope.json"])["dataset"] == meta["dataset"]


def test_longer_training_gives_higher_accuracy_on_real_images():
    """On the shipped real CIFAR-10 sample the three ResNet-8 lengths rank 1 < 5 < 10 epochs, as trained."""
    dataset = select_examples(load_dataset(str(SAMPLE)), 500, 0)
    accuracies = []
    for epochs in (1, 5, 10):
        stem = f"cifar10_resnet8_e{epochs}"
        x = _normalize(dataset.images, _metadata(stem)["preprocessing"])
        session = ort.InferenceSession(str(MODELS / f"{stem}.onnx"), providers=["CPUExecutionProvider"])
        predicted = session.run(None, {"input": x})[0].argmax(axis=1)
        accuracies.append(float(np.mean(predicted == dataset.labels)))
        recorded = json.loads((MODELS / f"{stem}.train.json").read_text())["test_accuracy_onnx"]
        assert abs(accuracies[-1] - recorded) < 0.08  # the sample is 500 of the 10,000 images scored there
    assert accuracies[0] < accuracies[1] < accuracies[2], accuracies


@pytest.mark.parametrize("stem", ["cifar10_resnet8_e10", "mnist_cnn"])
def test_kernelscope_finds_the_stem_convolution(stem):
    from kernelscope.model.first_conv import find_conv
    from kernelscope.model.loading import load_model

    loaded = load_model(str(MODELS / f"{stem}.onnx"))
    layer = find_conv(loaded.proto, loaded.image_input.name)
    assert layer.op_type == "Conv"
    assert layer.weight.shape[0] == (32 if stem.startswith("cifar10") else 16)
    assert layer.weight.shape[1] == (3 if stem.startswith("cifar10") else 1)


def test_the_224_px_model_reads_upscaled_photos_as_it_was_trained():
    """cifar10_stem224 through kernelscope's --resize 256 --crop 224: its ImageNet-style first layer is found,
    and on 200 sample photos it is far above chance (44.7 % on the full test set when it was trained)."""
    from kernelscope.audit import InspectConfig, load_audit_inputs
    from kernelscope.data.preprocessing import PreprocessingOptions

    config = InspectConfig(
        data=str(SAMPLE), limit=200, bootstrap=0, preprocessing=PreprocessingOptions(resize=256, crop=224)
    )
    inputs = load_audit_inputs(MODELS / "cifar10_stem224.onnx", config)
    layer = inputs.layer
    assert (layer.out_channels, list(layer.weight.shape[2:]), tuple(layer.strides)) == (64, [7, 7], (2, 2))
    session = ort.InferenceSession(str(MODELS / "cifar10_stem224.onnx"), providers=["CPUExecutionProvider"])
    predicted = np.concatenate([session.run(None, {"input": x})[0].argmax(1) for x, _ in inputs.data.batches(50)])
    assert predicted.shape == (200,)
    assert np.mean(predicted == inputs.data.labels) > 0.3  # chance: 0.1
