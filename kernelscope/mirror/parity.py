"""Compare the mirror with onnxruntime before trusting its gradients."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import torch

from kernelscope.devices import check_session_device
from kernelscope.errors import ModelError
from kernelscope.mirror.module import OnnxMirror
from kernelscope.mirror.tensors import from_numpy
from kernelscope.model.graph import GraphIndex, node_label
from kernelscope.model.loading import serialize_for_runtime
from kernelscope.runtime import make_session, provider_list, run_checked, session_options

#: Parity tolerance (relative to the logit scale) for float32 graphs.
FLOAT32_TOLERANCE = 1e-4
#: For float16 graphs: the mirror computes in float32, so the gap is float16's own rounding of the model.
FLOAT16_TOLERANCE = 1e-2


@dataclass(frozen=True)
class ParityResult:
    """How far the mirror's output is from onnxruntime's on one batch."""

    output: str
    max_abs_diff: float
    relative_diff: float  # max_abs_diff / max(1, max |onnxruntime output|)
    tolerance: float
    ok: bool
    op_types: tuple[str, ...]
    #: when not ok: the first tensor (data-flow order) where the two part, its op type and node name
    first_divergence: str | None = None
    first_divergence_op: str | None = None
    first_divergence_node: str | None = None

    def summary(self) -> str:
        """One line for messages."""
        text = (
            f"mirror vs onnxruntime on {self.output!r}: max abs diff {self.max_abs_diff:.3g} "
            f"(relative {self.relative_diff:.3g}, tolerance {self.tolerance:g})"
        )
        if self.first_divergence:
            text += (
                f"; first divergence at {self.first_divergence!r} ({self.first_divergence_op} node "
                f"{self.first_divergence_node!r})"
            )
        return text


def default_tolerance(proto: onnx.ModelProto) -> float:
    """1e-4 for float32 graphs; float16's tolerance when the graph computes in float16."""
    types = {v.type.tensor_type.elem_type for v in [*proto.graph.input, *proto.graph.output]}
    types |= {t.data_type for t in proto.graph.initializer}
    return FLOAT16_TOLERANCE if onnx.TensorProto.FLOAT16 in types else FLOAT32_TOLERANCE


def _relative(mirror: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """(max abs diff, relative diff) of two arrays; shape mismatches count as infinitely far."""
    a = np.asarray(mirror, dtype=np.float64)
    b = np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf"), float("inf")
    if a.size == 0:
        return 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf: no RuntimeWarning on stderr
        diff = np.where(a == b, 0.0, np.abs(a - b))  # equal infinities agree
    # NaN in the same places is agreement; NaN on one side only is not.
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, diff)
    worst = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))
    scale = max(1.0, float(np.nanmax(np.abs(np.where(np.isfinite(b), b, 0.0)))))
    return worst, worst / scale


def _mirror_values(mirror: OnnxMirror, feeds: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    device = next((b.device for b in mirror.buffers()), None)  # the mirror's device (CPU or CUDA)
    tensors = {name: from_numpy(value, mirror.dtype).to(device) for name, value in feeds.items()}
    with torch.no_grad():
        values = mirror.run(tensors, names)
    return {name: v.detach().cpu().numpy() for name, v in values.items()}


def check_parity(
    proto: onnx.ModelProto,
    mirror: OnnxMirror,
    feeds: dict[str, np.ndarray],
    output: str,
    tolerance: float = FLOAT32_TOLERANCE,
    providers: Sequence[str] | None = None,
) -> ParityResult:
    """Run ``mirror`` and onnxruntime on ``feeds`` and compare ``output``.

    ``relative_diff`` is the max abs difference over ``max(1, max |onnxruntime output|)``; ``ok`` when it is
    within ``tolerance``. When not ok, every node output is compared in data-flow order to name the first
    tensor where the two part.
    """
    session = make_session(proto, providers)
    reference = run_checked(session, feeds, output)
    mine = _mirror_values(mirror, feeds, [output])[output]
    max_abs, relative = _relative(mine, reference)
    op_types = tuple(sorted({n.op_type for n in proto.graph.node}))
    ok = bool(relative <= tolerance)
    if ok:
        return ParityResult(output, max_abs, relative, tolerance, True, op_types)
    found = _first_divergence(proto, mirror, feeds, tolerance, providers)
    name, op, node = found if found else (None, None, None)
    return ParityResult(output, max_abs, relative, tolerance, False, op_types, name, op, node)


def _first_divergence(
    proto: onnx.ModelProto,
    mirror: OnnxMirror,
    feeds: dict[str, np.ndarray],
    tolerance: float,
    providers: Sequence[str] | None,
) -> tuple[str, str, str] | None:
    """The first node output (data-flow order) where mirror and onnxruntime differ beyond ``tolerance``."""
    index = GraphIndex.build(proto.graph)
    order = index.topological_order()
    exposed = _expose_all(proto, [index.node(i) for i in order])
    if exposed is None:
        return None
    probe, names = exposed
    try:
        session = _plain_session(probe, providers)
        values = session.run(names, feeds)
    except Exception:  # onnxruntime refused some exposed tensor: no finer diagnosis than the output's
        return None
    reference = dict(zip(names, values, strict=True))
    available = {n for n in names if mirror.computes(n)}
    try:
        mine = _mirror_values(mirror, feeds, sorted(available))
    except ModelError:
        mine = {}
    for i in order:
        node = index.node(i)
        for name in node.output:
            if not name or name not in reference or name not in available:
                continue  # a constant the mirror folded away, or a tensor the output does not need
            if name not in mine:  # the mirror failed on what it should compute
                return name, node.op_type, node_label(node)
            if _relative(mine[name], reference[name])[1] > tolerance:
                return name, node.op_type, node_label(node)
    return None


def _expose_all(proto: onnx.ModelProto, nodes: list[onnx.NodeProto]) -> tuple[onnx.ModelProto, list[str]] | None:
    """A copy of ``proto`` whose outputs are every node output with a type shape inference can tell."""
    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    try:
        inferred = onnx.shape_inference.infer_shapes(probe)
    except Exception:
        inferred = probe
    types = {
        v.name: v.type.tensor_type.elem_type
        for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type
    }
    present = {o.name for o in probe.graph.output}
    names: list[str] = []
    for node in nodes:
        for name in node.output:
            if not name or name not in types:
                continue  # ORT needs a type for a graph output; skip what inference cannot type
            names.append(name)
            if name not in present:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(name, types[name], None))
                present.add(name)
    return (probe, names) if names else None


def _plain_session(proto: onnx.ModelProto, providers: Sequence[str] | None):
    """An unoptimized session, so that every exposed tensor is the op's own result."""
    import onnxruntime as ort

    options = session_options()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        serialize_for_runtime(proto), sess_options=options, providers=provider_list(providers)
    )
    check_session_device(session, providers)  # the diagnosis runs where the checked session ran, or says why not
    return session
