"""PGD: the projection, the kept iterate, and its strength against FGSM on a trained model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kernelscope.attacks.gradients import InputGradient
from kernelscope.attacks.pgd import PgdSettings, pgd, project
from kernelscope.attacks.sweep import fgsm_sweep, pgd_sweep
from kernelscope.cli.app import main
from kernelscope.data.dataset import ImageDataset
from kernelscope.data.preprocessing import PreparedData, resolve_preprocessing
from kernelscope.errors import UsageError
from kernelscope.evaluation import OnnxEvaluator
from kernelscope.model.batching import resolve_batching
from kernelscope.model.first_conv import find_conv
from kernelscope.model.loading import load_model
from kernelscope.model.surgery.kernel_mask import find_mask_site, infer_elem_types
from kernelscope.robustness import LossObjective

import zoo
from builders import conv_classifier, random_npz, save


def _quadratic(weights: torch.Tensor):
    """A smooth objective with a different direction per example: ascend <w, x> - |x|^2."""

    def objective(x):
        value = (x.flatten(1) * weights).sum(1) - (x.flatten(1) ** 2).sum(1)
        return value, value

    return objective


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_stays_in_the_ball_and_the_bounds(norm, random_start):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(16, 4, 4, 3)).astype(np.float32)
    x[:4] = 0.0  # images on the bounds: clipping must not push them out of the ball
    x[4:8] = 1.0
    weights = torch.as_tensor(rng.normal(0, 50, size=(16, 48)), dtype=torch.float32)
    epsilon = 0.03 if norm == "linf" else 0.5
    settings = PgdSettings(norm=norm, steps=7, random_start=random_start)
    run = pgd(_quadratic(weights), x, epsilon, settings, bounds=(0.0, 1.0), generator=np.random.default_rng(1))
    delta = (run.adversarial - x).reshape(16, -1)
    size = np.abs(delta).max(axis=1) if norm == "linf" else np.linalg.norm(delta, axis=1)
    assert np.all(size <= epsilon * (1 + 1e-5)), size.max()
    assert run.adversarial.min() >= 0.0 and run.adversarial.max() <= 1.0
    # The big weights push far: the attack uses (nearly) its whole budget on the images not stuck at a bound.
    assert np.all(size[8:] > 0.5 * epsilon)
    # Narrower bounds are respected too.
    tight = pgd(_quadratic(weights), x.clip(0.2, 0.8), epsilon, settings, bounds=(0.2, 0.8))
    assert tight.adversarial.min() >= 0.2 and tight.adversarial.max() <= 0.8


def test_project_guards_a_zero_perturbation():
    x = torch.zeros(2, 3)
    out = project(x, x.clone(), 0.5, "l2", (0.0, 1.0))
    assert torch.equal(out, x)  # no 0/0


def test_pgd_keeps_the_iterate_with_the_best_criterion():
    """Ascend sum(x) (ever larger) while the criterion peaks at sum(x) = 0.3: the kept iterate is not the last."""
    x = np.zeros((3, 1, 1, 4), dtype=np.float32)

    def objective(t):
        total = t.flatten(1).sum(1)
        return total, -((total - 0.3) ** 2)

    settings = PgdSettings(norm="linf", steps=10, step_size=0.02, random_start=False)
    run = pgd(objective, x, 0.2, settings)
    sums = run.adversarial.reshape(3, -1).sum(1)
    # Steps of 0.02 per pixel move the sum by 0.08: 0.0, 0.08, ..., 0.32 (closest to 0.3), ..., 0.8.
    np.testing.assert_allclose(sums, 0.32, atol=1e-5)
    np.testing.assert_allclose(run.criterion, -(0.02**2), atol=1e-6)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_early_stopping_keeps_the_first_iterate_that_reaches_the_mark_and_changes_no_other_example(norm):
    """With ``done_at``, an example stops at its first iterate whose criterion reaches the mark; the others,
    run on a smaller batch from then on, end exactly where they would without stopping."""
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 0.8, size=(12, 4, 4, 3)).astype(np.float32)
    weights = torch.as_tensor(rng.normal(0, 1, size=(12, 48)), dtype=torch.float32)
    mark = 1e9
    done = torch.as_tensor(np.arange(12) % 3 == 0)  # rows 0, 3, 6, 9 reach the mark at once

    def objective_for(rows: np.ndarray):
        w, finished = weights[torch.as_tensor(rows)], done[torch.as_tensor(rows)]

        def objective(t):
            value = (t.flatten(1) * w).sum(1)
            return value, torch.where(finished, torch.full_like(value, mark, dtype=torch.float64), value.double())

        return objective

    settings = PgdSettings(norm=norm, steps=6, random_start=False)
    epsilon = 0.03 if norm == "linf" else 0.3
    everyone = np.arange(12)
    plain = pgd(objective_for(everyone), x, epsilon, settings)
    stopped = pgd(objective_for(everyone), x, epsilon, settings, done_at=mark, restrict=objective_for)
    going = everyone % 3 != 0
    np.testing.assert_array_equal(stopped.adversarial[going], plain.adversarial[going])
    np.testing.assert_array_equal(stopped.criterion[going], plain.criterion[going])
    # The stopped ones keep their first iterate (the start: no random start), where the mark was first reached.
    np.testing.assert_array_equal(stopped.adversarial[~going], x[~going])
    assert np.all(stopped.criterion[~going] >= mark)


def test_bad_settings_are_usage_errors():
    for settings in (PgdSettings(norm="l1"), PgdSettings(steps=0), PgdSettings(restarts=0), PgdSettings(step_size=-1)):
        with pytest.raises(UsageError):
            settings.check()


@pytest.fixture
def trained(built_zoo):
    model = built_zoo["opset13"]
    images, labels = zoo.tiny_dataset(96, size=model.image_size, channels=3, num_classes=4, seed=31)
    dataset = ImageDataset("zoo", images, labels, "zoo", 4)
    loaded = load_model(model.path)
    pre = resolve_preprocessing(
        input_shape=loaded.image_input.shape, input_dtype="float32", metadata=None, dataset=dataset
    )
    layer = find_conv(loaded.proto, "input")
    site = find_mask_site(loaded.proto, layer, "weights", infer_elem_types(loaded.proto))
    evaluator = OnnxEvaluator(resolve_batching(loaded.proto, "input", "logits"), "input", "logits", site)
    return zoo.trained_net(), PreparedData(dataset, pre), evaluator


def test_pgd_beats_fgsm_at_equal_epsilon(trained):
    net, data, evaluator = trained
    eps = [0.0, 0.02, 0.05, 0.1]
    kw = {"fragile": [0, 1, 2], "null": [3, 4, 5], "batch_size": 40}
    gradient = InputGradient(net, data.preprocessing)
    fgsm = fgsm_sweep(gradient, evaluator, data, eps, **kw)
    settings = PgdSettings(norm="linf", steps=10)
    result = pgd_sweep(LossObjective(net, data.preprocessing), gradient, evaluator, data, eps, settings=settings, **kw)
    assert result.name == "pgd" and result.pgd == settings
    assert result.accuracy[0].correct == fgsm.fgsm[0].correct  # the same clean run
    for strong, weak in zip(result.accuracy[1:], fgsm.fgsm[1:], strict=True):
        assert strong.correct <= weak.correct, (strong, weak)
    assert sum(e.correct for e in result.accuracy[1:]) < sum(e.correct for e in fgsm.fgsm[1:])
    assert [t.epsilon for t in result.targeting] == eps[1:]
    with pytest.raises(ValueError, match="PGD"):
        _ = result.fgsm  # a PGD sweep is never read as FGSM numbers


def test_restarts_never_lose_a_fooled_image(trained):
    """With more restarts each image keeps a fooling run when there is one: accuracy cannot rise."""
    net, data, evaluator = trained
    kw = {"fragile": [0, 1, 2], "null": [3, 4, 5], "batch_size": 96}  # one batch: both runs draw the same first start
    gradient = InputGradient(net, data.preprocessing)
    objective = LossObjective(net, data.preprocessing)
    one = pgd_sweep(objective, gradient, evaluator, data, [0.03], settings=PgdSettings(steps=3), **kw)
    three = pgd_sweep(objective, gradient, evaluator, data, [0.03], settings=PgdSettings(steps=3, restarts=3), **kw)
    assert three.accuracy[1].correct <= one.accuracy[1].correct


def test_fixed_batch_objective_matches_the_plain_one(trained):
    net, data, _ = trained
    x = torch.rand(5, 8, 8, 3, requires_grad=True)
    labels = np.array([0, 1, 2, 3, 0])
    plain, _ = LossObjective(net, data.preprocessing)(labels)(x)
    chunked, _ = LossObjective(net, data.preprocessing, chunk=2)(labels)(x)  # 2 + 2 + 1 padded to 2
    torch.testing.assert_close(plain, chunked)
    (g_plain,) = torch.autograd.grad(plain.sum(), x)
    (g_chunked,) = torch.autograd.grad(LossObjective(net, data.preprocessing, chunk=2)(labels)(x)[0].sum(), x)
    torch.testing.assert_close(g_plain, g_chunked)  # the padding copies add nothing to the last image's gradient


def test_inspect_attack_pgd_json(capsys, tmp_path):
    model = save(conv_classifier(out_channels=5, seed=2), tmp_path / "model.onnx")
    data = random_npz(tmp_path / "data.npz", n=40)
    report = tmp_path / "r.json"
    args = ["inspect", model, "-d", data, "--attack", "pgd", "--eps", "0.05", "--pgd-steps", "3", "--bootstrap", "0"]
    code = main([str(a) for a in [*args, "--json", report]])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "L∞ PGD, 3 steps" in out
    doc = json.loads(report.read_text())
    assert doc["fgsm"] is None and [e["epsilon"] for e in doc["pgd"]] == [0.0, 0.05]
    assert doc["pgd"][0]["accuracy"] == doc["baseline_accuracy"]
    assert doc["attack"]["name"] == "pgd"
    assert doc["attack"]["pgd"] == {
        "norm": "linf", "steps": 3, "step_size": None, "relative_step": 2.5, "random_start": True, "restarts": 1,
    }  # fmt: skip
    assert [t["epsilon"] for t in doc["targeting"]] == [0.05]
    # FGSM runs say so, with pgd null.
    code = main([str(a) for a in ["inspect", model, "-d", data, "--eps", "0.05", "--json", report, "--force"]])
    assert code == 0
    doc = json.loads(report.read_text())
    assert doc["pgd"] is None and doc["attack"]["name"] == "fgsm" and doc["attack"]["pgd"] is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "cw"], "--attack must be one of fgsm, pgd"),
        (["--attack", "pgd", "--pgd-norm", "l1"], "norm must be linf or l2"),
        (["--attack", "pgd", "--pgd-steps", "0"], "at least 1 step"),
    ],
)
def test_pgd_usage_errors(capsys, tmp_path, args, message):
    model = save(conv_classifier(out_channels=3, seed=2), tmp_path / "model.onnx")
    data = random_npz(tmp_path / "data.npz", n=20)
    code = main([str(a) for a in ["inspect", model, "-d", data, *args]])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err
