"""onnxruntime sessions: provider choice (CUDA when the GPU build is installed, else CPU) and checks."""

from __future__ import annotations

import contextlib
import functools
import io
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import onnx

from kernelscope.errors import ModelError, some_of
from kernelscope.model.loading import serialize_for_runtime

# Silence onnxruntime's C++ log (warnings about unused initializers, and its own copy of every error, which
# kernelscope reports as one ModelError line) unless the user asks for it: 0 verbose .. 3 error, 4 fatal.
_LOG_SEVERITY = int(os.environ.get("KERNELSCOPE_ORT_LOG_LEVEL", "4"))


def session_options():  # -> onnxruntime.SessionOptions
    """Session options with onnxruntime's own logging quiet; the default logger too (it logs load errors)."""
    import onnxruntime as ort

    ort.set_default_logger_severity(_LOG_SEVERITY)
    options = ort.SessionOptions()
    options.log_severity_level = _LOG_SEVERITY
    return options


def default_providers() -> list[str]:
    """CUDA first when ``onnxruntime-gpu`` is installed and its CUDA provider starts here, then CPU."""
    return (
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
        if cuda_provider_problem() is None
        else ["CPUExecutionProvider"]
    )


#: The CUDA provider's options: IEEE float32 (no TF32, which rounds a Conv's or MatMul's operands to 10 bits
#: of mantissa on Ampere and later GPUs: the mirror, in float32, would then part from onnxruntime by ~1e-3,
#: past the parity tolerance), and cuDNN algorithms chosen by its heuristics rather than by timing each one
#: (EXHAUSTIVE, the default, times them again in every session, one per kernel variant, and can pick a
#: different algorithm, so different last bits, from run to run).
CUDA_PROVIDER_OPTIONS = {"use_tf32": "0", "cudnn_conv_algo_search": "HEURISTIC"}


def _cuda_options() -> dict[str, str]:
    """:data:`CUDA_PROVIDER_OPTIONS` for the installed onnxruntime: ``use_tf32`` exists from 1.18 (an unknown
    option fails the session); before it, NVIDIA's ``NVIDIA_TF32_OVERRIDE=0`` turns TF32 off (unless the
    user set it), read when the CUDA libraries start, so before the first CUDA session."""
    import onnxruntime as ort

    version = tuple(int(part) for part in re.findall(r"\d+", ort.__version__)[:2])
    if version >= (1, 18):
        return dict(CUDA_PROVIDER_OPTIONS)
    os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    return {k: v for k, v in CUDA_PROVIDER_OPTIONS.items() if k != "use_tf32"}


def provider_list(providers: Sequence[str] | None) -> list:
    """What onnxruntime's ``providers=`` takes for ``providers`` (default: :func:`default_providers`): the
    names, with the CUDA provider's options."""
    return [
        (name, _cuda_options()) if name == "CUDAExecutionProvider" else name
        for name in (providers or default_providers())
    ]


