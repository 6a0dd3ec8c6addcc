"""On every export style of the zoo: kernelscope finds the right convolution, and its kernel scores equal
an independent direct computation (tests/zoo.py: the model with that kernel's weights edited, run in
onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from kernelscope.data.dataset import ImageDataset
from kernelscope.data.preprocessing import PreparedData, resolve_preprocessing
from kernelscope.model.first_conv import find_conv
from kernelscope.model.loading import load_model
from kernelscope.scoring import KernelDropRunner, score_kernels

import zoo

#: The reference zeroes the separate bias Add of a bias-less Conv too: that is --drop channel here.
DROP_MODE = {"conv_bias_add": "channel"}
#: Images per run, for kernelscope and the reference alike: a dynamically quantized model (conv_integer)
#: quantizes each run with the range of all its images, so its predictions depend on the batch.
BATCH = 32


def _kernelscope_scores(model: zoo.ZooModel, images: np.ndarray, labels: np.ndarray):
    loaded = load_model(model.path)
    layer = find_conv(loaded.proto, loaded.image_input.name)
    dataset = ImageDataset("zoo", images, labels, "zoo", model.num_classes)
    pre = resolve_preprocessing(
        input_shape=loaded.image_input.shape, input_dtype=str(loaded.image_input.dtype), metadata=None, dataset=dataset
    )
    runner = KernelDropRunner(
        loaded.proto, layer, loaded.image_input.name, model.logits_output, drop=DROP_MODE.get(model.name, "weights")
    )
    result = score_kernels(runner, PreparedData(dataset, pre), batch_size=BATCH, run_size=128, bootstrap=20)
    return layer, runner, result


@pytest.mark.parametrize("name", list(zoo.BUILDERS))
def test_scores_equal_direct_computation(built_zoo, name):
    model = built_zoo[name]
    images, labels = zoo.tiny_dataset(
        96, size=model.image_size, channels=model.channels, num_classes=model.num_classes, seed=11
    )
    layer, runner, result = _kernelscope_scores(model, images, labels)
    expected_name = model.conv_name or zoo.first_conv_node(zoo.onnx.load(str(model.reference_path))).name
    assert layer.name == expected_name
    assert layer.op_type == model.conv_op
    assert (layer.out_channels, layer.in_channels, layer.kernel_shape) == (
        model.out_channels,
        model.in_channels,
        model.kernel_shape,
    )
    if model.fixed_batch == 1 and name == "fixed_batch1_flatten":
        assert runner.batch_made_dynamic

    x = zoo.preprocess_for(model, images)
    reference = [
        zoo.reference_drop_accuracy(model.reference_path, expected_name, k, x, labels, model.logits_index, BATCH)
        for k in [None, *range(model.out_channels)]
    ]
    assert result.baseline_accuracy == pytest.approx(reference[0], abs=1e-9)
    measured = [s.accuracy for s in result.kernels]
    assert measured == pytest.approx(reference[1:], abs=1e-9), (name, measured, reference[1:])
    if name == "conv_integer":
        # The second conv's DynamicQuantizeLinear takes one range over its whole input: stacked variants would
        # share it (each variant's scores would depend on the others), so the stacking check must refuse them.
        assert not runner.stacking and "differ from the one-variant runs" in (runner.stacking_note or "")
    mean = np.mean(reference[1:])
    assert result.fragile == [k for k, a in enumerate(reference[1:]) if a < mean]


def test_inspect_warns_that_dynamic_quantization_depends_on_the_batch(built_zoo, tmp_path, capsys):
    import json

    from kernelscope.cli.app import main

    model = built_zoo["conv_integer"]
    images, labels = zoo.tiny_dataset(40, size=model.image_size, channels=model.channels, seed=11)
    np.savez(tmp_path / "d.npz", x=images, y=labels)
    args = ["inspect", model.path, "-d", tmp_path / "d.npz", "--no-attack", "--json", tmp_path / "r.json", "-q"]
    assert main([str(a) for a in args]) == 0, capsys.readouterr().err
    warnings = json.loads((tmp_path / "r.json").read_text())["warnings"]
    assert any("2 DynamicQuantizeLinear node(s)" in w and "--batch-size 128" in w for w in warnings), warnings
    assert any("variants were run one at a time" in w for w in warnings), warnings
