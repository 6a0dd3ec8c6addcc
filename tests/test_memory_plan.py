"""The memory budget of the PyTorch stages: a forward+backward keeps every activation, so ``--memory`` sizes the
attacks', the Taylor screen's, the neuron attacks' and the fine-tuning's batches too — with the same results
as one batch (the images do not interact), and a warning that names the budget."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from kernelscope.cli.app import main
from kernelscope.model.memory import (
    HARDEN_WEIGHT_COPIES,
    MAX_BLOCK_BYTES,
    PROCESS_BYTES,
    WEIGHT_COPIES,
    MemoryPlan,
    activation_bytes_per_image,
    gradient_bytes_per_image,
    memory_plan,
    weight_bytes,
)

from builders import conv_classifier, random_npz, save


def _shapes_by_hand(proto: onnx.ModelProto) -> dict[str, int]:
    """Bytes per image of conv_classifier's activations, from its architecture (8 x 8 images, float32)."""
    conv = 6 * 8 * 8 * 4
    return {"conv": conv, "relu": conv, "pool": 6 * 4, "flat": 6 * 4, "logits": 4 * 4}


def test_the_gradient_estimate_counts_every_activation_and_the_forward_only_the_largest():
    proto = conv_classifier(out_channels=6, seed=0)
    sizes = _shapes_by_hand(proto)
    assert gradient_bytes_per_image(proto, "image") == sum(sizes.values()) + 2 * max(sizes.values())
    # onnxruntime frees tensors as they die: the four largest are the forward's estimate
    assert activation_bytes_per_image(proto, "image") == sum(sorted(sizes.values())[-4:])


def test_the_budget_is_the_process_so_the_fixed_part_comes_off_first():
    proto = conv_classifier(out_channels=6, seed=0)
    weights = (6 * 3 * 3 * 3 + 6 + 4 * 6 + 4) * 4
    assert weight_bytes(proto) == weights
    plan = memory_plan(proto, "image", 2 * 1024**3)
    assert plan.working == 2 * 1024**3 - PROCESS_BYTES - WEIGHT_COPIES * weights - MAX_BLOCK_BYTES
    tiny = memory_plan(proto, "image", 80_000)  # less than the process itself: an eighth still runs
    assert tiny.working == 10_000
    # harden holds more copies of the weights (tuned copy, gradients, Adam's moments, checkpoints, the result)
    hardening = memory_plan(proto, "image", 2 * 1024**3, HARDEN_WEIGHT_COPIES)
    assert plan.working - hardening.working == (HARDEN_WEIGHT_COPIES - WEIGHT_COPIES) * weights


def test_batches_shrink_to_what_fits():
    plan = MemoryPlan(memory=1 << 30, working=1000, forward_per_image=10, gradient_per_image=100)
    assert plan.gradient_batch(128) == 10 and plan.gradient_batch(8) == 8
    assert plan.gradient_batch(128, factor=3) == 3  # a double backward holds three passes
    assert plan.gradient_batch(128, fixed=4) == 8  # a fixed-batch graph gets whole batches
    assert plan.gradient_batch(128, factor=50, fixed=4) == 4  # at least one of them
    assert plan.forward_batch(128) == 100
    unknown = MemoryPlan(memory=1 << 30, working=1000, forward_per_image=None, gradient_per_image=None)
    assert unknown.gradient_batch(128) == 128 and unknown.forward_batch(64) == 64
    note = plan.note(10, 128)
    assert "fits 10 image(s)" in note and "--batch-size 128" in note and "--memory" in note


def _budget_for(proto: onnx.ModelProto, images: int) -> str:
    """A --memory (bytes) under which ``images`` images fit one forward+backward (a tiny budget keeps 1/8)."""
    return str(8 * images * gradient_bytes_per_image(proto, "image"))


@pytest.fixture
def small(tmp_path):
    proto = conv_classifier(out_channels=6, seed=0)
    return proto, save(proto, tmp_path / "m.onnx"), random_npz(tmp_path / "d.npz", n=40)


def _inspect(tmp_path, model, data, name, *extra) -> dict:
    out = tmp_path / f"{name}.json"
    args = ["inspect", str(model), "--data", str(data), "--batch-size", "16", "--bootstrap", "0", "--eps", "0.02,0.1"]
    assert main([*args, "--json", str(out), "-q", *extra]) == 0
    return json.loads(out.read_text())


def test_fgsm_under_a_small_budget_gives_the_same_sweep_and_says_why(small, tmp_path):
    proto, model, data = small
    full = _inspect(tmp_path, model, data, "full")
    parts = _inspect(tmp_path, model, data, "parts", "--memory", _budget_for(proto, 5))
    assert "gradient_batch" not in full["timings"] and parts["timings"]["gradient_batch"] == 5
    for key in ("fgsm", "targeting"):
        assert parts[key] == full[key]
    assert any("fits 5 image(s) per forward+backward" in w for w in parts["warnings"])
    assert [k["accuracy"] for k in parts["kernels"]] == [k["accuracy"] for k in full["kernels"]]