def _preload_cuda_libraries() -> str | None:
    """Load the CUDA and cuDNN libraries of the NVIDIA pip packages (those a CUDA build of torch or
    ``onnxruntime-gpu[cuda,cudnn]`` installs) before the first CUDA session, so that the provider finds them
    whether or not torch was imported first; the first library that failed to load, or None."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):  # before onnxruntime 1.21: the system's library path only
        return None
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):  # it prints each failure: kernelscope says it in one line
            ort.preload_dlls()
    except Exception as exc:  # a broken install must not stop a run that may still work on the CPU
        return _first_line(exc)
    # "Failed to load NAME: why" or "Failed to load /full/path/NAME: why" (a Windows path has a colon and spaces)
    failed = re.search(r"Failed to load (.+?\.(?:dll|so(?:\.\d+)*)):", printed.getvalue())
    return re.split(r"[\\/]", failed.group(1))[-1] if failed else None


def _probe_model(op: str, x: tuple, y: tuple, constants: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    """A one-node model ``y = op(x, *constants)`` for probing what this onnxruntime does; ``x`` and ``y`` are
    (name, element type, shape)."""
    from onnx import helper

    node = helper.make_node(op, [x[0], *(c.name for c in constants)], [y[0]])
    graph = helper.make_graph(
        [node], f"{op}_probe", [helper.make_tensor_value_info(*x)], [helper.make_tensor_value_info(*y)], constants
    )
    # IR version 7 (opset 13's): any onnxruntime reads it, whatever IR the installed onnx writes by default
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)


@functools.cache
def cuda_provider_problem() -> str | None:
    """None when onnxruntime's CUDA provider starts in this process; else why not, in a few words.

    ``onnxruntime-gpu`` lists the CUDA provider as available whether or not a GPU and the CUDA libraries are
    there, and a session asked for it falls back to the CPU with only a log line. So it is tried once, on a
    one-node model, before ``--device auto`` picks it (or ``--device cuda`` insists on it).
    """
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider (install onnxruntime-gpu in place of onnxruntime)"
    missing = _preload_cuda_libraries()
    model = _probe_model("Relu", ("x", onnx.TensorProto.FLOAT, [1]), ("y", onnx.TensorProto.FLOAT, [1]))
    try:
        with warnings.catch_warnings():  # onnxruntime warns of a provider it cannot use: the answer says it
            warnings.simplefilter("ignore")
            probe = ort.InferenceSession(
                model.SerializeToString(),
                sess_options=session_options(),
                providers=provider_list(["CUDAExecutionProvider", "CPUExecutionProvider"]),
            )
        started = "CUDAExecutionProvider" in probe.get_providers()
    except Exception as exc:
        return f"its CUDA provider failed to start: {_first_line(exc)}"
    if started:
        return None
    why = (
        f"{missing} did not load"
        if missing
        else "no GPU is visible, or its CUDA or cuDNN libraries did not load: KERNELSCOPE_ORT_LOG_LEVEL=2 shows which"
    )
    return f"its CUDA provider did not start ({why})"


_SHARED_ARENA: list[bool] = []  # whether this process registered onnxruntime's shared CPU arena


def _shared_cpu_arena() -> bool:
    """Register (once per process) a CPU arena that sessions may share; False where onnxruntime refuses."""
    import onnxruntime as ort

    if not _SHARED_ARENA:
        try:
            info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
            ort.create_and_register_allocator(info, None)
            _SHARED_ARENA.append(True)
        except Exception:  # an older or unusual build: sessions keep their own arenas
            _SHARED_ARENA.append(False)
    return _SHARED_ARENA[0]


def make_session(
    proto: onnx.ModelProto | bytes,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
    *,
    shared_arena: bool = False,
):  # -> onnxruntime.InferenceSession (import kept lazy: onnxruntime is slow to import)
    """An onnxruntime session for an in-memory model (or its serialized bytes), with a one-line error when the
    runtime refuses it.

    ``shared_arena``: on the CPU, take memory from one arena shared by every such session of the process
    instead of a fresh one (sessions built one after the other for the same shapes — one per kernel variant
    — then reuse warm memory: measured 1.05x -> 1.00x the floor on the reference ResNet-8).
    """
    import onnxruntime as ort

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # No memory pattern: it reserves one block for every planned tensor of a run shape, twice what the arena
    # holds when tensors are freed as they die (a 224-px ResNet-50 at batch 128: 12.8 vs 6.1 MB per image),
    # at the same speed (measured 0.99-1.01x on the 32-px reference models at batch 128).
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    chosen = list(providers or default_providers())
    if shared_arena and chosen[0] == "CPUExecutionProvider" and _shared_cpu_arena():
        options.add_session_config_entry("session.use_env_allocators", "1")
    try:
        session = ort.InferenceSession(
            proto if isinstance(proto, bytes) else serialize_for_runtime(proto),
            sess_options=options,
            providers=provider_list(chosen),
        )
    except Exception as exc:
        raise ModelError(f"onnxruntime cannot load the model: {_first_line(exc)}") from None
    from kernelscope.devices import check_session_device

    check_session_device(session, providers)  # --device cuda never runs on the CPU without saying so
    return session


def run_checked(session, feeds: dict[str, np.ndarray], output: str) -> np.ndarray:
    """Run ``session`` for one output; runtime failures become a one-line :class:`ModelError`."""
    return run_many(session, feeds, [output])[0]


def run_many(session, feeds: dict[str, np.ndarray], outputs: Sequence[str]) -> list[np.ndarray]:
    """Run ``session`` for several outputs; runtime failures become a one-line :class:`ModelError`."""
    try:
        return session.run(list(outputs), feeds)
    except Exception as exc:
        raise ModelError(f"onnxruntime failed while running the model: {_first_line(exc)}") from None


_ORT_NOISE = (
    re.compile(r"\[ONNXRuntimeError\] : \d+ : \w+ : "),  # status prefixes, often nested
    re.compile(r"(?:/\S*/)?[\w.]+\.(?:cc|cpp|h):\d+\s*"),  # C++ source locations
    re.compile(r"onnxruntime::[\w:~<>]+\((?:[^()]|\([^()]*\))*\)\s*"),  # C++ signatures
)


def _first_line(exc: BaseException) -> str:
    """The first line of an onnxruntime error, without C++ source locations and signatures, at most 300 chars."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    for pattern in _ORT_NOISE:
        line = pattern.sub("", line)
    return " ".join(line.split())[:300] or type(exc).__name__


