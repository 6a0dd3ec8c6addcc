"""A zoo of tiny image classifiers in many export styles, built by the tests themselves.

Every model is a small conv net (first conv with 6-8 output kernels, 4 classes) trained for a few hundred
seeded Adam steps on :func:`tiny_dataset`, then exported to ONNX (or TorchScript) in one of many styles
that real-world exporters produce: several opsets, BatchNormalization kept, tf2onnx-style bias Add and
NHWC Transpose, in-graph normalization, uint8 input, QDQ / QOperator / dynamic quantization, float16,
weights via Constant / Identity, external data, fixed batch 1, multiple outputs, unsorted node lists,
initializers listed as graph inputs, and a TorchScript archive.

:func:`reference_drop_accuracy` is an independent reference for "top-1 accuracy with output kernel k of
the first conv dropped"; it deliberately uses only ``onnx``, ``onnx.numpy_helper`` and ``onnxruntime``
(no kernelscope code), so the package's scorer can be checked against it.

Preprocessing convention: a model's image input is ``pixel / 255`` as float32 in the model's layout, unless
the variant says otherwise (``float16`` takes float16, ``cast_input`` takes raw uint8).  Use
:func:`preprocess_for` to get it right.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

#: Op types that are "a convolution" for the purpose of locating the first conv.
CONV_OPS = ("Conv", "QLinearConv", "ConvInteger")

#: Mean / std used by the ``norm_in_graph`` variant (applied to pixel/255 inside the graph).
NORM_MEAN = (0.485, 0.456, 0.406)
NORM_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ZooModel:
    """One built zoo model and what a test needs to know about it.

    ``conv_name`` is the node name of the first conv (the one fed, in data flow, by the image input).  For
    the TorchScript model it is the name in the ONNX that ``torch.onnx.export(dynamo=False, opset 17)``
    of the loaded script module produces (``reference_path`` points at exactly that ONNX file).
    """

    name: str
    path: Path
    conv_name: str | None
    conv_op: str
    out_channels: int
    in_channels: int
    kernel_shape: tuple[int, int]
    layout: str
    image_size: tuple[int, int]
    channels: int
    num_classes: int
    fixed_batch: int | None
    notes: str = ""
    #: name of the logits output (the first output unless the variant says otherwise)
    logits_output: str = "logits"
    #: position of ``logits_output`` among the graph outputs
    logits_index: int = 0
    #: element type of the image input: "float32", "float16" or "uint8"
    input_dtype: str = "float32"
    #: name of the image input
    input_name: str = "input"
    #: an ONNX file equivalent to ``path`` for :func:`reference_drop_accuracy` (== path for ONNX models)
    reference_path: Path | None = None
    #: free-form facts about the variant (e.g. quantization zero points, opset) for tests to inspect
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_onnx(self) -> bool:
        """True when ``path`` is an ONNX file (False for the TorchScript archive)."""
        return self.path.suffix == ".onnx"

    @property
    def is_quantized(self) -> bool:
        """True for the quantized variants (QDQ, QLinearConv, ConvInteger)."""
        return self.name in ("qdq", "qlinear", "conv_integer")


# ----------------------------------------------------------------------------------------------------------
# data


def tiny_dataset(
    n: int = 64,
    *,
    size: tuple[int, int] = (8, 8),
    channels: int = 3,
    num_classes: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Return ``n`` noisy uint8 images (N, H, W, C) and int64 labels in ``[0, num_classes)``.

    The label is the image region (a cell of a near-square grid, i.e. the quadrant for 4 classes) that
    holds a brightened blob; the blob brightens one random colour channel, so different first-layer
    kernels end up specialising on different colours and dropping them changes accuracy differently.
    Background noise keeps the task imperfect (a small trained net reaches roughly 0.6-0.95 accuracy).
    """
    rng = np.random.default_rng(seed)
    h, w = size
    rows = int(np.ceil(np.sqrt(num_classes)))
    cols = int(np.ceil(num_classes / rows))
    images = rng.integers(0, 150, size=(n, h, w, channels)).astype(np.float64)
    labels = rng.integers(0, num_classes, size=n).astype(np.int64)
    colours = rng.integers(0, channels, size=n)
    # a weaker blob for larger regions keeps the difficulty roughly independent of the image size
    scale = float(np.sqrt(16.0 / max(1, (h // rows) * (w // cols))))
    boosts = rng.uniform(30.0, 90.0, size=n) * scale
    for i in range(n):
        r, c = divmod(int(labels[i]), cols)
        y0, y1 = r * h // rows, (r + 1) * h // rows
        x0, x1 = c * w // cols, (c + 1) * w // cols
        images[i, y0:y1, x0:x1, colours[i]] += boosts[i]
    return np.clip(images, 0, 255).astype(np.uint8), labels


def preprocess_for(model: ZooModel, images_uint8: np.ndarray) -> np.ndarray:
    """Turn uint8 images (N, H, W, C) into the input ``model`` expects (pixel/255, layout, dtype)."""
    x = np.asarray(images_uint8)
    if model.layout == "NCHW":
        x = x.transpose(0, 3, 1, 2)
    if model.input_dtype == "uint8":
        return np.ascontiguousarray(x.astype(np.uint8))
    x = x.astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(x.astype(model.input_dtype))


# ----------------------------------------------------------------------------------------------------------
# the independent reference


@dataclass
class _Const:
    """A constant tensor in the graph, with a way to write a modified value back where it came from."""

    get: Callable[[], np.ndarray]
    set: Callable[[np.ndarray], None]


def _constant(graph: onnx.GraphProto, name: str) -> _Const | None:
    """Find constant ``name``: an initializer or a Constant node's value (through Identity/Reshape/...)."""
    for init in graph.initializer:
        if init.name == name:

            def _set_init(arr: np.ndarray, init: onnx.TensorProto = init) -> None:
                init.CopyFrom(numpy_helper.from_array(arr.astype(numpy_helper.to_array(init).dtype), init.name))

            return _Const(lambda init=init: numpy_helper.to_array(init), _set_init)
    producer = _producer(graph, name)
    if producer is None:
        return None
    if producer.op_type in ("Identity", "Reshape", "Unsqueeze", "Squeeze", "Cast"):
        # a value-preserving view of a constant (e.g. quantize_dynamic's Reshape of the conv bias):
        # read and write the source tensor
        return _constant(graph, producer.input[0])
    if producer.op_type == "Constant":
        for attr in producer.attribute:
            if attr.name == "value":

                def _set_attr(arr: np.ndarray, attr: onnx.AttributeProto = attr) -> None:
                    old = numpy_helper.to_array(attr.t)
                    attr.t.CopyFrom(numpy_helper.from_array(arr.astype(old.dtype), attr.t.name))

                return _Const(lambda attr=attr: numpy_helper.to_array(attr.t), _set_attr)
    return None


def _producer(graph: onnx.GraphProto, name: str) -> onnx.NodeProto | None:
    """The node that outputs ``name`` (None for graph inputs / initializers)."""
    for node in graph.node:
        if name in node.output:
            return node
    return None


def _consumers(graph: onnx.GraphProto, name: str) -> list[onnx.NodeProto]:
    """The nodes that read ``name``."""
    return [node for node in graph.node if name in node.input]


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    """Value of attribute ``name`` of ``node`` (``default`` when absent)."""
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _zero_point_for(zp: _Const | None, k: int, out_channels: int) -> np.ndarray | int:
    """The zero point that applies to output channel ``k`` (0 when there is no zero point)."""
    if zp is None:
        return 0
    arr = zp.get()
    if arr.size == 1:
        return arr.reshape(())
    if arr.size != out_channels:
        raise ValueError(f"zero point of size {arr.size} does not match {out_channels} output channels")
    return arr.reshape(-1)[k]


def _set_channel(const: _Const, k: int, value: object, *, channel_axis: int | None = None) -> None:
    """Set slice ``k`` of ``const`` (along its channel axis) to ``value``."""
    arr = np.array(const.get(), copy=True)
    if channel_axis is None:
        # a bias-like tensor: (C,), (C,1,1) or (1,C,1,1) ... -- the axis that is not 1
        non_one = [i for i, d in enumerate(arr.shape) if d != 1]
        if len(non_one) != 1:
            raise ValueError(f"cannot find the channel axis of a bias of shape {arr.shape}")
        channel_axis = non_one[0]
    index = [slice(None)] * arr.ndim
    index[channel_axis] = k
    arr[tuple(index)] = value
    const.set(arr)


def _drop_weight(graph: onnx.GraphProto, node: onnx.NodeProto, k: int) -> None:
    """Zero kernel ``k`` of ``node``'s weight (to the weight zero point for quantized weights)."""
    if node.op_type == "QLinearConv":
        weight_name, zp_name = node.input[3], node.input[5] if len(node.input) > 5 else ""
    elif node.op_type == "ConvInteger":
        weight_name, zp_name = node.input[1], node.input[3] if len(node.input) > 3 else ""
    else:
        weight_name, zp_name = node.input[1], ""
    weight = _constant(graph, weight_name)
    if weight is None and node.op_type == "Conv":
        # QDQ: weight = DequantizeLinear(q, scale, zero_point) -- set q[k] to the zero point
        deq = _producer(graph, weight_name)
        while deq is not None and deq.op_type in ("Identity", "Cast"):
            deq = _producer(graph, deq.input[0])
        if deq is None or deq.op_type != "DequantizeLinear":
            raise ValueError(f"cannot trace the weight {weight_name!r} of {node.name!r} to a constant")
        if int(_attr(deq, "axis", 1)) != 0 and _constant(graph, deq.input[1]).get().size != 1:
            raise ValueError("per-channel DequantizeLinear of a conv weight must use axis 0")
        weight = _constant(graph, deq.input[0])
        zp_name = deq.input[2] if len(deq.input) > 2 else ""
    if weight is None:
        raise ValueError(f"cannot trace the weight {weight_name!r} of {node.name!r} to a constant")
    out_channels = weight.get().shape[0]
    zp = _constant(graph, zp_name) if zp_name else None
    _set_channel(weight, k, _zero_point_for(zp, k, out_channels), channel_axis=0)


def _bias_add_after(graph: onnx.GraphProto, output: str, passthrough: tuple[str, ...]) -> tuple[str, _Const]:
    """Follow single consumers of ``output`` through ``passthrough`` ops to an Add with a constant operand."""
    name = output
    for _ in range(8):
        users = _consumers(graph, name)
        if len(users) != 1:
            break
        user = users[0]
        if user.op_type == "Add":
            other = user.input[1] if user.input[0] == name else user.input[0]
            const = _constant(graph, other)
            if const is not None:
                return user.name, const
            break
        if user.op_type not in passthrough:
            break
        name = user.output[0]
    raise LookupError(f"no per-channel bias Add after {output!r}")


def _drop_bias(graph: onnx.GraphProto, node: onnx.NodeProto, k: int) -> None:
    """Zero the bias of output channel ``k`` of ``node`` wherever that bias lives."""
    if node.op_type == "QLinearConv":
        if len(node.input) > 8 and node.input[8]:
            _set_channel(_constant(graph, node.input[8]), k, 0, channel_axis=0)
        return
    if node.op_type == "ConvInteger":
        # quantize_dynamic: ConvInteger -> Cast -> Mul(scale) -> Add(bias)
        try:
            _, const = _bias_add_after(graph, node.output[0], ("Cast", "Mul"))
        except LookupError:
            return
        _set_channel(const, k, 0)
        return
    if len(node.input) > 2 and node.input[2]:
        bias = _constant(graph, node.input[2])
        if bias is None:
            deq = _producer(graph, node.input[2])
            if deq is None or deq.op_type != "DequantizeLinear":
                raise ValueError(f"cannot trace the bias {node.input[2]!r} of {node.name!r}")
            bias = _constant(graph, deq.input[0])
            zp = _constant(graph, deq.input[2]) if len(deq.input) > 2 and deq.input[2] else None
            _set_channel(bias, k, _zero_point_for(zp, k, bias.get().shape[0]), channel_axis=0)
            return
        _set_channel(bias, k, 0, channel_axis=0)
        return
    # bias-less Conv followed by a per-channel Add (tf2onnx style)
    with contextlib.suppress(LookupError):
        _, const = _bias_add_after(graph, node.output[0], ())
        _set_channel(const, k, 0)


def _fixed_batch_one(session: ort.InferenceSession) -> bool:
    """True when the first input's batch dimension is the literal 1."""
    shape = session.get_inputs()[0].shape
    return bool(shape) and shape[0] == 1


def _run_accuracy(
    path: Path, x: np.ndarray, labels: np.ndarray, output_index: int, batch_size: int | None = None
) -> float:
    """Top-1 accuracy of the ONNX file at ``path`` on input ``x`` (in runs of ``batch_size`` images, all at once
    by default, or one by one for batch 1)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    if _fixed_batch_one(session):
        logits = np.concatenate([session.run(None, {name: x[i : i + 1]})[output_index] for i in range(len(x))])
    else:
        step = batch_size or len(x)
        logits = np.concatenate(
            [session.run(None, {name: x[i : i + step]})[output_index] for i in range(0, len(x), step)]
        )
    logits = np.asarray(logits).reshape(len(x), -1)
    return float(np.mean(np.argmax(logits, axis=1) == np.asarray(labels)))


def reference_drop_accuracy(
    path_onnx: Path,
    conv_name: str,
    kernel: int | None,
    images_nchw_or_nhwc_float: np.ndarray,
    labels: np.ndarray,
    output_index: int = 0,
    batch_size: int | None = None,
) -> float:
    """Accuracy of the ONNX model with output kernel ``kernel`` of node ``conv_name`` dropped.

    ``batch_size``: images per onnxruntime run (default all at once). It matters for dynamically quantized
    models only: ``DynamicQuantizeLinear`` takes its scale from the range of everything in the run.

    ``kernel=None`` gives the unmodified model.  Dropping kernel k sets weight[k] to 0 (or to the weight
    zero point for QLinearConv / ConvInteger / QDQ weights) and the bias of channel k to 0, wherever that
    bias lives: the Conv bias input (possibly a DequantizeLinear of int32), QLinearConv input 8, the
    per-channel Add after a bias-less Conv, or the Add after ConvInteger -> Cast -> Mul.  The input must
    already be preprocessed (see :func:`preprocess_for`).  Only onnx + onnxruntime are used.
    """
    path_onnx = Path(path_onnx)
    x = np.asarray(images_nchw_or_nhwc_float)
    if kernel is None:
        return _run_accuracy(path_onnx, x, labels, output_index, batch_size)
    model = onnx.load(str(path_onnx), load_external_data=True)
    graph = model.graph
    nodes = [node for node in graph.node if node.name == conv_name]
    if len(nodes) != 1:
        raise ValueError(f"expected exactly one node named {conv_name!r}, found {len(nodes)}")
    node = nodes[0]
    if node.op_type not in CONV_OPS:
        raise ValueError(f"node {conv_name!r} is a {node.op_type}, not a convolution")
    _drop_weight(graph, node, kernel)
    _drop_bias(graph, node, kernel)
    with tempfile.TemporaryDirectory(prefix="zoo_ref_") as tmp:
        out = Path(tmp) / "dropped.onnx"
        # everything now lives in memory; tiny models fit in one protobuf, so no external data is needed
        onnx.save(model, str(out))
        return _run_accuracy(out, x, labels, output_index, batch_size)


# ----------------------------------------------------------------------------------------------------------
# graph helpers used by the builders


def first_conv_node(model: onnx.ModelProto) -> onnx.NodeProto:
    """The first conv reached in data flow (breadth-first) from the image input (node order ignored)."""
    graph = model.graph
    init_names = {init.name for init in graph.initializer}
    inputs = [inp.name for inp in graph.input if inp.name not in init_names]
    frontier = list(inputs[:1])
    seen: set[str] = set(frontier)
    while frontier:
        nxt: list[str] = []
        for name in frontier:
            for node in _consumers(graph, name):
                if node.op_type in CONV_OPS:
                    return node
                for out in node.output:
                    if out and out not in seen:
                        seen.add(out)
                        nxt.append(out)
        frontier = nxt
    raise LookupError("no convolution reachable from the image input")


def is_topologically_sorted(graph: onnx.GraphProto) -> bool:
    """True when every node's inputs are produced by earlier nodes (or are inputs / initializers)."""
    known = {inp.name for inp in graph.input} | {init.name for init in graph.initializer} | {""}
    for node in graph.node:
        if any(name not in known for name in node.input):
            return False
        known.update(node.output)
    return True


def _check(model_or_path: onnx.ModelProto | Path, *, full: bool = True) -> None:
    """onnx.checker: full check, falling back to the basic check when shape inference objects."""
    target = str(model_or_path) if isinstance(model_or_path, Path) else model_or_path
    try:
        onnx.checker.check_model(target, full_check=full)
    except onnx.shape_inference.InferenceError:
        onnx.checker.check_model(target)


def _session(path: Path) -> ort.InferenceSession:
    """A quiet single-threaded CPU session."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence exporter / quantizer warnings and log noise."""
    loggers = [logging.getLogger(name) for name in ("root", "onnxruntime", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        logging.getLogger().setLevel(logging.ERROR)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels, strict=True):
                lg.setLevel(level)


# ----------------------------------------------------------------------------------------------------------
# torch side


@dataclass(frozen=True)
class _Config:
    """What determines a trained network's weights."""

    channels: int = 3
    out_channels: int = 6
    kernel: int = 3
    size: int = 8
    norm: bool = False
    num_classes: int = 4


BASE = _Config()


def _make_net(cfg: _Config):
    """conv+BN+relu+conv+relu+avgpool+linear; export-time behaviour is switched by plain attributes."""
    import torch
    from torch import nn

    class Net(nn.Module):
        """The zoo's tiny classifier."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cfg.channels, cfg.out_channels, cfg.kernel, padding=cfg.kernel // 2)
            self.bn1 = nn.BatchNorm2d(cfg.out_channels)
            self.conv2 = nn.Conv2d(cfg.out_channels, 8, 3, padding=1)
            self.pool = nn.AvgPool2d(cfg.size // 4)
            self.fc = nn.Linear(8 * 4 * 4, cfg.num_classes)
            if cfg.norm:
                self.register_buffer("mean", torch.tensor(NORM_MEAN[: cfg.channels]).view(1, -1, 1, 1))
                self.register_buffer("std", torch.tensor(NORM_STD[: cfg.channels]).view(1, -1, 1, 1))
            # export-time switches (plain Python attributes, resolved while tracing)
            self.input_mode = "nchw"  # "nchw" | "nhwc" | "uint8"
            self.flatten_mode = "flatten"  # "flatten" | "view1"
            self.return_features = False

        def forward(self, x):
            if self.input_mode == "nhwc":
                x = x.permute(0, 3, 1, 2)
            elif self.input_mode == "uint8":
                x = x.float() * (1.0 / 255.0)
            if cfg.norm:
                x = (x - self.mean) / self.std
            x = torch.relu(self.bn1(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            feats = x.view(1, -1) if self.flatten_mode == "view1" else torch.flatten(x, 1)
            logits = self.fc(feats)
            if self.return_features:
                return feats, logits
            return logits

    return Net()


@functools.cache
def _trained_state(cfg: _Config) -> dict:
    """Train a net for ``cfg`` (seeded, ~300 Adam steps) and return its state dict (cached per process)."""
    import torch

    torch.manual_seed(1234)
    net = _make_net(cfg)
    images, labels = tiny_dataset(
        1024,
        size=(cfg.size, cfg.size),
        channels=cfg.channels,
        num_classes=cfg.num_classes,
        seed=1000 + cfg.size + cfg.channels,
    )
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # >1 thread is pathologically slow on a busy 2-core box
    try:
        net.train()
        for _ in range(300):
            idx = torch.randint(0, len(x), (64,), generator=gen)
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def trained_net(cfg: _Config = BASE):
    """A fresh eval-mode net loaded with the cached trained weights for ``cfg``."""
    net = _make_net(cfg)
    net.load_state_dict(_trained_state(cfg))
    return net.eval()


def _export(
    net: object,
    dummy: object,
    path: Path,
    opset: int,
    *,
    dynamic: bool = True,
    output_names: tuple[str, ...] = ("logits",),
    **kwargs: object,
) -> None:
    """Legacy (TorchScript-based) ONNX export with exporter chatter silenced."""
    import torch

    axes = {name: {0: "batch"} for name in ("input", *output_names)} if dynamic else None
    with _quiet(), contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(
            net,
            (dummy,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["input"],
            output_names=list(output_names),
            dynamic_axes=axes,
            **kwargs,
        )


def _dummy(cfg: _Config, batch: int = 2, mode: str = "nchw"):
    """An example input for tracing."""
    import torch

    if mode == "nhwc":
        return torch.rand(batch, cfg.size, cfg.size, cfg.channels)
    if mode == "uint8":
        return torch.randint(0, 256, (batch, cfg.channels, cfg.size, cfg.size), dtype=torch.uint8)
    return torch.rand(batch, cfg.channels, cfg.size, cfg.size)


@functools.cache
def latest_legacy_opset() -> int:
    """The newest opset (tried from 21 down) the legacy exporter writes and onnxruntime runs."""
    net = trained_net(BASE)
    with tempfile.TemporaryDirectory(prefix="zoo_opset_") as tmp:
        for opset in range(21, 13, -1):
            path = Path(tmp) / f"m{opset}.onnx"
            try:
                with contextlib.redirect_stderr(io.StringIO()):
                    _export(net, _dummy(BASE), path, opset)
                _session(path)
            except Exception:
                continue
            return opset
    return 17


# ----------------------------------------------------------------------------------------------------------
# builders


def _meta(name: str, path: Path, model: onnx.ModelProto | None, cfg: _Config, **kw: object) -> ZooModel:
    """ZooModel for a built file; conv facts are read from ``model`` unless given."""
    if model is not None and "conv_name" not in kw:
        conv = first_conv_node(model)
        kw.setdefault("conv_name", conv.name)
        kw.setdefault("conv_op", conv.op_type)
    kw.setdefault("conv_op", "Conv")
    kw.setdefault("layout", "NCHW")
    kw.setdefault("fixed_batch", None)
    if model is not None:
        outputs = [o.name for o in model.graph.output]
        kw.setdefault("logits_output", outputs[int(kw.get("logits_index", 0))])
    return ZooModel(
        name=name,
        path=path,
        out_channels=cfg.out_channels,
        in_channels=cfg.channels,
        kernel_shape=(cfg.kernel, cfg.kernel),
        image_size=(cfg.size, cfg.size),
        channels=cfg.channels,
        num_classes=cfg.num_classes,
        reference_path=kw.pop("reference_path", path),
        **kw,
    )


def _plain(
    directory: Path, name: str, opset: int, cfg: _Config = BASE, **kwargs: object
) -> tuple[Path, onnx.ModelProto]:
    """Export the trained net for ``cfg`` at ``opset`` into ``directory/name.onnx``."""
    path = directory / f"{name}.onnx"
    _export(trained_net(cfg), _dummy(cfg), path, opset, **kwargs)
    return path, onnx.load(str(path))


def _build_opset(directory: Path, name: str, opset: int) -> ZooModel:
    path, model = _plain(directory, name, opset)
    return _meta(
        name,
        path,
        model,
        BASE,
        notes=f"legacy torch export, opset {opset}, BN folded into conv",
        extra={"opset": opset},
    )


def _build_opset9(directory: Path) -> ZooModel:
    return _build_opset(directory, "opset9", 9)


def _build_opset13(directory: Path) -> ZooModel:
    return _build_opset(directory, "opset13", 13)


def _build_opset17(directory: Path) -> ZooModel:
    return _build_opset(directory, "opset17", 17)


def _build_opset_latest(directory: Path) -> ZooModel:
    return _build_opset(directory, "opset_latest", latest_legacy_opset())


def _build_bn_unfused(directory: Path) -> ZooModel:
    import torch

    path, model = _plain(directory, "bn_unfused", 13, training=torch.onnx.TrainingMode.PRESERVE)
    conv = first_conv_node(model)
    users = _consumers(model.graph, conv.output[0])
    if [u.op_type for u in users] != ["BatchNormalization"]:
        raise AssertionError(f"expected a BatchNormalization after the first conv, got {[u.op_type for u in users]}")
    return _meta(
        "bn_unfused",
        path,
        model,
        BASE,
        notes="BatchNormalization kept after the first Conv (dropping zeroes the pre-BN output)",
    )


def _build_conv_bias_add(directory: Path) -> ZooModel:
    _, model = _plain(directory, "conv_bias_add_src", 13)
    graph = model.graph
    conv = first_conv_node(model)
    bias_name = conv.input[2]
    bias = next(init for init in graph.initializer if init.name == bias_name)
    bias_arr = numpy_helper.to_array(bias).reshape(1, -1, 1, 1)
    graph.initializer.remove(bias)
    graph.initializer.append(numpy_helper.from_array(bias_arr.astype(np.float32), "conv1_bias_bcast"))
    del conv.input[2]
    original_out = conv.output[0]
    conv.output[0] = original_out + "_nobias"
    add = helper.make_node("Add", [conv.output[0], "conv1_bias_bcast"], [original_out], name="conv1_bias_add")
    index = list(graph.node).index(conv)
    graph.node.insert(index + 1, add)
    path = directory / "conv_bias_add.onnx"
    onnx.save(model, str(path))
    (directory / "conv_bias_add_src.onnx").unlink()
    return _meta(
        "conv_bias_add",
        path,
        model,
        BASE,
        notes="first Conv has no bias input; bias is a following Add of a (1,C,1,1) constant",
    )


def _build_nhwc_transpose(directory: Path) -> ZooModel:
    cfg = replace(BASE, size=16, out_channels=8)
    net = trained_net(cfg)
    net.input_mode = "nhwc"
    path = directory / "nhwc_transpose.onnx"
    _export(net, _dummy(cfg, mode="nhwc"), path, 13)
    model = onnx.load(str(path))
    first = _consumers(model.graph, model.graph.input[0].name)
    if [n.op_type for n in first] != ["Transpose"] or list(_attr(first[0], "perm")) != [0, 3, 1, 2]:
        raise AssertionError("expected Transpose(perm=0,3,1,2) right after the NHWC input")
    return _meta(
        "nhwc_transpose",
        path,
        model,
        cfg,
        layout="NHWC",
        notes="NHWC (N,H,W,C) image input, Transpose(0,3,1,2) before the first Conv; 16x16, 8 kernels",
    )


def _build_norm_in_graph(directory: Path) -> ZooModel:
    cfg = replace(BASE, norm=True)
    path, model = _plain(directory, "norm_in_graph", 13, cfg)
    ops = [n.op_type for n in model.graph.node]
    if "Sub" not in ops or "Div" not in ops:
        raise AssertionError(f"expected Sub and Div in the graph, got {ops}")
    return _meta(
        "norm_in_graph",
        path,
        model,
        cfg,
        notes=f"input pixel/255; graph does (x - {NORM_MEAN}) / {NORM_STD} before the first Conv",
    )


def _build_cast_input(directory: Path) -> ZooModel:
    cfg = replace(BASE, channels=1, out_channels=8, kernel=5)
    net = trained_net(cfg)
    net.input_mode = "uint8"
    path = directory / "cast_input.onnx"
    _export(net, _dummy(cfg, mode="uint8"), path, 13)
    model = onnx.load(str(path))
    if model.graph.input[0].type.tensor_type.elem_type != TensorProto.UINT8:
        raise AssertionError("cast_input must take a uint8 image")
    return _meta(
        "cast_input",
        path,
        model,
        cfg,
        input_dtype="uint8",
        notes="uint8 grayscale input -> Cast(float) -> Mul(1/255) -> Conv 5x5 with 8 kernels",
    )


class _Reader:
    """onnxruntime CalibrationDataReader over a few batches of the calibration set."""

    def __init__(self, input_name: str, batches: list[np.ndarray]) -> None:
        self._items = iter([{input_name: b} for b in batches])

    def get_next(self) -> dict | None:
        """Next calibration feed (None when exhausted)."""
        return next(self._items, None)

    def rewind(self) -> None:  # pragma: no cover - not used by MinMax calibration
        """Not supported (single pass)."""


def _calibration(cfg: _Config) -> list[np.ndarray]:
    images, _ = tiny_dataset(64, size=(cfg.size, cfg.size), channels=cfg.channels, seed=77)
    x = (images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0).copy()
    return [x[i : i + 16] for i in range(0, len(x), 16)]


def _build_quant_static(directory: Path, name: str, fmt: str) -> ZooModel:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    src, _ = _plain(directory, f"{name}_fp32", 13)

    class Reader(_Reader, CalibrationDataReader):
        """Calibration reader registered as a CalibrationDataReader."""

    path = directory / f"{name}.onnx"
    if fmt == "QDQ":
        settings = dict(
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            # 7-bit weights, as onnxruntime advises for AVX2 CPUs: full-range uint8 x int8 products saturate
            # there (VPMADDUBSW) and the model would compute differently on CPUs with and without AVX-VNNI
            reduce_range=True,
        )
        notes = (
            "quantize_static QDQ, per-channel 7-bit int8 weights (reduce_range; DequantizeLinear axis 0), "
            "uint8 activations"
        )
    else:
        settings = dict(
            quant_format=QuantFormat.QOperator,
            per_channel=False,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QUInt8,
        )
        notes = "quantize_static QOperator: QuantizeLinear -> QLinearConv, per-tensor uint8 weights (zp != 0)"
    with _quiet():
        quantize_static(str(src), str(path), Reader("input", _calibration(BASE)), **settings)
    src.unlink()
    model = onnx.load(str(path))
    conv = first_conv_node(model)
    extra: dict = {}
    if conv.op_type == "QLinearConv":
        extra["weight_zero_point"] = numpy_helper.to_array(
            next(i for i in model.graph.initializer if i.name == conv.input[5])
        ).tolist()
    return _meta(name, path, model, BASE, notes=notes, extra=extra)


def _build_qdq(directory: Path) -> ZooModel:
    return _build_quant_static(directory, "qdq", "QDQ")


def _build_qlinear(directory: Path) -> ZooModel:
    return _build_quant_static(directory, "qlinear", "QOperator")


def _build_conv_integer(directory: Path) -> ZooModel:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, _ = _plain(directory, "conv_integer_fp32", 13)
    path = directory / "conv_integer.onnx"
    with _quiet():
        # ORT's CPU ConvInteger only implements uint8 x uint8
        quantize_dynamic(str(src), str(path), weight_type=QuantType.QUInt8, op_types_to_quantize=["Conv"])
    src.unlink()
    model = onnx.load(str(path))
    conv = first_conv_node(model)
    bias_add, _ = _bias_add_after(model.graph, conv.output[0], ("Cast", "Mul"))
    return _meta(
        "conv_integer",
        path,
        model,
        BASE,
        extra={"bias_add": bias_add},
        notes="quantize_dynamic: DynamicQuantizeLinear -> ConvInteger(uint8) -> Cast -> Mul -> Add(bias)",
    )


def _build_float16(directory: Path) -> ZooModel:
    _, model = _plain(directory, "float16_src", 13)
    (directory / "float16_src.onnx").unlink()
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        if init.data_type == TensorProto.FLOAT:
            graph.initializer[i].CopyFrom(
                numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), init.name)
            )
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
                    attr.t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(attr.t).astype(np.float16)))
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    for value in [*graph.input, *graph.output]:
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    del graph.value_info[:]
    path = directory / "float16.onnx"
    onnx.save(model, str(path))
    return _meta(
        "float16",
        path,
        model,
        BASE,
        input_dtype="float16",
        notes="whole graph float16 (initializers, input, output); feed pixel/255 as float16",
    )


def _build_constant_weight(directory: Path) -> ZooModel:
    _, model = _plain(directory, "constant_weight_src", 13)
    (directory / "constant_weight_src.onnx").unlink()
    graph = model.graph
    conv = first_conv_node(model)
    weight = next(init for init in graph.initializer if init.name == conv.input[1])
    graph.initializer.remove(weight)
    const = helper.make_node("Constant", [], [weight.name], name="conv1_weight_constant", value=weight)
    graph.node.insert(0, const)
    path = directory / "constant_weight.onnx"
    onnx.save(model, str(path))
    return _meta("constant_weight", path, model, BASE, notes="first Conv weight produced by a Constant node")


def _build_identity_weight(directory: Path) -> ZooModel:
    _, model = _plain(directory, "identity_weight_src", 13)
    (directory / "identity_weight_src.onnx").unlink()
    graph = model.graph
    conv = first_conv_node(model)
    weight = next(init for init in graph.initializer if init.name == conv.input[1])
    raw = weight.name + "_raw"
    graph.node.insert(0, helper.make_node("Identity", [raw], [weight.name], name="conv1_weight_identity"))
    weight.name = raw
    path = directory / "identity_weight.onnx"
    onnx.save(model, str(path))
    return _meta("identity_weight", path, model, BASE, notes="first Conv weight = Identity(initializer)")


def _build_external_data(directory: Path) -> ZooModel:
    sub = directory / "external_data"
    sub.mkdir(exist_ok=True)
    src, model = _plain(sub, "src", 13)
    src.unlink()
    path = sub / "model.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    if not (sub / "weights.bin").exists():
        raise AssertionError("external data file was not written")
    return _meta(
        "external_data",
        path,
        model,
        BASE,
        notes="all tensors in external_data/weights.bin next to external_data/model.onnx",
    )


def _build_fixed_batch1(directory: Path) -> ZooModel:
    net = trained_net(BASE)
    net.flatten_mode = "view1"
    path = directory / "fixed_batch1.onnx"
    _export(net, _dummy(BASE, batch=1), path, 13, dynamic=False)
    model = onnx.load(str(path))
    return _meta(
        "fixed_batch1",
        path,
        model,
        BASE,
        fixed_batch=1,
        notes="fixed batch 1 and x.view(1, -1): the Reshape hard-codes batch 1",
    )


def _build_fixed_batch1_flatten(directory: Path) -> ZooModel:
    net = trained_net(BASE)
    path = directory / "fixed_batch1_flatten.onnx"
    _export(net, _dummy(BASE, batch=1), path, 13, dynamic=False)
    model = onnx.load(str(path))
    return _meta(
        "fixed_batch1_flatten",
        path,
        model,
        BASE,
        fixed_batch=1,
        notes="fixed batch 1 only in input/output dims; Flatten is batch-agnostic",
    )


def _build_multi_output(directory: Path) -> ZooModel:
    net = trained_net(BASE)
    net.return_features = True
    path = directory / "multi_output.onnx"
    _export(net, _dummy(BASE), path, 13, output_names=("features", "logits"))
    model = onnx.load(str(path))
    return _meta(
        "multi_output",
        path,
        model,
        BASE,
        logits_index=1,
        notes="two outputs (features, logits); logits is the SECOND output",
    )


def _build_unsorted(directory: Path) -> ZooModel:
    _, model = _plain(directory, "unsorted_src", 13)
    (directory / "unsorted_src.onnx").unlink()
    graph = model.graph
    nodes = list(graph.node)[::-1]
    del graph.node[:]
    graph.node.extend(nodes)
    if is_topologically_sorted(graph):
        raise AssertionError("reversed node list is still topologically sorted")
    path = directory / "unsorted.onnx"
    onnx.save(model, str(path))
    return _meta(
        "unsorted",
        path,
        model,
        BASE,
        notes="node list reversed: not topologically sorted and the second Conv is listed first",
    )


def _build_initializers_as_inputs(directory: Path) -> ZooModel:
    path, model = _plain(directory, "initializers_as_inputs", 9, keep_initializers_as_inputs=True)
    model.ir_version = 4
    onnx.save(model, str(path))
    init_names = {i.name for i in model.graph.initializer}
    if not init_names <= {i.name for i in model.graph.input}:
        raise AssertionError("initializers are not all listed as graph inputs")
    return _meta(
        "initializers_as_inputs",
        path,
        model,
        BASE,
        notes="opset 9, IR 4, every initializer also listed in graph.input (first input is the image)",
    )


def _build_torchscript(directory: Path) -> ZooModel:
    import torch

    net = trained_net(BASE)
    path = directory / "torchscript.pt"
    with _quiet():
        traced = torch.jit.trace(net, _dummy(BASE))
        torch.jit.save(traced, str(path), _extra_files={"kernelscope.json": json.dumps({"input_shape": [1, 3, 8, 8]})})
        loaded = torch.jit.load(str(path))
    ref = directory / "torchscript_ref.onnx"
    _export(loaded, _dummy(BASE), ref, 17)
    ref_model = onnx.load(str(ref))
    conv = first_conv_node(ref_model)
    return _meta(
        "torchscript",
        path,
        None,
        BASE,
        conv_name=conv.name,
        conv_op="Conv",
        reference_path=ref,
        logits_output="logits",
        notes="torch.jit.trace + save with kernelscope.json extra file; conv_name/reference_path refer "
        "to torch.onnx.export(dynamo=False, opset 17) of the loaded module (input 'input', "
        "output 'logits', dynamic batch)",
    )


BUILDERS: dict[str, Callable[[Path], ZooModel]] = {
    "opset9": _build_opset9,
    "opset13": _build_opset13,
    "opset17": _build_opset17,
    "opset_latest": _build_opset_latest,
    "bn_unfused": _build_bn_unfused,
    "conv_bias_add": _build_conv_bias_add,
    "nhwc_transpose": _build_nhwc_transpose,
    "norm_in_graph": _build_norm_in_graph,
    "cast_input": _build_cast_input,
    "qdq": _build_qdq,
    "qlinear": _build_qlinear,
    "conv_integer": _build_conv_integer,
    "float16": _build_float16,
    "constant_weight": _build_constant_weight,
    "identity_weight": _build_identity_weight,
    "external_data": _build_external_data,
    "fixed_batch1": _build_fixed_batch1,
    "fixed_batch1_flatten": _build_fixed_batch1_flatten,
    "multi_output": _build_multi_output,
    "unsorted": _build_unsorted,
    "initializers_as_inputs": _build_initializers_as_inputs,
    "torchscript": _build_torchscript,
}

#: Variants whose files do not pass onnx.checker by design.
CHECKER_EXEMPT = {"unsorted": "node list is deliberately not topologically sorted"}


def _verify(model: ZooModel) -> None:
    """onnx.checker (full where possible) and an onnxruntime run on a couple of images."""
    if not model.is_onnx:
        return
    if model.name not in CHECKER_EXEMPT:
        _check(model.path)
    session = _session(model.path)
    images, _ = tiny_dataset(2, size=model.image_size, channels=model.channels, num_classes=model.num_classes)
    x = preprocess_for(model, images)
    if model.fixed_batch == 1:
        x = x[:1]
    outputs = session.run(None, {session.get_inputs()[0].name: x})
    logits = outputs[model.logits_index]
    if logits.shape != (len(x), model.num_classes):
        raise AssertionError(f"{model.name}: logits shape {logits.shape}")
    if not np.all(np.isfinite(logits.astype(np.float32))):
        raise AssertionError(f"{model.name}: non-finite logits")


def build_zoo(directory: Path, names: Iterable[str] | None = None) -> dict[str, ZooModel]:
    """Build (and verify) the requested zoo models into ``directory``; all of them when ``names`` is None."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    wanted = list(BUILDERS) if names is None else list(names)
    unknown = [n for n in wanted if n not in BUILDERS]
    if unknown:
        raise KeyError(f"unknown zoo models: {unknown}; known: {sorted(BUILDERS)}")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # >1 thread is pathologically slow on a busy 2-core box
    try:
        zoo: dict[str, ZooModel] = {}
        for name in wanted:
            model = BUILDERS[name](directory)
            _verify(model)
            zoo[name] = model
        return zoo
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":  # pragma: no cover - manual inspection helper
    import sys

    target = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="zoo_"))
    start = time.perf_counter()
    built = build_zoo(target)
    print(f"built {len(built)} models into {target} in {time.perf_counter() - start:.1f}s")
    for m in built.values():
        if not m.is_onnx:
            print(f"{m.name:24s} (torchscript) conv={m.conv_name}")
            continue
        imgs, labs = tiny_dataset(128, size=m.image_size, channels=m.channels, seed=5)
        xx = preprocess_for(m, imgs)
        base = reference_drop_accuracy(m.path, m.conv_name, None, xx, labs, m.logits_index)
        drops = [
            reference_drop_accuracy(m.path, m.conv_name, k, xx, labs, m.logits_index) for k in range(m.out_channels)
        ]
        print(f"{m.name:24s} {m.conv_op:12s} {m.conv_name:28s} base={base:.3f} drops={np.round(drops, 3).tolist()}")