def test_pgd_and_the_taylor_screen_in_parts_equal_one_pass(small, tmp_path):
    proto, model, data = small
    args = ("--method", "hybrid", "--attack", "pgd", "--pgd-steps", "3")
    full = _inspect(tmp_path, model, data, "full", *args)
    parts = _inspect(tmp_path, model, data, "parts", *args, "--memory", _budget_for(proto, 3))
    assert parts["timings"]["gradient_batch"] == 3
    importance = [[k["importance"] for k in doc["kernels"]] for doc in (full, parts)]
    np.testing.assert_allclose(importance[1], importance[0], rtol=1e-6)
    # PGD's random starts are drawn batch by batch, so parts of 3 draw differently from one batch of 16; the
    # attack must still be as strong (same ε, same steps), within a few images of 40.
    full_acc = [e["accuracy"] for e in full["pgd"]]
    part_acc = [e["accuracy"] for e in parts["pgd"]]
    assert full_acc[0] == part_acc[0] and np.allclose(full_acc, part_acc, atol=0.1)


def test_neurons_under_a_small_budget_gives_the_same_rates(tmp_path):
    proto = conv_classifier(out_channels=6, seed=0)
    model, data = save(proto, tmp_path / "m.onnx"), random_npz(tmp_path / "d.npz", n=24)
    docs = []
    for memory in ("2GB", _budget_for(proto, 4)):
        out = tmp_path / f"n{len(docs)}.json"
        args = ["neurons", str(model), "--data", str(data), "--steps", "5", "--k", "1,2", "--batch-size", "16"]
        args += ["--eps", "2"]  # the untargeted PGD fools most, and the feature attacks move 25 of 48 neurons
        assert main([*args, "--memory", memory, "--json", str(out), "-q"]) == 0
        docs.append(json.loads(out.read_text()))
    full, parts = docs
    assert parts["timings"]["gradient_batch"] == 4 and "gradient_batch" not in full["timings"]
    assert parts["neurons"] == full["neurons"]  # every rate, count, attack and feature moved
    assert 0 < full["neurons"]["pgd"]["successes"] < 24 and full["neurons"]["single_neuron_attack"]["attacks"] == 48


class _Mean:
    """A per-image-mean loss plus a term of the weights alone: the shape of every fine-tuning method's loss."""

    name, label, memory_factor = "test", "test", 1.0

    def __init__(self, layer: torch.nn.Linear) -> None:
        self.layer = layer

    def loss(self, view, x01, labels, generator):
        scores = self.layer(x01.flatten(1))
        return torch.nn.functional.cross_entropy(scores, labels) + 0.1 * self.layer.weight.pow(2).sum()


def test_micro_batches_accumulate_the_gradient_of_the_whole_batch():
    from kernelscope.harden.finetune import _accumulate

    torch.manual_seed(0)
    layer = torch.nn.Linear(12, 3)
    method = _Mean(layer)
    x = torch.rand(10, 2, 2, 3)
    y = torch.randint(0, 3, (10,))
    grads, losses = [], []
    for micro in (None, 3):
        layer.zero_grad()
        losses.append(_accumulate(method, None, x, y, np.random.default_rng(0), micro))
        grads.append(layer.weight.grad.clone())
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-7)


def test_scoring_runs_sized_from_the_plans_sizes_equal_a_fresh_inference():
    """The plan's tensor sizes are reused for the scoring runs (one shape inference, not two): same sizes."""
    from kernelscope.model.first_conv import find_conv
    from kernelscope.model.memory import budgeted_run
    from kernelscope.scoring import KernelDropRunner

    proto = conv_classifier(out_channels=6, seed=0)
    runner = KernelDropRunner(proto, find_conv(proto, "image"), "image", "logits")
    for memory in (2 * 1024**3, 200_000):
        plan = memory_plan(runner.batching.proto, "image", memory)
        assert budgeted_run(runner, memory, 1024, 128, plan) == budgeted_run(runner, memory, 1024, 128)
    assert budgeted_run(runner, 200_000, 1024, 128) < (1024, 128)  # the small budget does bind


def _resident_mb() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) // 1024 for line in status if line.startswith("VmRSS"))


def test_release_memory_hands_a_freed_stage_back_to_the_system():
    """Weights freed by a stage (many blocks of ~100 KB, as a model's tensors) leave the process's resident set."""
    from kernelscope.model import memory

    if memory._malloc_trim() is None:
        pytest.skip("not glibc: the C library returns freed memory on its own terms")
    blocks = [np.ones(100_000 // 8) for _ in range(3000)]  # 300 MB on the heap, not mapped one by one
    # Every 30th block stays alive between the freed ones (10 MB), wherever the heap placed them: free() alone
    # cannot shrink the heap from its top, only malloc_trim hands the freed pages between them back.
    kept = blocks[::30]
    del blocks
    before = _resident_mb()
    memory.release_memory()
    assert before - _resident_mb() > 200
    assert sum(block.sum() for block in kept) == len(kept) * (100_000 // 8)


def test_release_memory_empties_pytorchs_gpu_cache_once_cuda_is_in_use(monkeypatch):
    from kernelscope.model.memory import release_memory

    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    release_memory()
    assert emptied == []  # no GPU in use: nothing to hand back
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    release_memory()
    assert emptied == [True]  # freed GPU blocks go back where onnxruntime's CUDA arena can take them
