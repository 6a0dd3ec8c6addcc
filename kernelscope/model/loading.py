"""Reading a classifier from disk: ONNX (inline or external data) or TorchScript (exported to ONNX once).

The input file is only ever opened for reading. Everything after loading works on the in-memory
``onnx.ModelProto`` held by :class:`LoadedModel`.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from kernelscope.errors import ModelError, UsageError
from kernelscope.model.first_conv import CONV_OPS
from kernelscope.model.graph import node_label

#: ``metadata_props`` keys kernelscope reads (and writes into hardened files); see docs/metadata.md.
META_PREPROCESSING = "kernelscope.preprocessing"
META_DATASET = "kernelscope.dataset"
META_CLASS_NAMES = "kernelscope.class_names"

#: Name of the JSON file inside a TorchScript archive that carries the same information, plus
#: ``input_shape``. Written with ``torch.jit.save(m, path, _extra_files={TORCHSCRIPT_EXTRA: ...})``.
TORCHSCRIPT_EXTRA = "kernelscope.json"

#: Opset used when exporting a TorchScript model to ONNX.
TORCHSCRIPT_EXPORT_OPSET = 17

TORCHSCRIPT_SUFFIXES = {".pt", ".pth", ".ts", ".torchscript", ".jit"}
_PICKLE_MAGIC = (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")
_ZIP_MAGIC = b"PK\x03\x04"


@dataclass(frozen=True)
class TensorInfo:
    """Name, element type and shape of a graph input or output (``None``/str for dynamic dims)."""

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype of the element type."""
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))

    @property
    def rank(self) -> int | None:
        """Number of dimensions, or ``None`` when the file does not say."""
        return None if self.shape is None else len(self.shape)


@dataclass
class LoadedModel:
    """A model ready for analysis: its ONNX graph in memory plus what we learned while loading it."""

    path: Path
    format: str  # "onnx" or "torchscript"
    proto: onnx.ModelProto
    opset: int
    image_input: TensorInfo
    outputs: list[TensorInfo]
    metadata: dict[str, str]
    #: Metadata parsed from the kernelscope keys (``preprocessing``, ``dataset``, ``class_names``).
    kernelscope_metadata: dict[str, object] = field(default_factory=dict)

    @property
    def producer(self) -> str:
        """Exporter name and version as recorded in the file."""
        name = self.proto.producer_name or "unknown"
        return f"{name} {self.proto.producer_version}".strip()

    def output(self, name: str | None) -> TensorInfo:
        """The output called ``name`` (default: the first graph output)."""
        if name is None:
            return self.outputs[0]
        for out in self.outputs:
            if out.name == name:
                return out
        known = ", ".join(o.name for o in self.outputs)
        raise UsageError(f"the model has no output named {name!r}; its outputs are: {known}")


def file_format(path: str | os.PathLike[str]) -> str:
    """``"torchscript"`` or ``"onnx"``: how :func:`load_model` will read ``path`` (decided without loading it)."""
    path = Path(path)
    head = b""
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(8)
    return "torchscript" if head.startswith(_ZIP_MAGIC) or path.suffix.lower() in TORCHSCRIPT_SUFFIXES else "onnx"


