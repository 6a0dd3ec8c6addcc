"""Write a hardened model back into the TorchScript archive it came from.

kernelscope audits and tunes a TorchScript input through its ONNX export (:mod:`kernelscope.model.loading`),
so what ``harden`` changes are initializers of that export. Here each changed initializer is traced back to
the module's own parameters, the module is updated in place and saved with ``torch.jit.save``: the code, every
other parameter and buffer, and the archive's ``kernelscope.json`` stay as they were.

The exporter writes a parameter in one of three ways, and each is inverted exactly:

- under its own name (``fc.weight``), or under another name with the same values (a deduplicated or renamed
  constant), possibly transposed (a ``Linear`` exported as ``MatMul``): the new values are copied;
- fused with the BatchNormalization that follows a Conv (inference-mode export): the fused weight is
  ``W' = s · W`` per output channel and the fused bias ``b' = β + s · (b − μ)``, with
  ``s = γ / √(σ² + ε)``. The new ``W'`` is written as ``W = W' / s`` and the change of ``b'`` goes into the
  BatchNormalization's shift ``β`` (the running statistics, ε and any Conv bias are kept as deployed).

The result is checked, not trusted: the updated module, run by torch, must give the outputs onnxruntime gives
for the hardened ONNX graph on real images, and agree on every prediction. Anything that cannot be traced or
checked is a one-line :class:`~kernelscope.errors.ModelError` naming the initializers, and nothing is written.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from kernelscope.errors import ModelError, some_of
from kernelscope.io import atomic_write_bytes
from kernelscope.model.loading import TORCHSCRIPT_EXTRA

#: Largest relative difference between the updated module (torch) and the hardened graph (onnxruntime).
PARITY_TOLERANCE = 1e-4


@dataclass(frozen=True)
class ParameterUpdate:
    """How one changed initializer of the export lands in the module."""

    initializer: str
    parameters: tuple[str, ...]  # the module's state keys it changes
    how: str  # "copied", "copied (transposed)" or "un-fused from BatchNormalization '<prefix>'"


@dataclass(frozen=True)
class TorchScriptWrite:
    """What :func:`write_torchscript` wrote and how it checked it."""

    path: Path
    updates: list[ParameterUpdate]
    parity_relative_diff: float
    parity_images: int


def write_torchscript(
    source: str | os.PathLike[str],
    original: onnx.ModelProto,
    hardened: onnx.ModelProto,
    target: str | os.PathLike[str],
    check_inputs: np.ndarray,
    *,
    metadata: dict | None = None,
    providers: list[str] | None = None,
) -> TorchScriptWrite:
    """Write ``source`` (a TorchScript archive) with the weights ``hardened`` (its tuned ONNX export) holds.

    ``original`` is the archive's export as audited, ``check_inputs`` a batch of model inputs (already
    preprocessed) for the parity check; ``metadata`` is stored under ``harden`` in the archive's
    ``kernelscope.json``. The file is written atomically, only after the check passed.
    """
    import torch

    extra_files = {TORCHSCRIPT_EXTRA: ""}
    module = torch.jit.load(str(source), map_location="cpu", _extra_files=extra_files)
    module.eval()
    state = {key: value for key, value in module.state_dict().items()}
    values, updates = _module_values(original, hardened, {k: v.detach().cpu().numpy() for k, v in state.items()})
    with torch.no_grad():
        for key, value in values.items():
            tensor = state[key]
            tensor.copy_(torch.as_tensor(np.array(value), dtype=tensor.dtype))
    relative = _check_parity(module, hardened, check_inputs, providers)

    extra = json.loads(extra_files[TORCHSCRIPT_EXTRA]) if extra_files[TORCHSCRIPT_EXTRA] else {}
    if metadata is not None:
        extra["harden"] = metadata
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(extra, sort_keys=True)})
    atomic_write_bytes(target, buffer.getvalue())
    return TorchScriptWrite(Path(target), updates, relative, len(check_inputs))


def _module_values(
    original: onnx.ModelProto, hardened: onnx.ModelProto, state: dict[str, np.ndarray]
) -> tuple[dict[str, np.ndarray], list[ParameterUpdate]]:
    """New values of the module's state keys, from the initializers that changed between the two exports."""
    old = {t.name: numpy_helper.to_array(t) for t in original.graph.initializer}
    new = {t.name: numpy_helper.to_array(t) for t in hardened.graph.initializer}
    changed = [n for n in new if n in old and not np.array_equal(old[n], new[n])]
    conv_bias = _conv_bias_of(original)  # fused weight initializer -> its Conv's bias initializer
    values: dict[str, np.ndarray] = {}
    updates: list[ParameterUpdate] = []
    handled: set[str] = set()
    unmapped: list[str] = []
    for name in changed:
        if name in handled:
            continue
        direct = _direct(name, old[name], state)
        if direct is not None:
            key, transposed = direct
            values[key] = new[name].T if transposed else new[name]
            updates.append(ParameterUpdate(name, (key,), "copied (transposed)" if transposed else "copied"))
            handled.add(name)
            continue
        if name in conv_bias.values():
            continue  # a fused bias: handled with its weight below (or reported unmapped there)
        fused = _fused(name, old, state)
        if fused is None:
            unmapped.append(name)
            continue
        weight_key, prefix, scale = fused
        w_new = new[name].astype(np.float64)
        values[weight_key] = (w_new / scale.reshape((-1,) + (1,) * (w_new.ndim - 1))).astype(state[weight_key].dtype)
        updates.append(ParameterUpdate(name, (weight_key,), f"un-fused from BatchNormalization {prefix!r}"))
        handled.add(name)
    # A fused bias (its weight changed or not) moves its BatchNormalization's shift by the same amount.
    for weight, bias in conv_bias.items():
        if bias in changed and bias not in handled:
            fused = _fused(weight, old, state)
            if fused is None:
                unmapped.append(bias)
                continue
            shift = f"{fused[1]}.bias"
            values[shift] = (state[shift].astype(np.float64) + new[bias] - old[bias]).astype(state[shift].dtype)
            updates.append(ParameterUpdate(bias, (shift,), f"un-fused from BatchNormalization {fused[1]!r}"))
            handled.add(bias)
    if unmapped:
        raise ModelError(
            f"the tuned initializer(s) {some_of([repr(n) for n in unmapped], 5)} of the TorchScript model's ONNX "
            "export cannot be traced back to the module's parameters (not a parameter, a transposed one, or a "
            "Conv fused with a BatchNormalization); write the hardened model as ONNX instead (-o NAME.onnx)"
        )
    return values, updates


