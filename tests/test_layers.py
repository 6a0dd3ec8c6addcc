"""``inspect --layers``: every Conv of a network scored like the first, with a residual shortcut and a
concatenation around some of them; checked against an independent per-kernel computation (a model file per
dropped kernel, run by onnxruntime), against torch for the per-layer targeting, and across backends."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from kernelscope.cli.app import main

import zoo


class _Net(torch.nn.Module):
    """stem -> residual block (two convs + a 1x1 shortcut) -> two branches concatenated -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.a = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.b = torch.nn.Conv2d(6, 6, 3, padding=1)
        self.shortcut = torch.nn.Conv2d(6, 6, 1)
        self.left = torch.nn.Conv2d(6, 4, 3, padding=1)
        self.head = torch.nn.Linear(10, 4)

    def forward(self, x):
        y = torch.relu(self.stem(x))
        y = torch.relu(self.b(torch.relu(self.a(y))) + self.shortcut(y))
        y = torch.cat([torch.relu(self.left(y)), y], dim=1)  # the concatenation bypasses 'left'
        return self.head(y.mean(dim=(2, 3)))


CONVS = ["/stem/Conv", "/a/Conv", "/shortcut/Conv", "/b/Conv", "/left/Conv"]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    directory = tmp_path_factory.mktemp("layers")
    images, labels = zoo.tiny_dataset(240, size=(8, 8), channels=3, num_classes=4, seed=5)
    torch.manual_seed(0)
    net = _Net()
    x = torch.as_tensor(images, dtype=torch.float32).permute(0, 3, 1, 2) / 255.0
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(x), torch.as_tensor(labels)).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        assert float((net(x).argmax(1).numpy() == labels).mean()) > 0.6  # a trained net, so kernels differ
    buffer = io.BytesIO()
    torch.onnx.export(
        net, (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=17, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
    )  # fmt: skip
    proto = onnx.load_from_string(buffer.getvalue())
    entry = proto.metadata_props.add()
    entry.key = "kernelscope.preprocessing"
    entry.value = json.dumps({"scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1], "layout": "NCHW"})
    path = directory / "net.onnx"
    onnx.save(proto, str(path))
    data = directory / "data.npz"
    np.savez(data, x=images, y=labels)
    return path, data, net, x.numpy(), labels


def _inspect(network, tmp_path, name, *extra):
    path, data = network[:2]
    out = tmp_path / f"{name}.json"
    # Batches of 32: several image shards per layer, so a Ray run has tasks beyond the first of each shape.
    args = ["inspect", str(path), "--data", str(data), "--json", str(out), "--bootstrap", "50", "-q", "--batch-size"]
    args += ["32", *extra]
    if "--mechanism" not in extra:  # the measured choice could differ between runs: fix it where runs are compared
        args += ["--mechanism", "mask"]
    code = main(args)
    assert code == 0
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def all_layers(network, tmp_path_factory):
    return _inspect(network, tmp_path_factory.mktemp("all"), "all", "--layers", "all", "--eps", "0.02,0.05")


def test_every_layer_is_scored_like_an_independent_per_kernel_model(network, all_layers):
    path, _, _, x, labels = network
    layers = all_layers["layers"]
    assert [layer["name"] for layer in layers] == CONVS  # data-flow order: fewest nodes from the input first
    for layer in layers:
        for kernel in layer["kernels"]:
            expected = zoo.reference_drop_accuracy(path, layer["name"], kernel["index"], x, labels)
            assert kernel["accuracy"] == pytest.approx(expected, abs=1e-12), (layer["name"], kernel["index"])
        accuracies = np.array([k["accuracy"] for k in layer["kernels"]])
        counts = np.round(accuracies * len(labels)).astype(int)  # the mean rule on counts, as DESIGN says
        assert layer["fragile"] == [k for k in range(len(counts)) if counts[k] * len(counts) < counts.sum()]
        assert layer["baseline_accuracy"] == pytest.approx(zoo.reference_drop_accuracy(path, CONVS[0], None, x, labels))
        assert layer["worst_drop"] == pytest.approx(layer["baseline_accuracy"] - accuracies.min())
    # The shortcut around 'a' and 'b', and the concatenation around 'left', make those layers fork the
    # variants earlier; the stem and the shortcut need no fork... and each is named.
    forks = {layer["name"]: layer["mask_site"]["variants_fork_at"] for layer in layers}
    assert forks["/stem/Conv"] is None and forks["/left/Conv"] is not None and forks["/a/Conv"] is not None
    assert not [w for w in all_layers["warnings"] if "stacking" in w]  # every layer stacked its variants


def test_the_first_layer_keeps_the_top_level_keys(network, tmp_path, all_layers):
    first = _inspect(network, tmp_path, "first", "--eps", "0.02,0.05")
    assert "layers" not in first
    for key in ("kernels", "fragile", "null", "baseline_accuracy", "fgsm", "targeting"):
        assert all_layers[key] == first[key], key
    assert all_layers["layers"][0]["kernels"] == all_layers["kernels"]
    assert all_layers["layers"][0]["targeting"] == all_layers["targeting"]
    top = all_layers["network"]["most_damaging"]
    drops = sorted(
        ((layer["baseline_accuracy"] - k["accuracy"]) for layer in all_layers["layers"] for k in layer["kernels"]),
        reverse=True,
    )
    assert [t["drop"] for t in top] == pytest.approx(drops[: len(top)])


def test_each_layers_targeting_matches_a_direct_computation(network, all_layers):
    """FGSM images from the torch network itself; the layer's Conv output read by onnxruntime."""
    path, _, net, x, labels = network
    xt = torch.tensor(x, requires_grad=True)
    torch.nn.functional.cross_entropy(net(xt), torch.as_tensor(labels), reduction="sum").backward()
    sign = np.sign(xt.grad.numpy())
    proto = onnx.load(str(path))
    names = [f"{name}_output_0" for name in CONVS]
    proto.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in names)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    clean = session.run(names, {"input": x})
    for layer, clean_out in zip(all_layers["layers"], clean, strict=True):
        for entry in layer["targeting"]:
            adversarial = np.clip(x + entry["epsilon"] * sign, 0, 1).astype(np.float32)
            out = session.run(names, {"input": adversarial})[CONVS.index(layer["name"])]
            d = np.sqrt(((out - clean_out) ** 2).sum(axis=(2, 3)))
            hits = int(np.sum(d[:, layer["fragile"]].mean(axis=1) > d[:, layer["null"]].mean(axis=1)))
            # The mirror's gradient equals torch's to float rounding: an image may flip only on a tie.
            assert abs(entry["attacking_fragile"] - hits) <= 2, (layer["name"], entry["epsilon"])


def test_the_page_and_figures_show_every_layer(network, tmp_path, all_layers):
    pytest.importorskip("matplotlib")
    report = tmp_path / "all.json"
    report.write_text(json.dumps(all_layers))
    page, plots = tmp_path / "r.html", tmp_path / "figs"
    assert main(["report", str(report), "--html", str(page), "--plots", str(plots)]) == 0
    html = page.read_text()
    assert "Every layer (Fig. 5)" in html and all(name in html for name in CONVS)
    assert (plots / "fig5_layers_depth.png").stat().st_size > 1000


def test_names_and_patterns_select_layers(network, tmp_path):
    named = _inspect(network, tmp_path, "named", "--layers", "/left/Conv,/a/Conv", "--no-attack")
    assert [layer["name"] for layer in named["layers"]] == ["/a/Conv", "/left/Conv"]
    assert named["layer"]["name"] == "/a/Conv"
    pattern = _inspect(network, tmp_path, "pattern", "--layers", "/[ab]/*", "--no-attack")
    assert [layer["name"] for layer in pattern["layers"]] == ["/a/Conv", "/b/Conv"]


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--layers", "/nope/Conv"], "no convolution named"),
        (["--layers", "*nothing*"], "matches no convolution"),
        (["--layers", "all", "--layer", "/a/Conv"], "cannot be combined"),
        (["--backend", "spark"], "--backend must be"),
        (["--ray-address", "auto"], "only applies to --backend ray"),
    ],
)
def test_bad_layer_and_backend_options_are_one_line_usage_errors(network, tmp_path, capsys, extra, needle):
    path, data = network[:2]
    code = main(["inspect", str(path), "--data", str(data), "--no-attack", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1


def test_hybrid_scores_every_layer(network, tmp_path, all_layers):
    doc = _inspect(network, tmp_path, "hybrid", "--layers", "all", "--method", "hybrid", "--no-attack")
    assert [layer["name"] for layer in doc["layers"]] == CONVS
    for layer, exact in zip(doc["layers"], all_layers["layers"], strict=True):
        scored = [k for k in layer["kernels"] if k["scored_exactly"]]
        assert scored  # the hybrid scores some kernels exactly, and those agree with exact scoring
        for k in scored:
            assert k["accuracy"] == pytest.approx(exact["kernels"][k["index"]]["accuracy"])


def test_missing_ray_extra_is_a_one_line_install_hint(network, tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    path, data = network[:2]
    code = main(["inspect", str(path), "--data", str(data), "--no-attack", "--backend", "ray"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'kernelscope[ray]'" in err and len(err.splitlines()) == 1


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray = pytest.importorskip("ray")
    fault = tmp_path_factory.mktemp("fault") / "kill-one-worker"
    os.environ["KERNELSCOPE_RAY_FAULT_FILE"] = str(fault)  # inherited by the workers of the local Ray
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=150 * 1024**2)
    yield fault
    ray.shutdown()
    del os.environ["KERNELSCOPE_RAY_FAULT_FILE"]


def _without_timings(doc: dict) -> str:
    """The report without its wall-clock figures: ``timings`` and the fast scorer's ``estimate.seconds``."""
    doc = json.loads(json.dumps(doc))
    doc.pop("timings", None)
    for part in [doc, *doc.get("layers", [])]:
        if part.get("estimate"):
            part["estimate"].pop("seconds", None)
    return json.dumps(doc, sort_keys=True)


def test_ray_backend_with_one_session_per_variant_gives_the_local_json(network, tmp_path, local_ray):
    extra = ("--layers", "all", "--eps", "0.02", "--mechanism", "sessions")
    local = _inspect(network, tmp_path, "local-sessions", *extra)
    doc = _inspect(network, tmp_path, "ray-sessions", *extra, "--backend", "ray")
    assert doc["execution"]["mechanism"] == "sessions" and doc["execution"]["variants_per_run"] == 1
    assert _without_timings(doc) == _without_timings(local)


def test_ray_backend_gives_the_local_json(network, tmp_path, all_layers, local_ray):
    doc = _inspect(network, tmp_path, "ray", "--layers", "all", "--eps", "0.02,0.05", "--backend", "ray")
    assert doc["timings"]["ray_remote_tasks"] == 5 * 8  # per layer: 8 image shards x 1 variant group
    assert _without_timings(doc) == _without_timings(all_layers)


def test_ray_backend_gives_the_local_hybrid(network, tmp_path, local_ray):
    # The hybrid scores a layer in several rounds: the workers keep each layer's session across them.
    args = ("--layers", "all", "--method", "hybrid", "--no-attack")
    local = _inspect(network, tmp_path, "hybrid-local", *args)
    ray = _inspect(network, tmp_path, "hybrid-ray", *args, "--backend", "ray")
    assert _without_timings(ray) == _without_timings(local)


def test_a_worker_killed_mid_run_is_retried_with_the_same_result(network, tmp_path, all_layers, local_ray):
    local_ray.write_text("kill the first worker that takes a task")
    doc = _inspect(network, tmp_path, "killed", "--layers", "all", "--eps", "0.02,0.05", "--backend", "ray")
    assert not local_ray.exists() and Path(f"{local_ray}.taken").exists()  # a worker did die
    assert _without_timings(doc) == _without_timings(all_layers)