def load_model(path: str | os.PathLike[str], *, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """Load an ONNX or TorchScript classifier, validating what later steps rely on.

    TorchScript files are read with ``torch.jit.load`` (never unpickled) and exported to ONNX once; their
    input shape comes from the archive's ``kernelscope.json`` or from ``input_shape``. Raises
    :class:`~kernelscope.errors.ModelError` with a one-line explanation for anything unusable.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelError(f"{path} is a folder; pass the model file (.onnx or TorchScript .pt)")
    if path.stat().st_size == 0:
        raise ModelError(f"{path} is empty (0 bytes); it is not a model file")
    with open(path, "rb") as handle:
        head = handle.read(8)

    if file_format(path) == "torchscript":
        if head.startswith(_PICKLE_MAGIC):
            raise ModelError(
                f"{path} is a Python pickle (torch.save), not TorchScript; kernelscope never unpickles "
                "files: save the model with torch.jit.save or export it to ONNX"
            )
        if not head.startswith(_ZIP_MAGIC):
            raise ModelError(f"{path} is not a TorchScript archive (no zip header); export it with torch.jit.save")
        proto, extra = _torchscript_to_onnx(path, input_shape)
        fmt = "torchscript"
    else:
        proto = _read_onnx(path)
        extra = {}
        fmt = "onnx"
    return _describe(path, fmt, proto, extra)


def _read_onnx(path: Path) -> onnx.ModelProto:
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}); check the file") from None
    except Exception as exc:  # protobuf raises a variety of errors on random bytes
        raise ModelError(f"{path} is not a readable ONNX model ({type(exc).__name__}); check the file") from None
    if not proto.graph.node and not proto.graph.input:
        raise ModelError(f"{path} does not contain an ONNX graph (it parsed as an empty model); check the file")
    _load_external_data(proto, path.parent)
    return proto


def _external_tensors(proto: onnx.ModelProto) -> list[TensorProto]:
    tensors = list(proto.graph.initializer)
    for node in proto.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    return [t for t in tensors if t.data_location == TensorProto.EXTERNAL]


def _load_external_data(proto: onnx.ModelProto, base_dir: Path) -> None:
    """Load external tensor data, refusing locations outside the model's folder."""
    base = base_dir.resolve()
    for tensor in _external_tensors(proto):
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if not location or os.path.isabs(location) or location.startswith(("/", "\\")):
            raise ModelError(
                f"tensor {tensor.name!r} points to external data at {location!r}; only paths inside the "
                "model's folder are allowed"
            )
        target = (base / location).resolve()
        if base != target and base not in target.parents:
            raise ModelError(
                f"tensor {tensor.name!r} points to external data {location!r} outside the model's folder; "
                "refusing to read it"
            )
        if not target.is_file():
            raise ModelError(
                f"external data file {location!r} for tensor {tensor.name!r} is missing; put it next to the model"
            )
        offset = int(info.get("offset", 0) or 0)
        length = info.get("length")
        size = target.stat().st_size
        want = int(length) if length is not None else size - offset
        if offset < 0 or want < 0 or offset + want > size:
            raise ModelError(
                f"external data file {location!r} is too short for tensor {tensor.name!r}; the file is truncated"
            )
        with open(target, "rb") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read(want)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT


def _torchscript_to_onnx(path: Path, input_shape: tuple[int, ...] | None) -> tuple[onnx.ModelProto, dict]:
    import torch  # heavy; only needed for TorchScript

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        raise ModelError(f"{path} is not a TorchScript archive (corrupt zip); export it with torch.jit.save") from None
    if any(n.endswith("/data.pkl") for n in names) and not any(n.endswith("/constants.pkl") for n in names):
        raise ModelError(
            f"{path} was written by torch.save (a pickle), not torch.jit.save; kernelscope never unpickles "
            "files: save a TorchScript model with torch.jit.save or export it to ONNX"
        )
    extra_files = {TORCHSCRIPT_EXTRA: ""}
    try:
        with _native_stderr_silenced():  # e.g. torch's C++ deprecation warning on quantized weights
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra_files)
    except Exception as exc:
        raise ModelError(f"{path} could not be loaded as TorchScript: {_torch_reason(exc)}") from None
    module.eval()
    extra: dict = {}
    raw = extra_files.get(TORCHSCRIPT_EXTRA) or ""
    if raw:
        try:
            extra = json.loads(raw)
        except (ValueError, TypeError):
            raise ModelError(f"{path}: its {TORCHSCRIPT_EXTRA} is not valid JSON") from None
        if not isinstance(extra, dict):
            raise ModelError(f"{path}: its {TORCHSCRIPT_EXTRA} must be a JSON object")
    shape = input_shape or extra.get("input_shape")
    if not shape:
        raise UsageError(f"{path} does not record its input shape; pass --input-shape, e.g. --input-shape 1,3,32,32")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise UsageError(f"invalid input shape {shape!r}; expected integers like 1,3,32,32") from None
    if len(shape) != 4 or any(s <= 0 for s in shape):
        raise UsageError(f"input shape {shape} must be 4 positive integers (N,C,H,W or N,H,W,C)")
    blocking = _unexportable_ops(module)
    if blocking:
        raise ModelError(
            f"{path}: the TorchScript model uses {', '.join(blocking)}, which torch.onnx cannot export, and "
            "inspect, harden and neurons all run on the ONNX export; export the float model to ONNX before "
            "quantizing it (onnxruntime.quantization.quantize_dynamic then quantizes the ONNX file), or save "
            "the unquantized module with torch.jit.save"
        )
    dummy = torch.zeros(shape, dtype=torch.float32)
    buffer = io.BytesIO()
    try:
        # the exporter prints the whole Torch IR graph when it fails: keep the error one line
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (dummy,),
                buffer,
                dynamo=False,
                opset_version=TORCHSCRIPT_EXPORT_OPSET,
                input_names=["input"],
                output_names=["logits"],  # names the first output; any others keep the exporter's names
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
    except Exception as exc:
        raise ModelError(f"{path}: exporting the TorchScript model to ONNX failed: {_torch_reason(exc)}") from None
    proto = onnx.load_from_string(buffer.getvalue())
    # Carry the archive's kernelscope metadata over, so it is used like an ONNX file's.
    for key in ("preprocessing", "dataset", "class_names"):
        if key in extra:
            value = extra[key]
            entry = proto.metadata_props.add()
            entry.key = f"kernelscope.{key}"
            entry.value = value if isinstance(value, str) else json.dumps(value)
    return proto, extra


