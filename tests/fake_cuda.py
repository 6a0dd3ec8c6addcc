"""Pretend CUDA on a CPU-only machine, so that CI can test the code kernelscope runs on a GPU.

On a CPU build of torch nothing can live on CUDA, so the usual device bugs (a tensor made without
``device=``, ``.numpy()`` of a GPU tensor, a CPU generator drawing GPU noise) pass every CPU test and only
fail on a GPU. :func:`pretend_cuda` makes them visible anyway. All arithmetic still runs on the CPU, but every
tensor carries a *device tag*, ``"cpu"`` or ``"cuda"``, and a :class:`~torch.overrides.TorchFunctionMode`
checks the tags of every torch call made from Python against the rules CUDA enforces:

* ``.to("cuda")``, ``.cuda()``, ``device="cuda"`` in a factory and ``Module.to("cuda")`` run on the CPU but
  tag their results ``cuda``; ``.device`` and ``.is_cuda`` of a ``cuda`` tensor answer CUDA, so code that asks
  where a tensor or a module lives, and creates its tensors there, follows the tag;
* factories without ``device=`` (``torch.zeros``, ``torch.tensor``, ``torch.as_tensor`` of numpy data, ...)
  and ``torch.from_numpy`` tag ``cpu``; ``*_like`` and ``new_*`` take their input's tag;
* every other op takes the tag of its tensor arguments, after checking them.

Problems (:class:`Problem`, located at the innermost kernelscope frame):

* ``MIX``: ``cpu`` and ``cuda`` tensors in one op (CUDA raises "Expected all tensors to be on the same
  device");
* ``SCALAR``: a 0-dim ``cpu`` tensor next to ``cuda`` tensors in an op that is not elementwise (CUDA accepts
  CPU scalars only in its elementwise kernels: ``x * torch.tensor(2.0)`` works, ``torch.stack`` raises);
* ``NUMPY``: ``.numpy()`` or ``np.asarray()`` of a ``cuda`` tensor (CUDA raises);
* ``GENERATOR``: a CPU ``torch.Generator`` drawing a ``cuda`` tensor (CUDA raises);
* ``HOSTOP``: a convolution or matrix product on ``cpu`` tensors only. Legal, but under ``--device cuda``
  it means a model runs on the CPU while the report says CUDA.

Limits: only calls made from Python are seen (not what autograd's backward or TorchScript do in C++);
tensors created in C++ carry no tag and are never reported; which ops take CPU scalars is a list, not
torch's own rule. Device-to-host synchronisations (``.item()``, ``float()``) are legal and not reported.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

import kernelscope

CPU, CUDA = "cpu", "cuda"

#: Every kind of problem, in report order.
KINDS = ("MIX", "SCALAR", "NUMPY", "GENERATOR", "HOSTOP")

#: Attribute holding a tensor's device tag. Plain Python attributes are invisible to torch (no
#: torch-function call reads or writes them), and untagged tensors are simply not checked.
_TAG = "_fake_cuda_device"

_PACKAGE = Path(kernelscope.__file__).resolve().parent
_ROOT = _PACKAGE.parent
_MIRROR = _PACKAGE / "mirror"
_TORCH = Path(torch.__file__).resolve().parent
_THIS = Path(__file__).resolve()

#: Factories that take no tensor to copy the device from: ``cpu`` unless ``device=`` says otherwise.
#: (``torch.normal`` with tensor arguments is an ordinary op, on its arguments' device.)
_FACTORIES = frozenset(
    {
        "arange", "as_tensor", "asarray", "empty", "empty_permuted", "empty_strided", "eye", "frombuffer",
        "full", "linspace", "logspace", "ones", "rand", "randint", "randn", "randperm", "range",
        "scalar_tensor", "tensor", "tril_indices", "triu_indices", "zeros",
    }
)  # fmt: skip
#: Factories whose data may be a tensor: then the result lives where that tensor does.
_FROM_DATA = frozenset({"as_tensor", "asarray", "tensor"})
#: Heavy ops: on the CPU while the torch device is CUDA, they are the model running on the host (HOSTOP).
_HEAVY = frozenset(
    {
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
        "matmul", "mm", "bmm", "addmm", "baddbmm", "einsum", "__matmul__", "__rmatmul__",
    }
)  # fmt: skip
#: Elementwise (TensorIterator) ops, which CUDA runs with 0-dim CPU tensors among their operands.
_ELEMENTWISE = frozenset(
    {
        "add", "sub", "mul", "div", "true_divide", "pow", "where", "clamp", "clip", "maximum", "minimum",
        "eq", "ne", "lt", "gt", "le", "ge", "logical_and", "logical_or", "logical_xor", "rsub", "fmod",
        "remainder", "atan2", "lerp", "addcmul", "addcdiv", "masked_fill", "masked_fill_", "add_", "sub_",
        "mul_", "div_", "clamp_", "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__",
        "__mul__", "__rmul__", "__imul__", "__truediv__", "__rtruediv__", "__itruediv__", "__pow__",
        "__rpow__", "__lt__", "__le__", "__gt__", "__ge__", "__eq__", "__ne__", "__and__", "__or__",
        "__xor__",
    }
)  # fmt: skip
#: Conversions to numpy, which CUDA refuses for its tensors (``numpy(force=True)`` copies: allowed).
_NUMPY = frozenset({"numpy", "__array__"})

# Property getters that reveal a tensor's device. A property access reaches the mode as its ``__get__``
# method-wrapper, a new object at each access, so these are compared with ``==``, not ``is``.
_DEVICE_GETTER = torch.Tensor.device.__get__
_IS_CUDA_GETTER = torch.Tensor.is_cuda.__get__
_IS_CPU_GETTER = torch.Tensor.is_cpu.__get__


@dataclass(frozen=True)
class Problem:
    """One code site that would fail (or run on the host) on a real GPU.

    ``where``: the innermost kernelscope frame, ``path:line`` from the repository root (outside kernelscope,
    as in the checker's own tests: the innermost frame that is neither torch nor this module). ``via``: for a
    site in the shared mirror ops, the innermost kernelscope frame outside ``kernelscope/mirror`` (the caller
    that handed it the wrong tensors), else empty. ``count``: how often the site was hit."""

    kind: str
    op: str
    where: str
    detail: str
    via: str = ""
    count: int = 1

    def __str__(self) -> str:
        via = f" (via {self.via})" if self.via else ""
        return f"{self.kind} {self.op} at {self.where}{via}, {self.count}x: {self.detail}"


class Findings:
    """What one :func:`pretend_cuda` block found; problems are grouped by site."""

    def __init__(self) -> None:
        self._sites: dict[tuple[str, str, str, str], Problem] = {}
        #: torch calls the mode saw, and the checked ops among them with a ``cuda`` operand: a run without
        #: any of those checked nothing, whatever :meth:`problems` says.
        self.calls = 0
        self.cuda_calls = 0

    def add(self, kind: str, op: str, detail: str) -> None:
        """Record a problem at the current call site (grouped with earlier hits of the same site)."""
        where, via = _call_site()
        key = (kind, op, where, via)
        found = self._sites.get(key)
        self._sites[key] = replace(found, count=found.count + 1) if found else Problem(kind, op, where, detail, via)

    def problems(self, kinds: tuple[str, ...] = KINDS) -> list[Problem]:
        """The problems of the given kinds, in the order they were first seen."""
        return [p for p in self._sites.values() if p.kind in kinds]

    def report(self, kinds: tuple[str, ...] = KINDS) -> str:
        """A readable list of :meth:`problems` (for assertion messages)."""
        rows = [str(p) for p in self.problems(kinds)]
        head = f"fake CUDA: {self.calls} torch calls, {self.cuda_calls} on cuda operands, {len(rows)} problem site(s)"
        return "\n".join([head, *rows])


def _call_site() -> tuple[str, str]:
    """(``where``, ``via``) of :class:`Problem` for the current stack."""
    where = via = fallback = ""
    frame = sys._getframe(1)
    while frame is not None:
        path = Path(frame.f_code.co_filename)
        label = f"{_relative(path)}:{frame.f_lineno}"
        if path.is_relative_to(_PACKAGE):
            if not where:
                where = label
            if not path.is_relative_to(_MIRROR):
                via = label
                break
        elif not fallback and path != _THIS and not path.is_relative_to(_TORCH):
            fallback = label
        frame = frame.f_back
    if not where:
        return fallback or "?", ""
    return where, "" if via == where else via


def _relative(path: Path) -> str:
    return os.path.relpath(path, _ROOT) if path.is_relative_to(_ROOT) else str(path)


def tag_of(value: object) -> str | None:
    """The device tag of a tensor (``None``: untagged, or not a tensor)."""
    return getattr(value, _TAG, None) if isinstance(value, torch.Tensor) else None


def _set_tag(value: object, tag: str | None) -> None:
    """Tag every tensor in ``value`` (tensors, and tuples, lists and dicts of them)."""
    if tag is None:
        return
    if isinstance(value, torch.Tensor):
        setattr(value, _TAG, tag)
    elif isinstance(value, (tuple, list)):
        for item in value:
            _set_tag(item, tag)
    elif isinstance(value, dict):
        for item in value.values():
            _set_tag(item, tag)


def _tensors(value: object) -> Iterator[torch.Tensor]:
    """Every tensor in ``value``, looking into tuples, lists and dicts."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _device_kind(device: object) -> str | None:
    """``cuda``, ``cpu`` or ``None`` (no device, or another kind) for a ``device`` argument.

    An ``int`` is a CUDA ordinal, as for torch."""
    if isinstance(device, torch.device):
        device = device.type
    elif isinstance(device, int) and not isinstance(device, bool):
        return CUDA
    if isinstance(device, str):
        kind = device.split(":")[0]
        return kind if kind in (CPU, CUDA) else None
    return None


def _shapes(tensors: list[torch.Tensor]) -> str:
    return ", ".join(f"{tag_of(t)}{tuple(t.shape)}" for t in tensors)


def _is_advanced_index(index: object) -> bool:
    """True where ``x[index] = v`` goes through ``index_put_`` (same device needed), not ``copy_``."""
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(p, (torch.Tensor, list, np.ndarray)) for p in parts)


