"""FGSM sweep and targeting against independent computations in native torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kernelscope.attacks.fgsm import default_epsilons, fgsm_perturb
from kernelscope.attacks.gradients import InputGradient
from kernelscope.attacks.sweep import fgsm_sweep
from kernelscope.data.dataset import ImageDataset
from kernelscope.data.preprocessing import PreparedData, resolve_preprocessing
from kernelscope.errors import UsageError
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.model.batching import resolve_batching
from kernelscope.model.first_conv import find_conv
from kernelscope.model.loading import load_model
from kernelscope.model.surgery.kernel_mask import find_mask_site, infer_elem_types
from kernelscope.targeting import attacks_fragile, kernel_distances, kernel_norms

import zoo

EPS = [0.0, 0.01, 0.03, 0.1]


def test_fgsm_step_is_signed_and_clipped():
    x = np.array([[0.0, 0.5, 0.995]], dtype=np.float32)
    sign = np.array([[-1.0, 1.0, 1.0]], dtype=np.float32)
    np.testing.assert_allclose(fgsm_perturb(x, sign, 0.01, (0.0, 1.0)), [[0.0, 0.51, 1.0]])
    assert default_epsilons("mnist")[-1] > default_epsilons("cifar10")[-1]
    assert default_epsilons("cifar10", "log")[0] == 0.0


def test_targeting_on_a_hand_made_example():
    clean = np.zeros((2, 3, 2, 2))
    clean[:, 0] = 10.0  # kernel 0 has a big output
    clean[:, 1:] = 1.0
    adversarial = clean.copy()
    adversarial[0, 0] += 1.0  # example 0: kernel 0 moves by ||1||_2 over 4 positions = 2
    adversarial[1, 1] += 1.0  # example 1: kernel 1 moves by 2
    distances, norms = kernel_distances(clean, adversarial), kernel_norms(clean)
    np.testing.assert_allclose(distances[0], [2.0, 0.0, 0.0])
    raw, normalized = attacks_fragile(distances, norms, fragile=[0], null=[1, 2])
    assert raw.tolist() == [True, False]
    # Relative to kernel 0's large clean output, example 0's change is small: 2/20 vs 0.
    assert normalized.tolist() == [True, False]
    raw, normalized = attacks_fragile(distances, norms, fragile=[1], null=[0, 2])
    assert raw.tolist() == [False, True] and normalized.tolist() == [False, True]


@pytest.fixture
def opset13(built_zoo):
    model = built_zoo["opset13"]
    images, labels = zoo.tiny_dataset(80, size=model.image_size, channels=3, num_classes=4, seed=21)
    return model, ImageDataset("zoo", images, labels, "zoo", 4)


def test_sweep_equals_native_torch_fgsm(opset13):
    model, dataset = opset13
    loaded = load_model(model.path)
    layer = find_conv(loaded.proto, "input")
    pre = resolve_preprocessing(
        input_shape=loaded.image_input.shape, input_dtype="float32", metadata=None, dataset=dataset
    )
    net = zoo.trained_net()
    site = find_mask_site(loaded.proto, layer, "weights", infer_elem_types(loaded.proto))
    evaluator = OnnxEvaluator(resolve_batching(loaded.proto, "input", "logits"), "input", "logits", site)
    fragile, null = [0, 1, 2], [3, 4, 5]
    result = fgsm_sweep(
        InputGradient(net, pre), evaluator, PreparedData(dataset, pre), EPS, fragile=fragile, null=null, batch_size=32
    )

    # Independent native-torch FGSM on the same images (pixels / 255, no mean/std in this zoo).
    x = torch.tensor(dataset.images.transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32, requires_grad=True)
    y = torch.tensor(dataset.labels)
    torch.nn.functional.cross_entropy(net(x), y, reduction="sum").backward()
    sign = x.grad.sign()
    with torch.no_grad():
        # The exporter folds BatchNorm into the ONNX Conv: its output is bn1(conv1(x)).
        conv_clean = net.bn1(net.conv1(x))
        for entry in result.fgsm:
            adversarial = (x + entry.epsilon * sign).clamp(0, 1)
            expected = int((net(adversarial).argmax(1) == y).sum())
            assert abs(entry.correct - expected) <= 1, (entry.epsilon, entry.correct, expected)
            assert entry.ci95[0] <= entry.accuracy <= entry.ci95[1]
        for entry in result.targeting:
            adversarial = (x + entry.epsilon * sign).clamp(0, 1)
            d = (net.bn1(net.conv1(adversarial)) - conv_clean).flatten(2).norm(dim=2)
            expected = int((d[:, fragile].mean(1) > d[:, null].mean(1)).sum())
            assert abs(entry.attacking_fragile - expected) <= 1
    assert [e.epsilon for e in result.fgsm] == EPS
    assert result.fgsm[0].accuracy > result.fgsm[-1].accuracy
    assert [t.epsilon for t in result.targeting] == EPS[1:]


def test_negative_epsilon_is_a_usage_error(opset13):
    model, dataset = opset13
    loaded = load_model(model.path)
    pre = resolve_preprocessing(
        input_shape=loaded.image_input.shape, input_dtype="float32", metadata=None, dataset=dataset
    )
    evaluator = OnnxEvaluator(resolve_batching(loaded.proto, "input", "logits"), "input", "logits")
    with pytest.raises(UsageError, match=">= 0"):
        fgsm_sweep(
            InputGradient(zoo.trained_net(), pre), evaluator, PreparedData(dataset, pre), [-0.1], fragile=[0], null=[1]
        )
