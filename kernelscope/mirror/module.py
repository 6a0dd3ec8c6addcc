"""``OnnxMirror``: an ``nn.Module`` that executes an ONNX graph op by op with torch functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import torch

from kernelscope.errors import ModelError, out_of_memory
from kernelscope.mirror import ops as _ops  # noqa: F401  (registers the implementations)
from kernelscope.mirror.errors import UnsupportedOpsError
from kernelscope.mirror.ops.misc import constant_value
from kernelscope.mirror.registry import DEFAULT_DOMAINS, Impl, NodeContext, lookup, make_context
from kernelscope.mirror.tensors import as_float, from_proto
from kernelscope.model.graph import GraphIndex, node_label
from kernelscope.model.loading import graph_image_inputs, model_opset


@dataclass(frozen=True)
class _Step:
    """One node ready to run: its implementation, context and tensor names."""

    fn: Impl
    ctx: NodeContext
    inputs: tuple[str, ...]  # "" for an absent optional input
    outputs: tuple[str, ...]


def _last_uses(plan: list[_Step], keep: tuple[str, ...]) -> list[tuple[str, ...]]:
    """For each step of ``plan``: the tensors no later step reads (and not asked for), to free after it."""
    last: dict[str, int] = {}
    for i, step in enumerate(plan):
        for name in (*step.inputs, *step.outputs):
            if name:
                last[name] = i
    kept = set(keep)
    dead: list[list[str]] = [[] for _ in plan]
    for name, i in last.items():
        if name not in kept:
            dead[i].append(name)
    return [tuple(names) for names in dead]


def unsupported_ops(proto: onnx.ModelProto) -> list[str]:
    """Every op (or op setting) of ``proto`` the mirror cannot run, as "Op (opset N)" strings, once each."""
    opset = model_opset(proto)
    index = GraphIndex.build(proto.graph)
    found: list[str] = []
    for i in index.topological_order():
        node = index.node(i)
        reason = _unsupported(node, opset, torch.float32)
        if reason and reason not in found:
            found.append(reason)
    return found


def _unsupported(node: onnx.NodeProto, opset: int, dtype: torch.dtype) -> str | None:
    domain = node.domain or ""
    name = node.op_type if domain in DEFAULT_DOMAINS else f"{domain}.{node.op_type}"
    impl = lookup(node.op_type, opset, domain)
    if impl is None:
        return f"{name} (opset {opset})"
    if impl.check is not None:
        detail = impl.check(make_context(node, opset, dtype))
        if detail:
            return f"{name} (opset {opset}: {detail})"
    return None


class OnnxMirror(torch.nn.Module):
    """An ONNX graph as a torch module, for input gradients.

    Initializers become buffers (every float type in ``dtype``, float32 by default; float16 graphs thus
    compute in float32), ``Constant`` nodes are evaluated once, and nodes run in data-flow order, only
    those the requested outputs need. Raises :class:`UnsupportedOpsError` listing every unsupported op.
    """

    def __init__(
        self, proto: onnx.ModelProto, outputs: Sequence[str] | None = None, *, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating dtype, got {dtype}")
        self.dtype = dtype
        self.opset = model_opset(proto)
        graph = proto.graph
        index = GraphIndex.build(graph)
        order = index.topological_order()

        problems: list[str] = []
        for i in order:
            reason = _unsupported(index.node(i), self.opset, dtype)
            if reason and reason not in problems:
                problems.append(reason)
        if problems:
            raise UnsupportedOpsError(problems)

        self._buffer_of: dict[str, str] = {}
        for tensor in graph.initializer:
            try:
                value = from_proto(tensor, dtype)
            except Exception as exc:  # TypeError for odd types, ValueError for data that does not fit the dims
                reason = " ".join(str(exc).split())[:160] or type(exc).__name__
                raise ModelError(
                    f"initializer {tensor.name!r} cannot be read by the PyTorch mirror: {reason}"
                ) from None
            self._add_constant(tensor.name, value)

        steps: list[_Step] = []
        for i in order:
            node = index.node(i)
            ctx = make_context(node, self.opset, dtype)
            if node.op_type == "Constant":
                try:
                    value = constant_value(ctx)
                except Exception as exc:  # a Constant without a value, or a damaged tensor
                    reason = " ".join(str(exc).split())[:160] or type(exc).__name__
                    raise ModelError(f"Constant node {node_label(node)!r} cannot be read: {reason}") from None
                self._add_constant(node.output[0], value)
                continue
            impl = lookup(node.op_type, self.opset, node.domain or "")
            assert impl is not None  # checked above
            steps.append(_Step(impl.fn, ctx, tuple(node.input), tuple(node.output)))
        self._steps = steps
        self._producer = {name: k for k, step in enumerate(steps) for name in step.outputs if name}

        self.input_names = [v.name for v in graph_image_inputs(proto)]
        self.graph_outputs = [v.name for v in graph.output]
        self.output_names = list(outputs) if outputs else self.graph_outputs[:1]
        self._plans: dict[tuple[str, ...], list[_Step]] = {}
        self._frees: dict[tuple[str, ...], list[tuple[str, ...]]] = {}  # per plan step: tensors dead after it

    def computes(self, name: str) -> bool:
        """True when ``name`` is a tensor the mirror computes (a node output), i.e. one ``run`` can return."""
        return name in self._producer

    def constant(self, name: str) -> torch.Tensor:
        """The current value of initializer (or ``Constant``) ``name`` as the mirror holds it."""
        store = {**self._buffers, **self._parameters}
        return store[self._buffer_of[name]]

    def make_trainable(self, names: Sequence[str]) -> dict[str, torch.nn.Parameter]:
        """Turn the named initializers into ``nn.Parameter`` (everything else stays a constant buffer).

        Returns ``{initializer name: parameter}``; ``run`` then computes with the parameters, so gradients
        of any output reach them. Non-float tensors cannot become parameters.
        """
        made: dict[str, torch.nn.Parameter] = {}
        for name in names:
            key = self._buffer_of.get(name)
            if key is None:
                raise KeyError(f"the mirror has no initializer named {name!r}")
            if key in self._parameters:
                made[name] = self._parameters[key]
                continue
            value = self._buffers.pop(key)
            self._non_persistent_buffers_set.discard(key)
            if not value.is_floating_point():
                self._buffers[key] = value
                raise ValueError(f"initializer {name!r} is {value.dtype}, not a float tensor: it cannot be tuned")
            parameter = torch.nn.Parameter(value.detach().clone())
            self.register_parameter(key, parameter)
            made[name] = parameter
        return made

    def _add_constant(self, name: str, value: torch.Tensor) -> None:
        buffer = f"_const{len(self._buffer_of)}"
        self.register_buffer(buffer, value, persistent=False)
        self._buffer_of[name] = buffer

    def _plan(self, outputs: tuple[str, ...]) -> list[_Step]:
        """The steps the requested outputs depend on, in execution order (cached)."""
        plan = self._plans.get(outputs)
        if plan is not None:
            return plan
        needed: set[int] = set()
        stack = [self._producer[n] for n in outputs if n in self._producer]
        while stack:
            k = stack.pop()
            if k in needed:
                continue
            needed.add(k)
            stack.extend(self._producer[n] for n in self._steps[k].inputs if n in self._producer)
        plan = [step for k, step in enumerate(self._steps) if k in needed]
        self._plans[outputs] = plan
        self._frees[outputs] = _last_uses(plan, outputs)
        return plan

    def run(self, feeds: dict[str, torch.Tensor], outputs: Sequence[str]) -> dict[str, torch.Tensor]:
        """Run the graph on ``feeds`` and return the named tensors (graph outputs or any intermediate)."""
        wanted = tuple(outputs)
        store = {**self._buffers, **self._parameters}  # constants, and the ones made trainable
        env: dict[str, torch.Tensor] = {name: store[b] for name, b in self._buffer_of.items()}
        for name, value in feeds.items():
            env[name] = as_float(value, self.dtype) if value.is_floating_point() else value
        plan = self._plan(wanted)
        frees = self._frees[wanted]
        for i, step in enumerate(plan):
            args = [env[n] if n else None for n in step.inputs]
            while args and args[-1] is None:
                args.pop()
            try:
                result = step.fn(step.ctx, *args)
            except Exception as exc:
                if out_of_memory(exc):  # not the op's fault: the run's batch did not fit (the CLI says so)
                    raise
                raise ModelError(
                    f"the PyTorch mirror failed at {step.ctx.op_type} node {node_label(step.ctx.node)!r}: "
                    f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
                ) from exc
            if isinstance(result, torch.Tensor):
                env[step.outputs[0]] = result
            else:
                for name, value in zip(step.outputs, result, strict=False):
                    if name and value is not None:
                        env[name] = value
            del args, result
            # Drop each tensor after its last use: without a gradient its memory goes back at once, so a
            # forward holds a few activations instead of all of them (32 ResNet-50 images at 224 px: 3 GB).
            # With a gradient, autograd keeps what the backward needs on its own.
            for name in frees[i]:
                env.pop(name, None)
        missing = [n for n in wanted if n not in env]
        if missing:
            raise ModelError(f"the mirrored graph has no tensor named {', '.join(map(repr, missing))}")
        return {name: env[name] for name in wanted}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The first requested output (default: the first graph output) for image batch ``x``."""
        if len(self.input_names) != 1:
            raise ModelError(f"forward() needs a single-input graph; this one has inputs {self.input_names}; use run()")
        name = self.output_names[0]
        return self.run({self.input_names[0]: x}, [name])[name]