def _direct(name: str, value: np.ndarray, state: dict[str, np.ndarray]) -> tuple[str, bool] | None:
    """The state key holding exactly ``value`` (by name first, then by value; transposed for 2-D)."""
    if name in state and state[name].shape == value.shape and np.array_equal(state[name], value):
        return name, False
    same = [k for k, v in state.items() if v.shape == value.shape and v.dtype.kind == "f" and np.array_equal(v, value)]
    if len(same) == 1:
        return same[0], False
    if len(same) > 1:
        return None  # ambiguous: equal tensors under two names (e.g. two freshly initialized layers)
    if value.ndim == 2:
        flipped = [k for k, v in state.items() if v.shape == value.T.shape and np.array_equal(v, value.T)]
        if len(flipped) == 1:
            return flipped[0], True
    return None


def _batchnorms(state: dict[str, np.ndarray]) -> list[str]:
    """Prefixes of BatchNormalization modules (weight, bias, running_mean, running_var), in state order."""
    found = []
    for key in state:
        if key.endswith(".running_mean"):
            prefix = key[: -len(".running_mean")]
            if all(f"{prefix}.{part}" in state for part in ("weight", "bias", "running_var")):
                found.append(prefix)
    return found


def _fused(name: str, old: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> tuple[str, str, np.ndarray] | None:
    """(conv weight key, BatchNormalization prefix, per-channel s) when ``name`` is a Conv weight fused with a BN.

    A pair fits when the fused weight is s · W channel by channel (to float32 rounding) and s = γ / √(σ² + ε)
    for one small ε ≥ 0 shared by every channel. Where several pairs fit, the BatchNormalization that comes
    first after the Conv in the module's own order is taken; the parity check confirms the choice.
    """
    fused = old[name].astype(np.float64)
    if fused.ndim < 3:
        return None
    keys = list(state)
    fits = []
    for weight_key in keys:
        weight = state[weight_key]
        if weight.shape != fused.shape or weight.dtype.kind != "f":
            continue
        w = weight.astype(np.float64).reshape(len(weight), -1)
        f = fused.reshape(len(fused), -1)
        norms = np.einsum("ij,ij->i", w, w)
        if np.any(norms == 0):
            continue
        scale = np.einsum("ij,ij->i", w, f) / norms
        if not np.allclose(f, scale[:, None] * w, rtol=1e-5, atol=1e-6 * float(np.abs(f).max() or 1.0)):
            continue
        for prefix in _batchnorms(state):
            gamma = state[f"{prefix}.weight"].astype(np.float64)
            variance = state[f"{prefix}.running_var"].astype(np.float64)
            if gamma.shape != scale.shape or np.any(scale == 0):
                continue
            eps = (gamma / scale) ** 2 - variance
            if np.all(eps >= -1e-6) and np.all(eps <= 0.1) and np.ptp(eps) <= 1e-5 * (1 + float(variance.max())):
                after = keys.index(f"{prefix}.weight") - keys.index(weight_key)
                fits.append((after if after > 0 else len(keys) + abs(after), weight_key, prefix, scale))
    if not fits:
        return None
    _, weight_key, prefix, scale = min(fits, key=lambda fit: fit[0])
    return weight_key, prefix, scale


def _conv_bias_of(proto: onnx.ModelProto) -> dict[str, str]:
    """Conv weight initializer -> that Conv's bias initializer."""
    initializers = {t.name for t in proto.graph.initializer}
    return {
        node.input[1]: node.input[2]
        for node in proto.graph.node
        if node.op_type == "Conv" and len(node.input) > 2 and node.input[1] in initializers
        and node.input[2] in initializers
    }  # fmt: skip


def _check_parity(module, hardened: onnx.ModelProto, inputs: np.ndarray, providers: list[str] | None) -> float:
    """Largest relative output difference of the updated module against onnxruntime on the hardened graph."""
    import torch

    from kernelscope.runtime import make_session

    session = make_session(hardened, providers or ["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    expected = session.run(None, {feed: inputs.astype(np.float32)})[0].reshape(len(inputs), -1)
    with torch.no_grad():
        got = module(torch.as_tensor(inputs, dtype=torch.float32))
    got = (got[0] if isinstance(got, (tuple, list)) else got).numpy().reshape(len(inputs), -1)
    scale = float(np.abs(expected).max()) or 1.0
    relative = float(np.abs(got - expected).max()) / scale
    # A prediction may differ only where the hardened graph's own top two scores are within the tolerance.
    top2 = np.sort(expected, axis=1)[:, -2:] if expected.shape[1] > 1 else np.zeros((len(expected), 2))
    clear = (top2[:, 1] - top2[:, 0]) > 2 * PARITY_TOLERANCE * scale
    flipped = clear & (got.argmax(axis=1) != expected.argmax(axis=1))
    if relative > PARITY_TOLERANCE or np.any(flipped):
        raise ModelError(
            f"the TorchScript module with the tuned weights does not reproduce the hardened ONNX graph (largest "
            f"relative difference {relative:.3g} on {len(inputs)} images, tolerance {PARITY_TOLERANCE:g}); "
            "write the hardened model as ONNX instead (-o NAME.onnx)"
        )
    return relative
