"""Mutations of a small valid ONNX model, for fuzzing the command line (tests/test_fuzz_models.py, bench/fuzz.py).

A mutation takes the serialized model and a :class:`Chooser` (the source of every random decision) and
returns new bytes. Two choosers exist: :class:`RandomChooser` (a seeded ``random.Random``, for long runs)
and :class:`HypothesisChooser` (draws from hypothesis's ``st.data()``, so failures shrink).

Values are kept small (dims, pads, strides up to 64) so that a mutated model cannot ask onnxruntime for
gigabytes: the point is malformed structure, not resource exhaustion.
"""

from __future__ import annotations

import contextlib
import io
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import onnx
from onnx import AttributeProto, TensorProto

T = TypeVar("T")

#: How Python prints a warning: "path/file.py:12: RuntimeWarning: ...".
_WARNING = re.compile(r"^\S+:\d+: \w*Warning: ", re.MULTILINE)

#: Op types a node may be turned into: real ones with other arities, quantized convs, unknown ones.
OP_TYPES = (
    "Conv", "ConvTranspose", "QLinearConv", "ConvInteger", "Relu", "Gemm", "MatMul", "Add", "Identity", "Flatten",
    "GlobalAveragePool", "MaxPool", "Reshape", "Transpose", "Softmax", "BatchNormalization", "Det", "Loop", "If",
    "Constant", "DequantizeLinear", "NoSuchOp", "",
)  # fmt: skip
#: Small integers, including the edge cases (0, negative, one past a typical bound).
SMALL_INTS = (-64, -2, -1, 0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 64)
FLOATS = (0.0, -1.0, 1e-30, 0.5, 1.0, 3.0, 1e30, float("nan"), float("inf"), -float("inf"))
STRINGS = ("", "image", "w", "b", "fc", "conv", "logits", "NOTSET", "SAME_UPPER", "VALID", "x" * 300, "é\x00")
#: Dimension values for tensor shapes.
DIMS = (-1, 0, 1, 2, 3, 4, 5, 6, 8, 9, 16, 64)
OPSETS = (-1, 0, 1, 6, 7, 8, 9, 10, 11, 13, 17, 21, onnx.defs.onnx_opset_version(), onnx.defs.onnx_opset_version() + 1)
DOMAINS = ("", "ai.onnx", "com.microsoft", "ai.onnx.ml", "custom")


class Chooser(Protocol):
    """The source of every random decision a mutation makes."""

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        ...

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options`` (non-empty)."""
        ...


class RandomChooser:
    """Decisions from a seeded ``random.Random``."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        return self.rng.randint(low, high)

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options``."""
        return options[self.rng.randrange(len(options))]


class HypothesisChooser:
    """Decisions drawn from hypothesis's ``st.data()`` object, so that failing cases shrink."""

    def __init__(self, data: object) -> None:
        self.data = data

    def integer(self, low: int, high: int) -> int:
        """An integer in [low, high]."""
        from hypothesis import strategies as st

        return self.data.draw(st.integers(low, high))  # type: ignore[attr-defined]

    def pick(self, options: Sequence[T]) -> T:
        """One of ``options``."""
        return options[self.integer(0, len(options) - 1)]


# ------------------------------------------------------------------------------------------ protobuf level