class FakeCudaMode(TorchFunctionMode):
    """The torch-function mode of :func:`pretend_cuda` (see the module docstring)."""

    def __init__(self, findings: Findings) -> None:
        super().__init__()
        self.findings = findings

    def __torch_function__(
        self, func: Callable[..., Any], types: tuple[type, ...], args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        # Inside this method the mode is off: calls made here (``func`` itself, ``clone``) are not seen again.
        kwargs = dict(kwargs or {})
        findings = self.findings
        findings.calls += 1
        first = args[0] if args and isinstance(args[0], torch.Tensor) else None
        # Properties first: they reveal the device, and must answer CUDA for a cuda-tagged tensor.
        if func == _DEVICE_GETTER:
            return torch.device(CUDA, 0) if tag_of(first) == CUDA else func(*args, **kwargs)
        if func == _IS_CUDA_GETTER:
            return tag_of(first) == CUDA
        if func == _IS_CPU_GETTER:
            return tag_of(first) != CUDA

        name = getattr(func, "__name__", "")
        if first is not None and name in ("to", "cuda", "cpu"):
            return _move(name, func, args, kwargs)
        if name in _NUMPY and tag_of(first) == CUDA and not kwargs.get("force", False):
            findings.add("NUMPY", name, f"{tuple(first.shape)} cuda tensor converted to numpy")

        if func is torch.autograd.grad:
            # A gradient lives where its input does. Outputs and inputs may differ in device (an input
            # moved with ``.to``), which is legal: autograd carries the gradient back across the move.
            out = func(*args, **kwargs)
            inputs = kwargs.get("inputs", args[1] if len(args) > 1 else ())
            inputs = (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)
            for gradient, tensor in zip(out, inputs, strict=True):
                _set_tag(gradient, tag_of(tensor))
            return out
        if name == "backward" or func is torch.autograd.backward:
            return func(*args, **kwargs)  # nothing to tag; gradients are tagged by the ``.grad`` getter

        if _is_factory(name, args, kwargs):
            tag = _factory_tag(name, args, kwargs)
        elif name in ("__getitem__", "__setitem__") and first is not None:
            tag = self._check_indexing(name, args)
        else:
            tag = self._check_operands(name, args, kwargs)
        self._check_generators(name, args, kwargs, tag)
        out = func(*args, **kwargs)
        if out is not first:  # an in-place op (``add_``, ``copy_``) leaves its destination where it is
            _set_tag(out, tag)
        return out

    def _check_operands(self, name: str, args: tuple, kwargs: dict) -> str | None:
        """The device of an ordinary op's result, after reporting MIX / SCALAR / HOSTOP."""
        by_tag: dict[str, list[torch.Tensor]] = {}
        for tensor in itertools.chain(_tensors(args), _tensors(kwargs)):
            tag = tag_of(tensor)
            if tag is not None:
                by_tag.setdefault(tag, []).append(tensor)
        if CUDA not in by_tag:
            if CPU in by_tag and name in _HEAVY:
                self.findings.add("HOSTOP", name, f"cpu tensors while the torch device is cuda: {_shapes(by_tag[CPU])}")
            return CPU if CPU in by_tag else None
        self.findings.cuda_calls += 1
        hosts = by_tag.get(CPU)
        if hosts and name != "copy_":  # copy_ is how data crosses devices
            if any(t.dim() > 0 for t in hosts):
                self.findings.add("MIX", name, _shapes(by_tag[CUDA][:2] + hosts[:2]))
            elif name not in _ELEMENTWISE:
                self.findings.add("SCALAR", name, f"0-dim cpu tensor(s) with cuda ones: {_shapes(hosts[:2])}")
        return CUDA

    def _check_indexing(self, name: str, args: tuple) -> str | None:
        """``x[i]`` and ``x[i] = v``: CPU index tensors are fine for a CUDA ``x`` (torch moves them); a value
        on the other device is fine for basic indexing (``copy_``), not for advanced (``index_put_``)."""
        target, index = args[0], args[1]
        where = tag_of(target)
        if where == CUDA:
            self.findings.cuda_calls += 1
        if where == CPU and any(tag_of(i) == CUDA for i in _tensors(index)):
            self.findings.add("MIX", name, f"cuda index into a cpu tensor {tuple(target.shape)}")
        if name == "__setitem__" and len(args) > 2 and _is_advanced_index(index):
            value = args[2]
            if where == CPU and tag_of(value) == CUDA:
                self.findings.add("MIX", name, f"cuda value {tuple(value.shape)} written into a cpu tensor")
            elif where == CUDA and tag_of(value) == CPU and value.dim() > 0:
                self.findings.add("MIX", name, f"cpu value {tuple(value.shape)} written into a cuda tensor")
        return where

    def _check_generators(self, name: str, args: tuple, kwargs: dict, tag: str | None) -> None:
        if tag != CUDA:
            return
        for value in itertools.chain(args, kwargs.values()):
            if isinstance(value, torch.Generator) and value.device.type == CPU:
                self.findings.add("GENERATOR", name, "a CPU torch.Generator draws a cuda tensor")


def _is_factory(name: str, args: tuple, kwargs: dict) -> bool:
    if name in _FACTORIES or name.startswith("new_") or name.endswith("_like") or "device" in kwargs:
        return True
    return name == "normal" and not any(isinstance(a, torch.Tensor) for a in args)


def _factory_tag(name: str, args: tuple, kwargs: dict) -> str | None:
    """Where a factory's result lives; a ``device="cuda"`` argument is turned into the CPU it really runs on."""
    requested = _device_kind(kwargs.get("device"))
    if requested == CUDA:
        kwargs["device"] = CPU
    if requested is not None:
        return requested
    source = kwargs.get("data", args[0] if args else None)
    if name.endswith("_like") or name.startswith("new_") or (name in _FROM_DATA and isinstance(source, torch.Tensor)):
        return tag_of(source)
    return CPU


def _move(name: str, func: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    """``Tensor.to`` / ``.cuda()`` / ``.cpu()``: run on the CPU, tag the result with the target device.

    A move to another device must give a new tensor (as on a GPU): retagging the source in place would
    make it look moved to any later op that still uses it."""
    tensor = args[0]
    source = tag_of(tensor) or CPU
    if name == "cuda":
        target, out = CUDA, tensor
    elif name == "cpu":
        target, out = CPU, func(*args, **kwargs)
    else:
        target, new_args = None, list(args)
        if "device" in kwargs:
            target = _device_kind(kwargs["device"])
            kwargs["device"] = CPU if target == CUDA else kwargs["device"]
        for i, value in enumerate(new_args[1:], start=1):
            if isinstance(value, torch.Tensor):  # to(other): other's dtype and device
                target, new_args[i] = tag_of(value) or CPU, value.dtype
            elif isinstance(value, (str, torch.device)) or (isinstance(value, int) and not isinstance(value, bool)):
                target = _device_kind(value)
                new_args[i] = CPU if target == CUDA else value
        out = func(*new_args, **kwargs)
        if target is None:  # a dtype conversion: the device stays
            if out is not tensor:
                _set_tag(out, tag_of(tensor))
            return out
    if target != source and out is tensor:
        out = tensor.clone()  # autograd-connected, like a real move
    _set_tag(out, target)
    return out


def _module_to(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Module.to`` that retags parameters, buffers and gradients instead of moving them (everything is on
    the CPU already); a dtype or memory-format conversion still runs. Moving for real would assign
    ``param.data = moved``, which the mode sees as a cuda tensor's data replaced by a cpu one."""

    def to(self: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.nn.Module:
        device, dtype, non_blocking, memory_format = torch._C._nn._parse_to(*args, **kwargs)
        kind = _device_kind(device)
        if device is not None and kind is None:  # another device type (meta, ...): not ours to fake
            return original(self, *args, **kwargs)
        conversion = {k: v for k, v in (("dtype", dtype), ("memory_format", memory_format)) if v is not None}
        if conversion:
            original(self, non_blocking=non_blocking, **conversion)
        _tag_module(self, kind)
        return self

    return to


def _tag_module(module: torch.nn.Module, kind: str | None) -> None:
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        _set_tag(tensor, kind)
        _set_tag(tensor.grad, kind)


def _module_cuda(self: torch.nn.Module, device: object = None) -> torch.nn.Module:
    _tag_module(self, CUDA)
    return self


def _module_cpu(self: torch.nn.Module) -> torch.nn.Module:
    _tag_module(self, CPU)
    return self


def _parameter_new(original: Callable[..., Any]) -> Callable[..., Any]:
    """``Parameter.__new__`` that keeps its data's tag: ``_make_subclass`` makes a new Python object,
    without the attributes of the tensor it wraps."""

    def new(cls: type, data: torch.Tensor | None = None, requires_grad: bool = True) -> torch.nn.Parameter:
        parameter = original(cls, data, requires_grad)
        _set_tag(parameter, tag_of(data))
        return parameter

    return new


def _from_numpy(original: Callable[[np.ndarray], torch.Tensor]) -> Callable[[np.ndarray], torch.Tensor]:
    """``torch.from_numpy`` that tags ``cpu``: it does not go through torch-function modes."""

    def from_numpy(array: np.ndarray) -> torch.Tensor:
        tensor = original(array)
        _set_tag(tensor, CPU)
        return tensor

    return from_numpy


@contextlib.contextmanager
def _patched(owner: object, name: str, value: object) -> Iterator[None]:
    """Set ``owner.name`` for the block and put back exactly what was there (for a class, its own
    ``__dict__`` entry: ``Parameter.__new__`` is a staticmethod there, a function through ``getattr``)."""
    missing = object()
    saved = vars(owner).get(name, missing) if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if saved is missing:
            delattr(owner, name)
        else:
            setattr(owner, name, saved)


@contextlib.contextmanager
def pretend_cuda() -> Iterator[Findings]:
    """Run the block as if torch had a CUDA device, checking device placement; yields its :class:`Findings`.

    ``torch.cuda.is_available()`` answers True inside. Everything is undone on exit, exceptions included:
    the mode, ``torch.cuda.is_available``, ``torch.from_numpy``, ``Module.to/cuda/cpu`` and
    ``Parameter.__new__``. Process-wide settings that code changes once it sees CUDA (kernelscope's
    ``torch.backends`` flags) are the caller's to restore."""
    findings = Findings()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_patched(torch.cuda, "is_available", lambda: True))
        stack.enter_context(_patched(torch, "from_numpy", _from_numpy(torch.from_numpy)))
        stack.enter_context(_patched(torch.nn.Module, "to", _module_to(torch.nn.Module.to)))
        stack.enter_context(_patched(torch.nn.Module, "cuda", _module_cuda))
        stack.enter_context(_patched(torch.nn.Module, "cpu", _module_cpu))
        stack.enter_context(_patched(torch.nn.Parameter, "__new__", _parameter_new(torch.nn.Parameter.__new__)))
        stack.enter_context(FakeCudaMode(findings))
        yield findings
