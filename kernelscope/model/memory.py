"""Sizing onnxruntime runs by a memory budget: how many (variant, image) pairs one scoring run may hold.

A scoring run evaluates V kernel variants of N images as one batch of V·N, so its activations grow with V·N.
A fixed count (1,024 variant-images) is harmless at 32 pixels and tens of gigabytes at 224. The per-image
cost is estimated from the graph itself: the float tensors onnx shape inference can size at batch 1, the
largest few of which are alive at once when onnxruntime runs the graph (its planner reuses the rest).

The PyTorch stages (the attacks' gradients, the Taylor screen, ``neurons``' PGD, ``harden``'s fine-tuning)
keep every activation of a forward pass for its backward: their per-image cost is the *sum* of the
activations (a 224-px ResNet-50: 101 MB estimated, 106 MB measured per image), so at the default batch of 128
one forward+backward would take 13 GB. :class:`MemoryPlan` sizes their batches from the same budget.

The budget is the whole process's: what the process holds whatever the batch (Python and the libraries, the
model's weights in each of the copies alive at once, one block of preprocessed images) is taken off first, and
the runs' activations get the rest. The sizes depend only on the model and the budget, never on the machine's
state, so a seeded run gives the same results anywhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import onnx

from kernelscope.errors import UsageError

#: Default budget for the process (``--memory``).
DEFAULT_MEMORY = 2 * 1024**3
#: How many of the largest activation tensors are counted as alive at once.
LIVE_TENSORS = 4
#: What the process holds before any model: Python, numpy, onnx, onnxruntime and PyTorch loaded (measured
#: 254 MB resident here), with room for the reports.
PROCESS_BYTES = 384 << 20
#: Copies of the model's weights alive at once: the loaded model, onnxruntime's session (prepacked), the
#: PyTorch mirror, a variant session being built while the previous one still runs.
WEIGHT_COPIES = 4
#: ... and in ``harden``, which also holds a trainable copy with its gradient and Adam's two moments, the
#: chosen candidate's tuned weights, the hardened model and its own session and mirror (measured: a 100 MB ResNet-50
#: peaked at 3.1 GB under a 2 GB budget counting 4 copies; at 1.96 GiB counting 12, with the stages freed).
HARDEN_WEIGHT_COPIES = 12
#: Preprocessed images kept at once when variants run one after the other (at most; less for small budgets).
MAX_BLOCK_BYTES = 256 << 20

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def parse_memory(text: str) -> int:
    """``--memory`` as bytes: a number with an optional unit (``512MB``, ``2GB``, ``1.5G``; powers of 1024)."""
    value = str(text).strip().lower().replace(" ", "").removesuffix("ib")
    number = value.rstrip("kmgb")
    unit = value[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        raise UsageError(f"--memory must be a size such as 2GB or 512MB, not {text!r}") from None
    if unit not in _UNITS or not np.isfinite(amount) or amount <= 0:
        raise UsageError(f"--memory must be a positive size such as 2GB or 512MB, not {text!r}")
    return int(amount * _UNITS[unit])


def _activation_sizes(proto: onnx.ModelProto, image_input: str) -> list[tuple[str, int]] | None:
    """(name, bytes at batch 1) of every activation tensor shape inference can size; None when it fails."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    for value in model.graph.input:
        if value.name == image_input and value.type.tensor_type.shape.dim:
            value.type.tensor_type.shape.dim[0].ClearField("dim_param")
            value.type.tensor_type.shape.dim[0].dim_value = 1
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # best effort: custom ops and odd models may defeat inference
        return None
    initializers = {t.name for t in proto.graph.initializer}
    named: list[tuple[str, int]] = []
    for value in list(inferred.graph.value_info) + list(inferred.graph.output):
        tensor = value.type.tensor_type
        if value.name in initializers or not tensor.HasField("shape"):
            continue
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tensor.shape.dim]
        if not dims or any(d <= 0 for d in dims):
            continue
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).itemsize
        named.append((value.name, int(np.prod(dims)) * itemsize))
    return named