def _value_infos(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    graph = model.graph
    return [*graph.input, *graph.output, *graph.value_info]


def _tensor_names(model: onnx.ModelProto) -> list[str]:
    graph = model.graph
    names = [v.name for v in graph.input] + [t.name for t in graph.initializer]
    for node in graph.node:
        names += list(node.output)
    return names or ["image"]


def _change_dims(model: onnx.ModelProto, c: Chooser) -> None:
    if c.integer(0, 1) and model.graph.initializer:
        tensor = c.pick(model.graph.initializer)
        dims = list(tensor.dims)
        if dims and c.integer(0, 2):
            dims[c.integer(0, len(dims) - 1)] = c.pick(DIMS)
        elif c.integer(0, 1) and dims:
            dims.pop()
        else:
            dims.append(c.pick(DIMS))
        del tensor.dims[:]
        tensor.dims.extend(dims)
        return
    infos = [v for v in _value_infos(model) if v.type.HasField("tensor_type")]
    if not infos:
        return
    shape = c.pick(infos).type.tensor_type.shape
    action = c.integer(0, 3)
    if action == 0 and shape.dim:
        dim = shape.dim[c.integer(0, len(shape.dim) - 1)]
        if c.integer(0, 3):
            dim.dim_value = c.pick(DIMS)
        else:
            dim.dim_param = c.pick(STRINGS)
    elif action == 1 and shape.dim:
        del shape.dim[c.integer(0, len(shape.dim) - 1)]
    elif action == 2:
        shape.dim.add().dim_value = c.pick(DIMS)
    else:
        shape.Clear()


def _change_dtype(model: onnx.ModelProto, c: Chooser) -> None:
    new_type = c.integer(0, 25)
    if c.integer(0, 1) and model.graph.initializer:
        c.pick(model.graph.initializer).data_type = new_type
        return
    infos = [v for v in _value_infos(model) if v.type.HasField("tensor_type")]
    if infos:
        c.pick(infos).type.tensor_type.elem_type = new_type


def _set_attribute_value(attr: AttributeProto, c: Chooser) -> None:
    kind = c.integer(0, 4)
    attr.ClearField("ints")
    attr.ClearField("floats")
    for field in ("i", "f", "s"):
        attr.ClearField(field)  # type: ignore[arg-type]
    if kind == 0:
        attr.type, attr.i = AttributeProto.INT, c.pick(SMALL_INTS)
    elif kind == 1:
        attr.type = AttributeProto.INTS
        attr.ints.extend(c.pick(SMALL_INTS) for _ in range(c.integer(0, 6)))
    elif kind == 2:
        attr.type, attr.f = AttributeProto.FLOAT, c.pick(FLOATS)
    elif kind == 3:
        attr.type, attr.s = AttributeProto.STRING, c.pick(STRINGS).encode("utf-8")
    else:
        attr.type = AttributeProto.FLOATS
        attr.floats.extend(c.pick(FLOATS) for _ in range(c.integer(0, 4)))


def _change_attribute(model: onnx.ModelProto, c: Chooser) -> None:
    if not model.graph.node:
        return
    node = c.pick(model.graph.node)
    if node.attribute and c.integer(0, 2):
        attr = c.pick(node.attribute)
        if c.integer(0, 4) == 0:
            node.attribute.remove(attr)
            return
    else:
        attr = node.attribute.add()
        attr.name = c.pick(("group", "pads", "strides", "dilations", "kernel_shape", "auto_pad", "axis", "transB"))
    _set_attribute_value(attr, c)


def _change_op_type(model: onnx.ModelProto, c: Chooser) -> None:
    if model.graph.node:
        node = c.pick(model.graph.node)
        node.op_type = c.pick(OP_TYPES)
        if c.integer(0, 3) == 0:
            node.domain = c.pick(DOMAINS)


def _change_names(model: onnx.ModelProto, c: Chooser) -> None:
    graph = model.graph
    names = [*_tensor_names(model), "", "missing_tensor"]
    action = c.integer(0, 4)
    if action == 0 and graph.node:
        node = c.pick(graph.node)
        if node.input:
            node.input[c.integer(0, len(node.input) - 1)] = c.pick(names)
        else:
            node.input.append(c.pick(names))
    elif action == 1 and graph.node:
        node = c.pick(graph.node)
        if node.output:
            node.output[c.integer(0, len(node.output) - 1)] = c.pick(names)
    elif action == 2 and graph.initializer:
        c.pick(graph.initializer).name = c.pick(names)
    elif action == 3 and graph.input:
        c.pick(graph.input).name = c.pick(names)
    elif graph.output:
        c.pick(graph.output).name = c.pick(names)


def _change_opset(model: onnx.ModelProto, c: Chooser) -> None:
    action = c.integer(0, 3)
    if action == 0 or not model.opset_import:
        entry = model.opset_import.add()
        entry.domain, entry.version = c.pick(DOMAINS), c.pick(OPSETS)
    elif action == 1:
        del model.opset_import[c.integer(0, len(model.opset_import) - 1)]
    else:
        entry = c.pick(model.opset_import)
        entry.version = c.pick(OPSETS)
        if action == 3:
            entry.domain = c.pick(DOMAINS)
    if c.integer(0, 3) == 0:
        model.ir_version = c.pick((0, 1, 3, 4, 7, 8, 9, 10, 11, 99))


def _drop(model: onnx.ModelProto, c: Chooser) -> None:
    graph = model.graph
    fields = [f for f in (graph.node, graph.initializer, graph.input, graph.output) if len(f)]
    if fields:
        items = c.pick(fields)
        del items[c.integer(0, len(items) - 1)]


def _duplicate(model: onnx.ModelProto, c: Chooser) -> None:
    graph = model.graph
    action = c.integer(0, 3)
    if action == 0 and graph.node:
        graph.node.add().CopyFrom(c.pick(graph.node))
    elif action == 1 and graph.initializer:
        graph.initializer.add().CopyFrom(c.pick(graph.initializer))
    elif action == 2 and graph.input:
        graph.input.add().CopyFrom(c.pick(graph.input))
    elif len(graph.node) >= 2:
        first, second = c.pick(graph.node), c.pick(graph.node)
        if first.output and second.output:
            second.output[0] = first.output[0]


def _change_tensor_data(model: onnx.ModelProto, c: Chooser) -> None:
    if not model.graph.initializer:
        return
    tensor = c.pick(model.graph.initializer)
    action = c.integer(0, 4)
    raw = tensor.raw_data
    if action == 0:
        tensor.raw_data = raw[: c.integer(0, len(raw))]
    elif action == 1:
        tensor.raw_data = raw + bytes(c.integer(1, 16))
    elif action == 2 and raw:
        i = c.integer(0, len(raw) - 1)
        tensor.raw_data = raw[:i] + bytes([c.integer(0, 255)]) + raw[i + 1 :]  # NaN/Inf bit patterns happen
    elif action == 3:
        tensor.ClearField("raw_data")
        tensor.float_data.extend(c.pick(FLOATS) for _ in range(c.integer(0, 8)))
    else:
        tensor.data_location = TensorProto.EXTERNAL
        entry = tensor.external_data.add()
        entry.key = c.pick(("location", "offset", "length", "checksum"))
        entry.value = c.pick(("w.bin", "../w.bin", "/etc/passwd", "", "-5", "99999999", "abc", "model.onnx"))


def _change_metadata(model: onnx.ModelProto, c: Chooser) -> None:
    entry = model.metadata_props.add()
    entry.key = c.pick(("kernelscope.preprocessing", "kernelscope.dataset", "kernelscope.class_names", "other"))
    entry.value = c.pick(
        ('{"scale": 0}', '{"mean": [1, 2]}', '{"std": [0, 0, 0]}', '{"layout": "NCWH"}', "[]", "null", "{", '"x"',
         '{"scale": "abc"}', '{"mean": "a"}', '["a"]', "cifar10", "mnist", '{"size": [0, 0]}', '{"channels": 2}')
    )  # fmt: skip


PROTO_MUTATIONS: dict[str, Callable[[onnx.ModelProto, Chooser], None]] = {
    "dims": _change_dims,
    "dtype": _change_dtype,
    "attribute": _change_attribute,
    "op_type": _change_op_type,
    "names": _change_names,
    "opset": _change_opset,
    "drop": _drop,
    "duplicate": _duplicate,
    "tensor_data": _change_tensor_data,
    "metadata": _change_metadata,
}


def mutate_proto(data: bytes, c: Chooser, *, max_steps: int = 3) -> tuple[bytes, list[str]]:
    """Apply 1..``max_steps`` protobuf-level mutations to the serialized model ``data``."""
    model = onnx.ModelProto()
    model.ParseFromString(data)
    applied = []
    for _ in range(c.integer(1, max_steps)):
        name = c.pick(sorted(PROTO_MUTATIONS))
        PROTO_MUTATIONS[name](model, c)
        applied.append(name)
    return model.SerializeToString(), applied


# ---------------------------------------------------------------------------------------------- byte level


def mutate_bytes(data: bytes, c: Chooser, *, max_steps: int = 4) -> tuple[bytes, list[str]]:
    """Apply 1..``max_steps`` raw byte mutations (flip, insert, delete, truncate, duplicate) to ``data``."""
    buf = bytearray(data)
    applied = []
    for _ in range(c.integer(1, max_steps)):
        action = c.pick(("flip", "set", "insert", "delete", "truncate", "duplicate"))
        applied.append(action)
        if not buf:
            buf.extend(bytes(c.integer(1, 8)))
            continue
        i = c.integer(0, len(buf) - 1)
        if action == "flip":
            buf[i] ^= 1 << c.integer(0, 7)
        elif action == "set":
            buf[i] = c.pick((0, 1, 0x7F, 0x80, 0xFF, c.integer(0, 255)))
        elif action == "insert":
            buf[i:i] = bytes(c.integer(0, 255) for _ in range(c.integer(1, 8)))
        elif action == "delete":
            del buf[i : i + c.integer(1, 16)]
        elif action == "truncate":
            del buf[i:]
        else:
            j = min(len(buf), i + c.integer(1, 32))
            buf[j:j] = buf[i:j]
    return bytes(buf), applied


def mutate(data: bytes, c: Chooser) -> tuple[bytes, list[str]]:
    """A protobuf-level mutation (two times in three), else a byte-level one."""
    if c.integer(0, 2):
        return mutate_proto(data, c)
    return mutate_bytes(data, c)


# ----------------------------------------------------------------------------------------------- property


@dataclass(frozen=True)
class Outcome:
    """What one run of ``main`` did."""

    code: int | None
    stdout: str
    stderr: str
    crash: str | None  # why the run breaks the property, or None

    @property
    def unforeseen(self) -> bool:
        """The error was caught by the CLI's last-resort handler: clean, but no library check foresaw it."""
        return self.stderr.startswith("kernelscope: error: unexpected ")


def run_cli(argv: list[str]) -> Outcome:
    """Run ``kernelscope.cli.app.main(argv)`` in-process, capturing its output, and judge the property.

    The property: the exit code is 0, 1 or 2; no traceback is printed; a failure prints exactly one
    ``kernelscope: error:`` line on stderr. Anything escaping ``main`` itself is a crash too.
    """
    from kernelscope.cli.app import main

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and not isinstance(exc, Exception):
            raise
        return Outcome(None, out.getvalue(), err.getvalue(), f"main raised {type(exc).__name__}: {exc}")
    stdout, stderr = out.getvalue(), err.getvalue()
    lines = [line for line in stderr.splitlines() if line.strip()]
    crash = None
    if code not in (0, 1, 2):
        crash = f"exit code {code}"
    elif "Traceback" in stdout + stderr:
        crash = "a traceback was printed"
    elif _WARNING.search(stderr):
        crash = "a Python warning was printed"
    elif code != 0 and (len(lines) != 1 or not lines[0].startswith("kernelscope: error:")):
        crash = f"{len(lines)} stderr lines instead of one error line"
    return Outcome(code, stdout, stderr.strip(), crash)


def inspect_argv(model: Path, data: Path, *, attack: bool) -> list[str]:
    """The ``inspect`` command line the fuzzers run (tiny data, one thread, no bootstrap)."""
    argv = ["inspect", str(model), "--data", str(data), "--bootstrap", "0", "--threads", "1", "-q"]
    return argv + ([] if attack else ["--no-attack"])
