"""Elementwise arithmetic, math functions, comparisons, logic, Where and the variadic Min/Max/Sum/Mean."""

from __future__ import annotations

import functools

import torch

from kernelscope.mirror.registry import NodeContext, register

_BINARY_VERSIONS = (7, 13, 14)


def _div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # ONNX integer division truncates toward zero (C semantics), torch's "/" would give floats.
    if a.is_floating_point():
        return a / b
    return torch.div(a, b, rounding_mode="trunc")


def _binary(op_type: str, fn, since=_BINARY_VERSIONS, notes: str = "") -> None:
    def impl(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return fn(a, b)

    impl.__name__ = op_type.lower()
    impl.__doc__ = f"{op_type} with numpy broadcasting."
    register(op_type, since=since, notes=notes)(impl)


_binary("Add", torch.add)
_binary("Sub", torch.sub)
_binary("Mul", torch.mul)
_binary("Div", _div, notes="integer division truncates toward zero")
_binary("Equal", torch.eq, since=(7, 11, 13, 19))
_binary("Greater", torch.gt, since=(7, 9, 13))
_binary("Less", torch.lt, since=(7, 9, 13))
_binary("GreaterOrEqual", torch.ge, since=(12, 16))
_binary("LessOrEqual", torch.le, since=(12, 16))
_binary("And", torch.logical_and, since=(7,))
_binary("Or", torch.logical_or, since=(7,))
_binary("Xor", torch.logical_xor, since=(7,))


@register("Pow", since=(7, 12, 13, 15), notes="result keeps the base's type")
def pow_(ctx: NodeContext, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pow; a float exponent of an integer base is computed in float then cast back, as ONNX types it."""
    if not a.is_floating_point() and b.is_floating_point():
        return torch.pow(a.to(b.dtype), b).to(a.dtype)
    if a.is_floating_point() and not b.is_floating_point():
        b = b.to(a.dtype)
    return torch.pow(a, b)


_UNARY = {
    "Sqrt": ((6, 13), torch.sqrt),
    "Exp": ((6, 13), torch.exp),
    "Log": ((6, 13), torch.log),
    "Neg": ((6, 13), torch.neg),
    "Abs": ((6, 13), torch.abs),
    "Reciprocal": ((6, 13), torch.reciprocal),
    "Erf": ((9, 13), torch.erf),
    "Floor": ((6, 13), torch.floor),
    "Ceil": ((6, 13), torch.ceil),
    "Sign": ((9, 13), torch.sign),
    "Sin": ((7,), torch.sin),
    "Cos": ((7,), torch.cos),
    "Not": ((1,), torch.logical_not),
    "IsNaN": ((9, 13, 20), torch.isnan),
}


def _unary(op_type: str, since: tuple[int, ...], fn) -> None:
    def impl(ctx: NodeContext, x: torch.Tensor) -> torch.Tensor:
        return fn(x)

    impl.__name__ = op_type.lower()
    impl.__doc__ = f"{op_type}."
    register(op_type, since=since)(impl)


for _op, (_since, _fn) in _UNARY.items():
    _unary(_op, _since, _fn)


@register("Where", since=(9, 16))
def where(ctx: NodeContext, cond: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Where."""
    return torch.where(cond.bool(), a, b)


def _variadic(op_type: str, fn, mean: bool = False) -> None:
    def impl(ctx: NodeContext, *xs: torch.Tensor) -> torch.Tensor:
        y = functools.reduce(fn, xs)
        return y / len(xs) if mean else y

    impl.__name__ = op_type.lower()
    impl.__doc__ = f"{op_type} over any number of broadcast inputs."
    versions = (6, 8, 13) if op_type in ("Sum", "Mean") else (6, 8, 12, 13)
    register(op_type, since=versions)(impl)


_variadic("Min", torch.minimum)
_variadic("Max", torch.maximum)
_variadic("Sum", torch.add)
_variadic("Mean", torch.add, mean=True)