@contextlib.contextmanager
def _native_stderr_silenced():
    """Send file descriptor 2 (where torch's C++ code writes warnings) to /dev/null for the block."""
    try:
        saved = os.dup(2)
    except OSError:  # no usable stderr: nothing to silence
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


#: TorchScript op namespaces torch.onnx has no export for (eager-mode quantization: quantize_dynamic, packed params).
_UNEXPORTABLE_PREFIXES = ("quantized::", "_quantized::")


def _unexportable_ops(module) -> list[str]:
    """The distinct TorchScript ops of ``module`` (submodules inlined) that torch.onnx cannot export, sorted."""
    try:
        graph = module.inlined_graph
    except Exception:  # not every ScriptModule exposes a graph
        return []
    found: set[str] = set()
    stack = [graph]
    while stack:
        for node in stack.pop().nodes():
            kind = node.kind()
            if kind.startswith(_UNEXPORTABLE_PREFIXES):
                found.add(kind)
            stack.extend(node.blocks())
    return sorted(found)


def _torch_reason(exc: Exception) -> str:
    """The first line of a torch error, without the C++ ``[enforce fail at file.cc:123] .`` prefix."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", text.splitlines()[0]).strip()
    return (first or type(exc).__name__)[:160]


def _tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    ttype = value.type.tensor_type
    shape: tuple[int | str | None, ...] | None = None
    if ttype.HasField("shape"):
        dims: list[int | str | None] = []
        for dim in ttype.shape.dim:
            if dim.HasField("dim_value"):
                dims.append(int(dim.dim_value))
            elif dim.HasField("dim_param"):
                dims.append(dim.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(value.name, int(ttype.elem_type), shape)


def model_opset(proto: onnx.ModelProto) -> int:
    """The default-domain opset the model imports (ONNX treats a missing entry as opset 1)."""
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return int(entry.version)
    return 1


def graph_image_inputs(proto: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that are real run-time inputs (old IRs list every initializer as an input too)."""
    initializers = {t.name for t in proto.graph.initializer}
    return [v for v in proto.graph.input if v.name not in initializers]


def _conv_weight_inputs(proto: onnx.ModelProto, inputs: list[onnx.ValueInfoProto]) -> dict[str, str]:
    """Graph inputs that feed the weight of a convolution directly: input name -> "<op> node '<name>'"."""
    names = {v.name for v in inputs}
    found: dict[str, str] = {}
    for node in proto.graph.node:
        if node.op_type in CONV_OPS:
            position = CONV_OPS[node.op_type][0]
            if len(node.input) > position and node.input[position] in names:
                found.setdefault(node.input[position], f"{node.op_type} node {node_label(node)!r}")
    return found