def activation_bytes_per_image(
    proto: onnx.ModelProto,
    image_input: str,
    after: str | None = None,
    sizes: list[tuple[str, int]] | None = None,
) -> int | None:
    """Bytes of the largest activation tensors of one image (None when shape inference cannot size them).

    ``after``: count only the tensors that depend on this one (where the kernel variants fork: only they are
    V·N images large; the part before runs once per image). ``sizes``: the tensors' sizes when already
    inferred (a :class:`MemoryPlan`'s), so the graph is not inferred again.
    """
    named = sizes if sizes is not None else _activation_sizes(proto, image_input)
    if named and after is not None:
        from kernelscope.model.graph import GraphIndex

        wanted = GraphIndex.build(proto.graph).downstream_tensors(after)
        named = [(name, size) for name, size in named if name in wanted]
    total = _live_bytes(named)
    if total is None:
        return None
    if after is not None:
        # The mask's product with the fork tensor and its reshape to V·N images are extra copies of it.
        total += 2 * next((size for name, size in named if name == after), 0)
    return total


def run_size_for(budget: int, per_image: int | None, default: int) -> int:
    """Variant-images per run: ``default``, or fewer when that many would not fit in ``budget`` bytes."""
    if per_image is None or per_image <= 0:
        return default
    return max(1, min(default, budget // per_image))


def budgeted_run(
    runner, memory: int, run_size: int, batch_size: int, plan: MemoryPlan | None = None
) -> tuple[int, int]:
    """(variant-images per run, images per batch) for scoring ``runner``'s layer within a process budget of
    ``memory`` bytes (the activations get what :func:`working_bytes` leaves them).

    Only the tensors after the point where the variants fork (``runner.expansion``, else its mask site) are
    V·N images large; ``run_size`` and ``batch_size`` are kept when they fit. ``plan``: the same model's
    :class:`MemoryPlan`, whose tensor sizes are reused.
    """
    proto = runner.batching.proto
    fork = runner.expansion.tensor if runner.expansion is not None else runner.site.tensor
    sizes = plan.sizes if plan is not None else None
    per_image = activation_bytes_per_image(proto, runner.image_input, after=fork, sizes=sizes)
    sized = run_size_for(working_bytes(proto, memory), per_image, run_size)
    return sized, min(batch_size, sized)


def working_bytes(proto: onnx.ModelProto, memory: int, weight_copies: int = WEIGHT_COPIES) -> int:
    """What a process budget of ``memory`` bytes leaves for activations once the fixed part is held: the process
    itself, the weights' copies and one block of images. Never less than an eighth of the budget: a model whose
    weights alone exceed it still runs, a small batch at a time, rather than not at all."""
    fixed = PROCESS_BYTES + weight_copies * weight_bytes(proto) + block_bytes(memory)
    return int(max(memory - fixed, memory // 8))


def block_bytes(memory: int) -> int:
    """Bytes of preprocessed images the scorer keeps at once under ``memory`` (a block every variant runs over)."""
    return int(min(MAX_BLOCK_BYTES, memory // 8))


def weight_bytes(proto: onnx.ModelProto) -> int:
    """Bytes of the model's stored tensors (initializers and Constant nodes' values)."""
    total = sum(_tensor_bytes(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        if node.op_type == "Constant":
            total += sum(_tensor_bytes(a.t) for a in node.attribute if a.type == onnx.AttributeProto.TENSOR)
    return int(total)


def _tensor_bytes(tensor: onnx.TensorProto) -> int:
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        length = next((int(e.value) for e in tensor.external_data if e.key == "length"), 0)
        if length:
            return length
    try:
        itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        itemsize = 4
    return int(np.prod(tensor.dims, dtype=np.int64)) * itemsize if tensor.dims else itemsize


def gradient_bytes_per_image(proto: onnx.ModelProto, image_input: str) -> int | None:
    """Bytes one image takes in a forward+backward through the mirror (None when shape inference cannot say).

    Autograd keeps every activation for the backward pass, so this is their sum (not the few largest that
    onnxruntime holds at once), plus two of the largest for the gradient flowing back.
    """
    return _gradient_bytes(_activation_sizes(proto, image_input))


def _gradient_bytes(named: list[tuple[str, int]] | None) -> int | None:
    if not named:
        return None
    sizes = [size for _, size in named]
    return int(sum(sizes) + 2 * max(sizes))


def _live_bytes(named: list[tuple[str, int]] | None) -> int | None:
    if not named:
        return None
    return int(sum(sorted((size for _, size in named), reverse=True)[:LIVE_TENSORS]))


@dataclass(frozen=True)
class MemoryPlan:
    """Batch sizes that keep one model's runs within a memory budget (see the module docstring).

    ``working``: bytes left for activations; ``forward_per_image`` / ``gradient_per_image``: one image's
    activations in onnxruntime and in a PyTorch forward+backward (None: unknown, batches stay as asked).
    """

    memory: int
    working: int
    forward_per_image: int | None
    gradient_per_image: int | None
    #: (name, bytes at batch 1) of every activation shape inference sized: reused by :func:`budgeted_run`
    sizes: list[tuple[str, int]] | None = field(default=None, repr=False, compare=False)

    def gradient_batch(self, requested: int, factor: float = 1.0, fixed: int | None = None) -> int:
        """Images per PyTorch forward+backward: ``requested``, or fewer when that many would not fit.

        ``factor``: passes whose activations are alive at once (a double backward, a clean and an adversarial
        forward in one loss). ``fixed``: a graph that only takes batches of this size gets a multiple of it
        (at least one), so no part is padded."""
        if self.gradient_per_image is None or self.gradient_per_image <= 0:
            return requested
        size = max(1, min(requested, int(self.working // (self.gradient_per_image * factor))))
        return max(fixed, size // fixed * fixed) if fixed and size < requested else size

    def forward_batch(self, requested: int) -> int:
        """Images per onnxruntime forward: ``requested``, or fewer when that many would not fit."""
        return run_size_for(self.working, self.forward_per_image, requested)

    def note(self, gradient_batch: int, batch_size: int, what: str = "the gradient stages") -> str:
        """The warning that the budget shrinks ``what``'s batch from ``batch_size`` to ``gradient_batch``."""
        return (
            f"the memory budget ({format_size(self.memory)}) fits {gradient_batch} image(s) per forward+backward "
            f"through the mirror (about {format_size(self.gradient_per_image or 0)} each: every activation is kept "
            f"for the gradient), not --batch-size {batch_size}: {what} run that many at a time (--memory to change)"
        )


def format_size(size: float) -> str:
    """Bytes for a person, in the powers of 1024 ``--memory`` takes: ``2 GB``, ``107 MB``, ``512 KB``."""
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if size >= scale:
            value = size / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(size)} B"


def memory_plan(
    proto: onnx.ModelProto, image_input: str, memory: int, weight_copies: int = WEIGHT_COPIES
) -> MemoryPlan:
    """The :class:`MemoryPlan` of ``proto`` under a process budget of ``memory`` bytes."""
    named = _activation_sizes(proto, image_input)  # one shape inference for every estimate
    working = working_bytes(proto, memory, weight_copies)
    return MemoryPlan(memory, working, _live_bytes(named), _gradient_bytes(named), named)


@cache
def _malloc_trim():
    """glibc's ``malloc_trim`` (None elsewhere: macOS, musl and Windows return freed memory on their own terms)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_memory() -> None:
    """Hand what a finished stage freed back to the system, so the next stage's peak does not sit on top of it.

    Python's collector first (reference cycles between modules and tensors keep weights alive), then glibc's
    ``malloc_trim``: the heap keeps freed blocks otherwise, and a model's weights are many blocks of a few MB,
    below the size glibc maps on their own. Measured on ``harden`` of a ResNet-50 (100 MB of weights): the
    freed-but-kept memory was 100-450 MB after each stage, and the peak 2.36 GB without trimming, 2.20 GB with.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    torch = sys.modules.get("torch")  # never imported for this: a run without PyTorch has no GPU cache
    if torch is not None and torch.cuda.is_initialized():
        # PyTorch keeps freed GPU blocks cached; onnxruntime's CUDA arena on the same GPU cannot use them
        torch.cuda.empty_cache()