#: Where an int8 weight enters an integer matrix product: op type -> position of the weight input.
_INT8_WEIGHT_INPUT = {"QLinearConv": 3, "QLinearMatMul": 3, "QGemm": 3, "MatMulInteger": 1, "ConvInteger": 1}
#: Float ops onnxruntime fuses with a DequantizeLinear of their weight into one of the above (QDQ models).
_FUSED_WITH_DEQUANTIZE = {"Conv", "MatMul", "Gemm"}


def int8_weight_layers(proto: onnx.ModelProto) -> list[str]:
    """Names of the layers whose matrix product onnxruntime computes with uint8 x int8 (U8S8) kernels.

    Integer-domain ops with an int8 constant weight, and float Conv/MatMul/Gemm fed by a DequantizeLinear of
    an int8 constant (QDQ models; onnxruntime fuses the pattern into QLinearConv/QLinearMatMul).
    """
    from kernelscope.model.graph import node_label

    int8 = {t.name for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t.data_type == onnx.TensorProto.INT8:
            int8.update(node.output)
    dequantized = {n.output[0] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8}
    layers = []
    for node in proto.graph.node:
        position = _INT8_WEIGHT_INPUT.get(node.op_type)
        integer = position is not None and len(node.input) > position and node.input[position] in int8
        fused = node.op_type in _FUSED_WITH_DEQUANTIZE and any(name in dequantized for name in node.input[:2])
        if integer or fused:
            layers.append(f"{node.op_type} {node_label(node)!r}")
    return layers


_SATURATION_PROBE: dict[tuple[str, ...], bool] = {}


def u8s8_saturates(providers: Sequence[str] | None = None) -> bool:
    """Whether onnxruntime's uint8 x int8 matrix product saturates on this machine (run once per providers).

    On x86-64 CPUs with AVX2 but without AVX-VNNI, onnxruntime multiplies U8S8 pairs with VPMADDUBSW, which
    adds two adjacent products in 16 bits with saturation (a documented trade-off of its quantization
    guide). The probe is one MatMulInteger: 255*127 + 255*127 is 64770 by the ONNX spec, 32767 when it
    saturates.
    """
    key = tuple(providers or default_providers())
    if key not in _SATURATION_PROBE:
        from onnx import TensorProto, numpy_helper

        model = _probe_model(
            "MatMulInteger",
            ("a", TensorProto.UINT8, [1, 2]),
            ("y", TensorProto.INT32, [1, 1]),
            [numpy_helper.from_array(np.full((2, 1), 127, np.int8), "b")],
        )
        try:
            (y,) = make_session(model, key).run(None, {"a": np.full((1, 2), 255, np.uint8)})
            _SATURATION_PROBE[key] = int(np.asarray(y).reshape(-1)[0]) != 2 * 255 * 127
        except Exception:  # a provider without MatMulInteger: no evidence either way
            _SATURATION_PROBE[key] = False
    return _SATURATION_PROBE[key]


def saturation_hint(proto: onnx.ModelProto, providers: Sequence[str] | None = None) -> str:
    """Why a mirror of an int8 model can part from onnxruntime here, or "" when that is not the reason."""
    layers = int8_weight_layers(proto)
    if not layers or not u8s8_saturates(providers):
        return ""
    shown = some_of(layers, 3)
    return (
        f"onnxruntime on this CPU (AVX2 without AVX-VNNI) adds uint8 x int8 products in saturating 16-bit pairs "
        f"in the int8-weight layers ({shown}), so it departs from the ONNX arithmetic the mirror follows and from "
        "this model on a VNNI CPU; re-quantize with reduce_range=True (7-bit weights) or uint8 weights, audit on "
        "a CPU with AVX-VNNI, or pass --atol to attack through the spec-exact mirror (onnxruntime still judges)"
    )
