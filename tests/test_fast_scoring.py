"""--method taylor / hybrid: fast, labelled as estimates, and checked against exact scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernelscope.audit import InspectConfig, inspect_model
from kernelscope.cli.app import main

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "models" / "cifar10_cnn.onnx"
SAMPLE = ROOT / "examples" / "data" / "cifar10-sample"


def test_taylor_ranks_kernels_like_exact_scoring():
    report = inspect_model(
        MODEL, InspectConfig(data=str(SAMPLE), method="taylor", compare_exact=True, attack=False, bootstrap=0)
    )
    agreement = report.fast.agreement
    assert agreement.spearman >= 0.9  # measured 0.926 on these 1,000 images
    assert agreement.split_agreement >= 0.7
    assert report.fragile == report.fast.fragile and report.scoring is not None
    assert any("ESTIMATE" in w for w in report.warnings)


def test_hybrid_gives_the_exact_split():
    exact = inspect_model(MODEL, InspectConfig(data=str(SAMPLE), limit=400, attack=False, bootstrap=0))
    hybrid = inspect_model(MODEL, InspectConfig(data=str(SAMPLE), limit=400, attack=False, method="hybrid"))
    assert hybrid.scoring is None
    assert hybrid.fragile == exact.scoring.fragile
    scored = hybrid.fast.exact_kernels
    assert [hybrid.fast.accuracies[k] for k in scored] == [exact.scoring.kernels[k].accuracy for k in scored]


def test_taylor_json_is_marked_as_an_estimate(tmp_path, capsys):
    target = tmp_path / "t.json"
    code = main(["inspect", str(MODEL), "-d", str(SAMPLE), "--limit", "100", "--method", "taylor", "--eps", "0.01",
                 "--json", str(target), "-q"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    doc = json.loads(target.read_text())
    assert doc["method"] == "taylor" and doc["estimate"]["is_estimate"] is True
    assert doc["estimate"]["agreement_with_exact"] is None
    assert all(k["accuracy"] is None and k["importance"] >= 0 for k in doc["kernels"])
    assert doc["baseline_accuracy"] == doc["fgsm"][0]["accuracy"]
    assert sorted(doc["fragile"] + doc["null"]) == list(range(32))


def test_min_accuracy_gate_with_taylor_needs_a_clean_accuracy(capsys):
    base = ["inspect", str(MODEL), "-d", str(SAMPLE), "--limit", "60", "--method", "taylor", "-q", "--min-accuracy"]
    assert main([*base, "0.99", "--eps", "0.01"]) == 1  # the attack's clean run gives the baseline
    assert main([*base, "0.1", "--no-attack"]) == 2
    assert "needs a clean accuracy" in capsys.readouterr().err


def test_calibration_error_is_the_leave_one_out_error_of_the_better_fit():
    import numpy as np

    from kernelscope.fast_scoring import _calibrate

    rng = np.random.default_rng(3)
    importance = rng.uniform(0.0, 1.0, 20)
    accuracy = 0.9 - 0.5 * importance**2 + rng.normal(0, 0.01, 20)  # convex: a parabola fits, a line does not
    known = list(range(0, 20, 2))
    predicted, error = _calibrate(importance, {k: float(accuracy[k]) for k in known})

    def loo(degree: int) -> float:  # refit without each point in turn: the direct computation
        x, y = importance[known], accuracy[known]
        misses = [y[i] - np.polyval(np.polyfit(np.delete(x, i), np.delete(y, i), degree), x[i]) for i in range(len(x))]
        return float(np.sqrt(np.mean(np.square(misses))))

    assert loo(2) < loo(1)
    assert error == pytest.approx(loo(2), rel=1e-9)
    assert [predicted[k] for k in known] == [accuracy[k] for k in known]  # exact where scored
    unscored = [k for k in range(20) if k not in known]
    assert np.abs(predicted[unscored] - accuracy[unscored]).max() < 5 * error


def _stubbed_hybrid(monkeypatch, importance, truth):
    """The hybrid on a stub model whose kernel k, dropped, leaves accuracy ``truth[k]``; returns the result
    and the number of kernels each exact round scored."""
    import numpy as np

    import kernelscope.fast_scoring as fast

    n = 2000

    class Data:
        labels = np.zeros(n, dtype=np.int64)

        def __len__(self) -> int:
            return n

    rounds, baselines = [], []

    def predict_variants(runner, data, masks, **_):
        rounds.append(int((masks == 0).any(axis=1).sum()))
        baselines.append(int((masks == 1).all(axis=1).sum()))
        dropped = [int(np.flatnonzero(row == 0)[0]) if (row == 0).any() else None for row in masks]
        accuracy = [0.9 if k is None else truth[k] for k in dropped]
        return np.array([np.where(np.arange(n) < round(a * n), 0, 1) for a in accuracy]), None

    monkeypatch.setattr(fast, "taylor_estimate", lambda *a, **k: fast.TaylorEstimate(importance, [], [], n, 0.0))
    monkeypatch.setattr(fast, "predict_variants", predict_variants)
    runner = type("Runner", (), {"channels": len(importance)})()
    result = fast.hybrid_split(runner, Data(), screen_images=n)  # the screen is the stubbed estimate
    exact = np.round(np.asarray(truth) * n) / n
    assert result.fragile == [k for k in range(len(truth)) if exact[k] < exact.mean()]  # each on its true side
    assert baselines == [1] + [0] * (len(rounds) - 1) and result.baseline_accuracy == 0.9
    return result, rounds


def test_hybrid_settles_clear_kernels_without_scoring_them(monkeypatch):
    import numpy as np

    rng = np.random.default_rng(0)
    importance = np.concatenate([rng.uniform(0.6, 1.0, 8), rng.uniform(0.0, 0.05, 56)])
    truth = np.clip(0.9 - 0.6 * importance + rng.normal(0, 0.004, 64), 0, 1)
    result, rounds = _stubbed_hybrid(monkeypatch, importance, truth)
    assert len(result.exact_kernels) < 32 and len(rounds) <= 3  # measured: 19 of 64, in rounds of 8, 8, 3


def test_hybrid_scores_the_rest_at_once_when_every_kernel_is_in_doubt(monkeypatch):
    """Kernels crowded around the mean: all are scored, in three rounds (8, 8, then the other 48 at once), so
    the network before the variants' fork runs 3 times, not 8; the baseline is run once."""
    import numpy as np

    rng = np.random.default_rng(1)
    importance = rng.uniform(0.0, 1.0, 64)
    truth = 0.9 - 0.02 * importance + rng.normal(0, 0.01, 64)
    result, rounds = _stubbed_hybrid(monkeypatch, importance, truth)
    assert result.exact_kernels == list(range(64))
    assert rounds == [8, 8, 48]