def _describe(path: Path, fmt: str, proto: onnx.ModelProto, extra: dict) -> LoadedModel:
    opset = model_opset(proto)
    newest = onnx.defs.onnx_opset_version()
    if opset > newest:
        raise ModelError(
            f"{path} uses ONNX opset {opset}, newer than the installed onnx {onnx.__version__} supports "
            f"(up to {newest}); upgrade onnx"
        )
    if opset < 7:
        raise ModelError(f"{path} uses ONNX opset {opset}; kernelscope supports opset 7 and newer")
    inputs = graph_image_inputs(proto)
    if not inputs:
        raise ModelError(f"{path} has no run-time input; an image classifier needs one image input")
    if len(inputs) > 1:
        weights = _conv_weight_inputs(proto, inputs)
        if weights and len(inputs) - len(weights) == 1:
            name, conv = next(iter(weights.items()))
            raise ModelError(
                f"{path}: the weight of {conv} is a graph input ({name!r}), supplied at run time; kernelscope "
                "needs a constant first-layer weight: store it as an initializer"
            )
        names = ", ".join(v.name for v in inputs)
        raise ModelError(
            f"{path} has {len(inputs)} inputs ({names}); kernelscope audits classifiers with a single image input"
        )
    image = _tensor_info(inputs[0])
    if not inputs[0].type.HasField("tensor_type"):
        raise ModelError(f"{path}: input {image.name!r} is not a tensor; an image batch is expected")
    if image.rank is not None and image.rank not in (3, 4):
        raise ModelError(
            f"{path}: input {image.name!r} has {image.rank} dimensions {list(image.shape or ())}; kernelscope "
            "expects a 4-D image batch (N,C,H,W or N,H,W,C) or a 3-D batch of one-channel images (N,H,W)"
        )
    if image.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.UINT8):
        raise ModelError(
            f"{path}: input {image.name!r} has element type {TensorProto.DataType.Name(image.elem_type)}; "
            "expected float32, float16, float64 or uint8 pixels"
        )
    if not proto.graph.output:
        raise ModelError(f"{path} declares no outputs")
    outputs = [_tensor_info(v) for v in proto.graph.output]
    metadata = {entry.key: entry.value for entry in proto.metadata_props}
    parsed: dict[str, object] = {}
    for key, short in (
        (META_PREPROCESSING, "preprocessing"),
        (META_DATASET, "dataset"),
        (META_CLASS_NAMES, "class_names"),
    ):
        if key in metadata:
            value = metadata[key]
            if short == "dataset":
                parsed[short] = value
                continue
            try:
                parsed[short] = json.loads(value)
            except ValueError:
                raise ModelError(f"{path}: metadata {key!r} is not valid JSON; fix or remove it") from None
            problem = _metadata_problem(short, parsed[short])
            if problem:
                raise ModelError(f"{path}: metadata {key!r} {problem}; fix or remove it (see docs/metadata.md)")
    return LoadedModel(
        path=path,
        format=fmt,
        proto=proto,
        opset=opset,
        image_input=image,
        outputs=outputs,
        metadata=metadata,
        kernelscope_metadata=parsed,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _metadata_problem(key: str, value: object) -> str | None:
    """What is wrong with a parsed ``kernelscope.preprocessing`` / ``class_names`` value, or ``None``."""
    if key == "class_names":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return "must be a JSON list of class names"
        return None
    if not isinstance(value, dict):
        return "must be a JSON object with any of scale, mean, std, layout, size, channels, channel_order"
    checks = {
        "scale": (lambda v: _is_number(v) and v > 0, "a positive number"),
        "mean": (lambda v: _is_number(v) or (isinstance(v, list) and v and all(map(_is_number, v))), "numbers"),
        "std": (
            lambda v: (
                (_is_number(v) and v != 0) or (isinstance(v, list) and v and all(_is_number(s) and s != 0 for s in v))
            ),
            "non-zero numbers",
        ),
        "layout": (lambda v: isinstance(v, str) and v.upper() in ("NCHW", "NHWC", "NHW"), "NCHW, NHWC or NHW"),
        "size": (
            lambda v: (
                isinstance(v, list)
                and len(v) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in v)
            ),
            "[height, width] positive integers",
        ),
        "channels": (lambda v: v in (1, 3) and not isinstance(v, bool), "1 or 3"),
        "channel_order": (lambda v: isinstance(v, str) and v.lower() in ("rgb", "bgr"), "rgb or bgr"),
    }
    for name, (valid, expected) in checks.items():
        if name in value and not valid(value[name]):
            return f"has {name} = {json.dumps(value[name])[:60]}; expected {expected}"
    return None


def serialize_for_runtime(proto: onnx.ModelProto) -> bytes | str:
    """Bytes for ``onnxruntime.InferenceSession``; models past protobuf's 2 GB limit go via a temp folder."""
    if proto.ByteSize() < 1_900_000_000:
        return proto.SerializeToString()
    # onnx.save converts tensors to external data in place: save a copy so the caller's proto stays intact.
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    folder = tempfile.mkdtemp(prefix="kernelscope-")
    target = os.path.join(folder, "model.onnx")
    onnx.save(copy, target, save_as_external_data=True, all_tensors_to_one_file=True, location="model.data")
    return target
