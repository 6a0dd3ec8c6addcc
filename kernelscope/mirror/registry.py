"""Op implementations of the mirror, keyed by (op type, ONNX ``since_version``).

An implementation is a plain function ``fn(ctx, *inputs)`` returning a tensor or a tuple of tensors (one per
node output, in order). Absent optional inputs arrive as ``None``; trailing absent inputs are simply not
passed, so implementations give them defaults. A model's opset is resolved to the op's ``since_version``
with ``onnx.defs.get_schema`` and the implementation registered for exactly that version is used: a
version we have not looked at is reported as unsupported rather than guessed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import onnx
import torch

from kernelscope.model.graph import node_label

#: Domains the mirror executes (the default ONNX domain under its two spellings).
DEFAULT_DOMAINS = ("", "ai.onnx")
#: onnxruntime's contrib domain: a few quantized ops quantize_static emits (all at version 1).
MS_DOMAIN = "com.microsoft"


@dataclass(frozen=True)
class NodeContext:
    """What an implementation knows about the node it runs: attributes (ONNX defaults filled in) and opset."""

    node: onnx.NodeProto
    opset: int
    since: int
    attrs: dict[str, object]
    dtype: torch.dtype  # the mirror's floating dtype (every ONNX float type computes in it)
    num_outputs: int = 1  # number of outputs the node declares (trailing empty names dropped)

    @property
    def op_type(self) -> str:
        """The node's op type."""
        return self.node.op_type

    @property
    def label(self) -> str:
        """The node's name (or first output) for messages."""
        return node_label(self.node)

    def attr(self, name: str, default: object = None) -> object:
        """Attribute ``name`` (strings decoded), ``default`` when neither the node nor the schema sets it."""
        value = self.attrs.get(name, default)
        return value if value is not None else default

    def has_attr(self, name: str) -> bool:
        """True when the node itself sets ``name`` (schema defaults do not count)."""
        return any(a.name == name for a in self.node.attribute)


Impl = Callable[..., "torch.Tensor | tuple[torch.Tensor | None, ...]"]
Check = Callable[[NodeContext], "str | None"]


@dataclass(frozen=True)
class OpImpl:
    """One registered implementation and the schema versions it covers."""

    op_type: str
    since: tuple[int, ...]
    fn: Impl
    notes: str = ""
    domain: str = ""
    #: returns a short reason when a node uses settings this implementation does not cover
    check: Check | None = field(default=None, compare=False)


_REGISTRY: dict[tuple[str, str], dict[int, OpImpl]] = {}


def register(
    op_type: str, since: int | Iterable[int], *, notes: str = "", check: Check | None = None, domain: str = ""
):
    """Decorator registering ``fn`` for ``op_type`` at the given ``since_version``(s) of ``domain``."""
    versions = (since,) if isinstance(since, int) else tuple(since)

    def decorate(fn: Impl) -> Impl:
        impl = OpImpl(op_type, tuple(sorted(versions)), fn, notes, domain, check)
        table = _REGISTRY.setdefault((domain, op_type), {})
        for version in versions:
            if version in table:
                raise ValueError(f"{op_type} since {version} is registered twice")
            table[version] = impl
        return fn

    return decorate


@functools.cache
def schema_since(op_type: str, opset: int) -> int | None:
    """The ``since_version`` of ``op_type``'s schema in effect at ``opset`` (default domain), or None."""
    try:
        return int(onnx.defs.get_schema(op_type, max_inclusive_version=opset, domain="").since_version)
    except onnx.defs.SchemaError:
        return None


@functools.cache
def schema_defaults(op_type: str, since: int) -> dict[str, object]:
    """The attribute defaults the schema declares (strings decoded)."""
    schema = onnx.defs.get_schema(op_type, max_inclusive_version=since, domain="")
    defaults: dict[str, object] = {}
    for name, spec in schema.attributes.items():
        if spec.default_value.type != onnx.AttributeProto.UNDEFINED:
            defaults[name] = _decode(onnx.helper.get_attribute_value(spec.default_value))
    return defaults


def lookup(op_type: str, opset: int, domain: str = "") -> OpImpl | None:
    """The implementation that runs ``op_type`` in a model of ``opset``, or None when there is none."""
    if domain == MS_DOMAIN:
        return _REGISTRY.get((MS_DOMAIN, op_type), {}).get(1)
    if domain not in DEFAULT_DOMAINS:
        return None
    since = schema_since(op_type, opset)
    if since is None:
        return None
    return _REGISTRY.get(("", op_type), {}).get(since)


def make_context(node: onnx.NodeProto, opset: int, dtype: torch.dtype) -> NodeContext:
    """A :class:`NodeContext` for ``node`` (its op must have a schema at ``opset``)."""
    since = 1 if node.domain == MS_DOMAIN else schema_since(node.op_type, opset)
    # contrib ops have no onnx schema: their implementations carry their own defaults
    attrs = dict(schema_defaults(node.op_type, since)) if since is not None and node.domain != MS_DOMAIN else {}
    for attr in node.attribute:
        attrs[attr.name] = _decode(onnx.helper.get_attribute_value(attr))
    outputs = list(node.output)
    while outputs and not outputs[-1]:
        outputs.pop()
    return NodeContext(node, opset, since or 0, attrs, dtype, len(outputs))


def implementations() -> list[OpImpl]:
    """Every registered implementation once, sorted by op type then first version."""
    seen: dict[int, OpImpl] = {}
    for table in _REGISTRY.values():
        for impl in table.values():
            seen[id(impl)] = impl
    return sorted(seen.values(), key=lambda i: (i.domain, i.op_type, i.since))


def _decode(value: object) -> object:
    # onnx hands string attributes back as bytes; implementations compare with str literals.
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, list) and value and isinstance(value[0], bytes):
        return [v.decode("utf-8") for v in value]
    return value