def test_the_screen_costs_at_most_its_share_of_the_exact_job(monkeypatch):
    """The hybrid screens fewer images where 256 forward+backward passes would cost more than 5 % of the exact
    job: (C_out + 1) x N variants of the network after the fork, at 10 forwards per screened image."""
    import kernelscope.fast_scoring as fast
    from kernelscope.model.first_conv import find_conv
    from kernelscope.scoring import KernelDropRunner

    from builders import conv_classifier

    proto = conv_classifier(out_channels=6, in_channels=3, size=8, classes=4)
    runner = KernelDropRunner(proto, find_conv(proto, "image"), "image", "logits")
    # By hand: the Conv holds 6·3·9·64 = 10,368 multiply-accumulates per image, the Gemm 4·6 = 24; the variants
    # fork after the Conv's ReLU, so each runs only the Gemm's share on its own.
    assert runner.share_after_fork() == pytest.approx(24 / 10_392)
    assert fast.screen_size(runner, 500) == 64  # 0.05 x 7 x 500 x 0.0023 / 10 is far below the floor
    assert fast.screen_size(runner, 40) == 40  # fewer images than the floor: all of them

    monkeypatch.setattr(KernelDropRunner, "share_after_fork", lambda self: 1.0)  # every variant a full forward
    # 0.05 x (6 + 1) x N / 10 = 0.035 N images
    assert [fast.screen_size(runner, n) for n in (1_000, 4_000, 10_000)] == [64, 140, 256]
    monkeypatch.setattr(KernelDropRunner, "share_after_fork", lambda self: None)  # arithmetic unknown: the cap
    assert fast.screen_size(runner, 1_000) == 256


def test_the_hybrid_reports_the_screen_it_ran(tmp_path):
    report = inspect_model(MODEL, InspectConfig(data=str(SAMPLE), limit=300, attack=False, method="hybrid"))
    from kernelscope.fast_scoring import MIN_SCREEN_IMAGES

    # 32 kernels x 300 images is a short exact job: the screen is the floor, a seeded random 64 of the 300.
    assert report.fast.screened_images == MIN_SCREEN_IMAGES
