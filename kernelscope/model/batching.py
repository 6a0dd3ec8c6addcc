"""Deciding how a model can be batched: as it is, after the dynamic-batch rewrite, or one fixed batch at a time.

The rewrite (:mod:`kernelscope.model.surgery.dynamic_batch`) is adopted only when it provably changes
nothing: on a probe batch of two fixed-size batches it must reproduce the original model run one fixed
batch at a time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from kernelscope.errors import ModelError
from kernelscope.model.surgery.dynamic_batch import fixed_batch_size, make_batch_dynamic
from kernelscope.runtime import make_session, run_checked, run_many


@dataclass(frozen=True)
class Batching:
    """The model to run and how many images each run may take."""

    proto: onnx.ModelProto
    fixed_batch: int | None  # the batch size baked into the file, if any
    made_dynamic: bool  # the rewrite was verified and adopted

    @property
    def batchable(self) -> bool:
        """Whether any batch size (and so several variants per run) is allowed."""
        return self.fixed_batch is None or self.made_dynamic

    @property
    def run_batch(self) -> int | None:
        """The exact batch every run must have, or ``None`` when any batch works."""
        return None if self.batchable else self.fixed_batch


def resolve_batching(
    proto: onnx.ModelProto,
    image_input: str,
    output: str,
    providers: Sequence[str] | None = None,
    threads: int | None = None,
) -> Batching:
    """Make a fixed batch dynamic when that reproduces the original model; otherwise keep it."""
    fixed = fixed_batch_size(proto, image_input)
    if fixed is None:
        return Batching(proto, None, False)
    candidate = make_batch_dynamic(proto, image_input)
    if candidate is None:
        return Batching(proto, fixed, False)
    original = make_session(proto, providers, threads)
    try:
        rewritten = make_session(candidate, providers, threads)
        probe = probe_input(original, image_input, 2 * fixed)
        batched = rewritten.run([output], {image_input: probe})[0]
    except (ModelError, Exception):  # the rewrite does not load or run: keep the fixed batch
        return Batching(proto, fixed, False)
    parts = [run_checked(original, {image_input: probe[s : s + fixed]}, output) for s in range(0, 2 * fixed, fixed)]
    if any(np.ndim(part) == 0 for part in parts):
        raise ModelError(f"the model's output {output!r} is a scalar; a classifier outputs (N, K) class scores")
    expected = np.concatenate(parts)
    if batched.shape != expected.shape:
        return Batching(proto, fixed, False)
    scale = max(1.0, float(np.max(np.abs(expected))))
    if float(np.max(np.abs(batched.astype(np.float64) - expected))) > 1e-4 * scale:
        return Batching(proto, fixed, False)
    return Batching(candidate, fixed, True)


def probe_input(session, image_input: str, n: int) -> np.ndarray:
    """A deterministic random batch of ``n`` inputs of the session's input type (dynamic dims = 8)."""
    meta = next(i for i in session.get_inputs() if i.name == image_input)
    shape = [n] + [d if isinstance(d, int) and d > 0 else 8 for d in meta.shape[1:]]
    rng = np.random.default_rng(0)
    if "uint8" in meta.type:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    dtype = np.float16 if "float16" in meta.type else np.float64 if "double" in meta.type else np.float32
    return (rng.standard_normal(shape) * 0.5).astype(dtype)


def fixed_chunks(x: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """Yield (start, chunk, real) with every chunk exactly ``size`` long; the last is padded by repeating
    its last image, and ``real`` says how many of its entries are genuine."""
    for start in range(0, x.shape[0], size):
        chunk = x[start : start + size]
        real = chunk.shape[0]
        if real < size:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], size - real, axis=0)])
        yield start, chunk, real


def run_outputs(
    session, batching: Batching, image_input: str, x: np.ndarray, outputs: Sequence[str]
) -> list[np.ndarray]:
    """Run ``outputs`` for the whole batch ``x``: in one call when the graph takes any batch, else in padded
    chunks of its fixed batch size (the padding rows are dropped again)."""
    if batching.batchable:
        return list(run_many(session, {image_input: x}, outputs))
    parts = [
        [r[:real] for r in run_many(session, {image_input: chunk}, outputs)]
        for _, chunk, real in fixed_chunks(x, batching.fixed_batch or 1)
    ]
    return [np.concatenate([p[i] for p in parts]) for i in range(len(outputs))]
