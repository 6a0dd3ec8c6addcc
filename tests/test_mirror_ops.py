"""Every registered mirror op, at every since_version it implements, against onnxruntime on a one-node model;
plus gradcheck (float64) for the differentiable ones.

Cases come from a table: ``CASES[op](since)`` returns the one-node variants to run at that version.
Runtime inputs are plain arrays, constants are ``C(array)`` (initializers), absent optional inputs ``None``.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from kernelscope.mirror import OnnxMirror
from kernelscope.mirror.registry import implementations

F32 = np.float32
I64 = np.int64


@dataclass(frozen=True)
class C:
    """A constant input (becomes an initializer)."""

    value: np.ndarray


@dataclass
class Case:
    """One one-node model: inputs (arrays, ``C`` constants or None), attributes, number of outputs."""

    inputs: list
    attrs: dict = field(default_factory=dict)
    outputs: int = 1
    grad: bool = False  # gradcheck w.r.t. the float runtime inputs
    tol: float = 1e-5  # relative to max(1, max |reference|)
    tag: str = ""


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def rand(*shape: int, lo: float = -2.0, hi: float = 2.0, key: object = 0) -> np.ndarray:
    return _rng(shape, lo, hi, key).uniform(lo, hi, size=shape).astype(F32)


def pos(*shape: int, key: object = 0) -> np.ndarray:
    return rand(*shape, lo=0.5, hi=2.0, key=key)


def ints(values, dtype=I64) -> C:
    return C(np.array(values, dtype=dtype))


def u8(*shape: int, key: object = 0) -> np.ndarray:
    return _rng(shape, "u8", key).integers(0, 256, size=shape).astype(np.uint8)


def scalar(value, dtype=F32) -> C:
    return C(np.array(value, dtype=dtype))


# ---------------------------------------------------------------------------------------------------------
# the table

CASES: dict[str, Callable[[int], list[Case]]] = {}


def cases(*ops: str):
    def decorate(fn):
        for op in ops:
            CASES[op] = fn
        return fn

    return decorate


@cases("Add", "Sub", "Mul")
def _arith(v):
    return [Case([rand(2, 3, 4), rand(3, 4, key=1)], grad=True), Case([ints([[5, -7]]).value, ints([3]).value])]


@cases("Div")
def _div(v):
    b = pos(3, 4) * np.where(rand(3, 4, key=2) > 0, 1, -1).astype(F32)
    return [Case([rand(2, 3, 4), b], grad=True), Case([np.array([7, -7, 9], I64), np.array([2, 2, -4], I64)])]


@cases("Pow")
def _pow(v):
    return [Case([pos(2, 3), rand(2, 3, key=1)], grad=True), Case([pos(2, 3), scalar(2.0).value], grad=True)]


@cases("Equal")
def _equal(v):
    return [Case([np.array([1, 2, 3], I64), np.array([1, 0, 3], I64)])]


@cases("Greater", "Less", "GreaterOrEqual", "LessOrEqual")
def _compare(v):
    a = np.round(rand(2, 5), 0)
    return [Case([a, np.round(rand(5, key=1), 0)])]


@cases("And", "Or", "Xor")
def _logic(v):
    return [Case([np.array([True, False, True, False]), np.array([True, True, False, False])])]


@cases("Not")
def _not(v):
    return [Case([np.array([True, False])])]


@cases("IsNaN")
def _isnan(v):
    return [Case([np.array([1.0, np.nan, -np.inf], F32)])]


@cases("Sqrt", "Log", "Reciprocal")
def _positive(v):
    return [Case([pos(2, 3, 4)], grad=True)]


@cases("Exp", "Neg", "Abs", "Erf", "Sin", "Cos", "Relu", "Sigmoid", "Tanh", "Softplus", "Softsign", "Mish")
def _unary(v):
    return [Case([rand(2, 3, 4)], grad=True)]


@cases("Floor", "Ceil", "Sign")
def _steps(v):
    return [Case([rand(2, 3, 4) * 3])]


@cases("LeakyRelu", "Elu", "Celu", "ThresholdedRelu", "HardSigmoid")
def _alpha(v):
    return [Case([rand(2, 3, 4)], grad=True), Case([rand(2, 3, 4)], {"alpha": 0.3}, grad=True)]


@cases("Selu")
def _selu(v):
    return [Case([rand(2, 3, 4)], grad=True), Case([rand(2, 3, 4)], {"alpha": 1.5, "gamma": 0.9}, grad=True)]


@cases("HardSwish")
def _hardswish(v):
    return [Case([rand(2, 3, 4) * 3], grad=True)]


@cases("Gelu")
def _gelu(v):
    return [Case([rand(2, 3, 4)], grad=True), Case([rand(2, 3, 4)], {"approximate": "tanh"}, grad=True)]


@cases("PRelu")
def _prelu(v):
    return [Case([rand(2, 3, 4, 4), rand(3, 1, 1, key=1)], grad=True)]


@cases("Clip")
def _clip(v):
    if v < 11:
        return [Case([rand(2, 3, 4)], {"min": -0.5, "max": 0.7}, grad=True), Case([rand(2, 3)], {"min": 0.0})]
    return [
        Case([rand(2, 3, 4), scalar(-0.5), scalar(0.7)], grad=True),
        Case([rand(2, 3, 4), scalar(0.1)]),
        Case([rand(2, 3, 4), None, scalar(0.2)]),
    ]


@cases("Min", "Max", "Sum", "Mean")
def _variadic(v):
    if v < 8:
        return [Case([rand(2, 3), rand(2, 3, key=1), rand(2, 3, key=2)], grad=True)]
    return [Case([rand(2, 3, 4), rand(3, 4, key=1), rand(4, key=2)], grad=True), Case([rand(3)], grad=True)]


@cases("Where")
def _where(v):
    return [Case([rand(3, 4) > 0, rand(3, 4, key=1), rand(4, key=2)], grad=True)]


@cases("Softmax", "LogSoftmax", "Hardmax")
def _softmax(v):
    grad = True
    return [
        Case([rand(2, 3, 4)], {"axis": 1}, grad=grad),
        Case([rand(2, 3, 4)], grad=grad),
        Case([rand(2, 3, 4)], {"axis": -1}, grad=grad),
    ]


@cases("Conv")
def _conv(v):
    x, w, b = rand(1, 2, 6, 6), rand(4, 2, 3, 3, key=1), rand(4, key=2)
    return [
        Case([x, w, b], {"pads": [1, 1, 1, 1], "strides": [2, 2]}, grad=True),
        Case([x, w], {"pads": [0, 1, 2, 0]}, grad=True, tag="asymmetric"),
        Case([x, w, b], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, grad=True),
        Case([x, w, b], {"auto_pad": "SAME_LOWER", "strides": [2, 2]}),
        Case([x, rand(4, 1, 3, 3, key=3), b], {"group": 2, "dilations": [2, 2]}, grad=True),
        Case([rand(1, 2, 7), rand(3, 2, 3, key=4)], {"pads": [1, 0]}, grad=True, tag="1d"),
        Case([rand(1, 2, 4, 4, 4), rand(2, 2, 2, 2, 2, key=5)], {}, tag="3d"),
    ]


@cases("ConvTranspose")
def _conv_transpose(v):
    x, w, b = rand(1, 2, 4, 4), rand(2, 3, 3, 3, key=1), rand(3, key=2)
    return [
        Case([x, w, b], {"strides": [2, 2], "pads": [1, 1, 1, 1], "output_padding": [1, 1]}, grad=True),
        Case([x, w], {"pads": [0, 1, 2, 0]}, grad=True, tag="asymmetric"),
        Case([x, w, b], {"strides": [2, 2], "output_shape": [9, 8]}),
        Case([x, w, b], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        Case([x, rand(2, 2, 3, 3, key=3)], {"group": 2, "dilations": [2, 1]}, grad=True),
        Case([rand(1, 2, 5), rand(2, 3, 3, key=4)], {"strides": [3]}, tag="1d"),
    ]


@cases("Gemm")
def _gemm(v):
    a, b, c = rand(3, 4), rand(5, 4, key=1), rand(5, key=2)
    out = [
        Case([a, b, c], {"transB": 1, "alpha": 0.5, "beta": 2.0}, grad=True),
        Case([rand(4, 3), rand(4, 5, key=1), rand(3, 5, key=3)], {"transA": 1}, grad=True),
    ]
    if v >= 11:
        out.append(Case([a, b], {"transB": 1}, grad=True))
    return out


@cases("MatMul")
def _matmul(v):
    return [Case([rand(2, 3, 4), rand(4, 5, key=1)], grad=True), Case([rand(3, 4), rand(4, key=1)], grad=True)]


@cases("BatchNormalization")
def _batchnorm(v):
    consts = [C(rand(3, key=1)), C(rand(3, key=2)), C(rand(3, key=3)), C(pos(3, key=4))]
    return [Case([rand(2, 3, 4, 4), *consts], {"epsilon": 1e-3}, grad=True), Case([rand(2, 3), *consts])]


@cases("InstanceNormalization")
def _instancenorm(v):
    return [Case([rand(2, 3, 4, 4), C(rand(3, key=1)), C(rand(3, key=2))], grad=True)]


@cases("LayerNormalization")
def _layernorm(v):
    return [
        Case([rand(2, 3, 4), C(rand(4, key=1)), C(rand(4, key=2))], grad=True),
        Case([rand(2, 3, 4), rand(3, 4, key=1)], {"axis": 1, "epsilon": 1e-3}, outputs=3, grad=True),
    ]


@cases("LRN")
def _lrn(v):
    return [
        Case([rand(2, 5, 3, 3)], {"size": 3}, grad=True),
        Case([rand(2, 5, 3, 3)], {"size": 2, "alpha": 0.01, "beta": 0.5, "bias": 2.0}, grad=True),
    ]


@cases("MaxPool")
def _maxpool(v):
    x = rand(1, 2, 7, 7)
    out = [
        Case([x], {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}, grad=True),
        Case([x], {"kernel_shape": [2, 2], "pads": [0, 0, 1, 1]}, grad=True, tag="asymmetric"),
        Case([x], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        Case([rand(1, 2, 9)], {"kernel_shape": [3], "strides": [2]}, tag="1d"),
    ]
    if v >= 10:
        out.append(Case([x], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, grad=True))
        out.append(Case([x], {"kernel_shape": [2, 2], "dilations": [2, 2]}))
    return out


@cases("AveragePool")
def _avgpool(v):
    x = rand(1, 2, 7, 7)
    geometry = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    out = [
        Case([x], geometry, grad=True),
        Case([x], {**geometry, "count_include_pad": 1}, grad=True),
        Case([x], {"kernel_shape": [3, 3], "pads": [0, 2, 1, 0]}, grad=True, tag="asymmetric"),
        Case([x], {"kernel_shape": [3, 3], "pads": [0, 2, 1, 0], "count_include_pad": 1}, tag="asymmetric"),
        Case([x], {"kernel_shape": [3, 3], "strides": [2, 2], "auto_pad": "SAME_UPPER"}),
        Case([x], {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": "SAME_LOWER"}),
        Case([rand(1, 2, 9)], {"kernel_shape": [3], "strides": [2], "pads": [1, 1]}, tag="1d"),
    ]
    if v >= 10:
        out.append(Case([x], {"kernel_shape": [2, 2], "strides": [2, 2], "ceil_mode": 1}, grad=True))
        out.append(Case([x], {**geometry, "ceil_mode": 1, "count_include_pad": 1}))
    return out


@cases("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _global_pool(v):
    return [Case([rand(2, 3, 4, 5)], grad=True)]


@cases("Pad")
def _pad(v):
    x = rand(1, 2, 4, 5)
    spatial = [0, 0, 1, 2, 0, 0, 2, 1]
    if v < 11:
        return [
            Case([x], {"pads": spatial, "value": 1.5}, grad=True),
            Case([x], {"pads": spatial, "mode": "reflect"}, grad=True),
            Case([x], {"pads": spatial, "mode": "edge"}, grad=True),
            Case([x], {"pads": [0, 0, -1, 1, 0, 0, 1, -1]}, tag="negative"),
        ]
    out = [
        Case([x, ints(spatial), scalar(1.5)], grad=True),
        Case([x, ints(spatial)], {"mode": "reflect"}, grad=True),
        Case([x, ints(spatial)], {"mode": "edge"}, grad=True),
        Case([x, ints([0, 1, 0, 0, 0, 0, 0, 1])], tag="channels"),
    ]
    if v >= 18:
        out.append(Case([x, ints([1, 2, 2, 1]), None, ints([2, 3])], grad=True, tag="axes"))
    if v >= 19:
        out.append(Case([x, ints(spatial)], {"mode": "wrap"}, grad=True))
    return out


@cases("Reshape")
def _reshape(v):
    out = [Case([rand(2, 3, 4), ints([0, -1])], grad=True), Case([rand(2, 3, 4), ints([4, 3, 2])])]
    if v >= 14:
        out.append(Case([rand(2, 3, 4), ints([2, 12])], {"allowzero": 1}))
    return out


@cases("Flatten")
def _flatten(v):
    return [Case([rand(2, 3, 4)], {"axis": 2}, grad=True), Case([rand(2, 3, 4)], {"axis": 0}), Case([rand(2, 3)])]


@cases("Transpose")
def _transpose(v):
    return [Case([rand(2, 3, 4)], {"perm": [2, 0, 1]}, grad=True), Case([rand(2, 3, 4)])]


@cases("Squeeze")
def _squeeze(v):
    x = rand(2, 1, 3, 1)
    if v < 13:
        return [Case([x], {"axes": [1]}, grad=True), Case([x])]
    return [Case([x, ints([1, -1])], grad=True), Case([x])]


@cases("Unsqueeze")
def _unsqueeze(v):
    x = rand(2, 3)
    if v < 13:
        return [Case([x], {"axes": [0, 3]}, grad=True)]
    return [Case([x, ints([0, -1])], grad=True)]


@cases("Concat")
def _concat(v):
    return [Case([rand(2, 3), rand(2, 1, key=1), rand(2, 2, key=2)], {"axis": 1}, grad=True)]


@cases("Split")
def _split(v):
    x = rand(2, 5, 3)
    if v < 13:
        return [
            Case([x], {"axis": 1, "split": [2, 3]}, outputs=2, grad=True),
            Case([rand(2, 6)], {"axis": 1}, outputs=3),
        ]
    out = [Case([x, ints([2, 3])], {"axis": 1}, outputs=2, grad=True)]
    if v >= 18:
        out.append(Case([x], {"axis": 1, "num_outputs": 2}, outputs=2))
    else:
        out.append(Case([rand(2, 6)], {"axis": 1}, outputs=3))
    return out


@cases("Slice")
def _slice(v):
    x = rand(4, 5, 6)
    if v < 10:
        return [Case([x], {"starts": [1, 0], "ends": [3, 1000], "axes": [0, 2]}, grad=True)]
    big = np.iinfo(np.int64).max
    return [
        Case([x, ints([1, 0]), ints([3, big]), ints([0, 2])], grad=True),
        Case([x, ints([-1, 4]), ints([-big, 0]), ints([1, 2]), ints([-2, -1])], grad=True, tag="negative step"),
        Case([x, ints([1]), ints([-1])], tag="default axes"),
    ]


@cases("Gather")
def _gather(v):
    return [
        Case([rand(3, 4, 5), ints([[0, -1], [2, 1]])], {"axis": 1}, grad=True),
        Case([rand(3, 4), ints(2)], tag="scalar index"),
        Case([np.array([2, 3, 4, 5], I64), ints([0])], tag="shape"),
    ]


@cases("GatherElements")
def _gather_elements(v):
    return [Case([rand(3, 4), ints([[0, 1, -1, 2], [3, 0, 0, 1]])], {"axis": 1}, grad=True)]


@cases("Shape")
def _shape(v):
    out = [Case([rand(2, 3, 4)])]
    if v >= 15:
        out += [Case([rand(2, 3, 4)], {"start": 1}), Case([rand(2, 3, 4)], {"start": -2, "end": -1})]
    return out


@cases("Size")
def _size(v):
    return [Case([rand(2, 3, 4)])]


@cases("Expand")
def _expand(v):
    return [Case([rand(3, 1), ints([2, 1, 4])], grad=True)]


@cases("Tile")
def _tile(v):
    return [Case([rand(2, 3), ints([2, 3])], grad=True)]


@cases("Constant")
def _constant(v):
    out = [Case([], {"value": numpy_helper.from_array(rand(2, 3))})]
    if v >= 12:
        out += [Case([], {"value_floats": [1.0, 2.5]}), Case([], {"value_int": 7}), Case([], {"value_ints": [1, 2]})]
    return out


@cases("ConstantOfShape")
def _constant_of_shape(v):
    return [
        Case([ints([2, 3])]),
        Case([ints([2, 3])], {"value": numpy_helper.from_array(np.array([7], I64))}),
    ]


@cases("Range")
def _range(v):
    return [Case([scalar(0.5), scalar(3.0), scalar(0.75)]), Case([ints(10), ints(2), ints(-3)])]


@cases("Identity", "Dropout")
def _identity(v):
    return [Case([rand(2, 3)], grad=True)]


@cases("Cast")
def _cast(v):
    return [
        Case([rand(2, 3) * 3], {"to": TensorProto.INT64}),
        Case([np.array([1, 0, 3], I64)], {"to": TensorProto.FLOAT}),
        Case([rand(2, 3) * 3], {"to": TensorProto.FLOAT16}, tol=2e-3, tag="float16"),
        Case([rand(2, 3)], {"to": TensorProto.BOOL}),
        Case([rand(2, 3)], {"to": TensorProto.DOUBLE}, grad=True),
    ]


@cases("CastLike")
def _cast_like(v):
    return [Case([rand(2, 3) * 3, ints([1])]), Case([np.array([1, 2], I64), C(rand(1))])]


@cases("Resize")
def _resize(v):
    x = rand(1, 2, 4, 5)
    if v == 10:
        return [
            Case([x, C(np.array([1, 1, 2, 2], F32))], grad=True),
            Case([x, C(np.array([1, 1, 2, 1.5], F32))], {"mode": "linear"}, grad=True),
        ]
    roi = C(np.array([], F32))
    none = C(np.array([], F32))
    up = C(np.array([1, 1, 2, 1.6], F32))
    down = C(np.array([1, 1, 0.6, 0.5], F32))
    sizes = ints([1, 2, 7, 3])
    out = [
        Case([x, roi, up], grad=True),
        Case([x, roi, up], {"mode": "nearest", "nearest_mode": "round_prefer_ceil"}),
        Case([x, roi, up], {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}),
        Case([x, roi, down], {"nearest_mode": "ceil", "coordinate_transformation_mode": "align_corners"}),
        Case([x, roi, up], {"mode": "linear"}, grad=True),
        Case([x, roi, down], {"mode": "linear"}, grad=True),
        Case([x, roi, none, sizes], {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, grad=True),
        Case([x, roi, none, sizes], {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"}),
        Case([x, roi, up], {"mode": "linear", "coordinate_transformation_mode": "asymmetric"}),
        Case([x, roi, none, sizes], {"coordinate_transformation_mode": "tf_half_pixel_for_nn"}),
    ]
    if v >= 18:
        out.append(Case([x, roi, C(np.array([2, 0.5], F32))], {"mode": "linear", "axes": [2, 3]}, tag="axes"))
    if v >= 19:
        out.append(Case([x, roi, up], {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"}))
    return out


@cases("Upsample")
def _upsample(v):
    x = rand(1, 2, 3, 4)
    scales = [1.0, 1.0, 2.0, 1.5]
    if v < 9:
        return [Case([x], {"scales": scales}, grad=True), Case([x], {"scales": scales, "mode": "linear"}, grad=True)]
    return [
        Case([x, C(np.array(scales, F32))], grad=True),
        Case([x, C(np.array(scales, F32))], {"mode": "linear"}, grad=True),
    ]


_REDUCE_INPUT_FROM = {"ReduceSum": 13}


def _reduce_cases(op: str) -> Callable[[int], list[Case]]:
    def build(v: int) -> list[Case]:
        x = pos(2, 3, 4) if op == "ReduceLogSum" else rand(2, 3, 4)
        if v >= _REDUCE_INPUT_FROM.get(op, 18):
            return [
                Case([x, ints([1])], grad=True),
                Case([x, ints([0, -1])], {"keepdims": 0}, grad=True),
                Case([x], grad=True),
                Case([x], {"noop_with_empty_axes": 1}),
            ]
        return [Case([x], {"axes": [1]}, grad=True), Case([x], {"axes": [0, -1], "keepdims": 0}), Case([x], grad=True)]

    return build


for _op in [
    "ReduceMean",
    "ReduceSum",
    "ReduceMax",
    "ReduceMin",
    "ReduceL2",
    "ReduceL1",
    "ReduceProd",
    "ReduceSumSquare",
    "ReduceLogSumExp",
    "ReduceLogSum",
]:
    CASES[_op] = _reduce_cases(_op)


@cases("ArgMax", "ArgMin")
def _arg(v):
    ties = np.array([[1, 3, 3, 0], [2, 2, 0, 0]], F32)
    out = [Case([rand(3, 4)], {"axis": 1, "keepdims": 0}), Case([rand(3, 4)])]
    if v >= 12:
        out.append(Case([ties], {"axis": 1, "select_last_index": 1}))
    return out


@cases("QuantizeLinear")
def _quantize(v):
    x = rand(2, 3, 4)
    out = [Case([x, scalar(0.02), scalar(128, np.uint8)]), Case([x, scalar(0.03)], tag="no zero point")]
    if v >= 13:
        out.append(Case([x, C(np.array([0.01, 0.02, 0.03], F32)), C(np.array([0, 3, -4], np.int8))], {"axis": 1}))
    if v >= 21:
        blocked = C(pos(2, 3, 2) * 0.02)
        out.append(Case([x, blocked, C(np.zeros((2, 3, 2), np.int8))], {"axis": 2, "block_size": 2}, tag="blocked"))
    return out


@cases("DequantizeLinear")
def _dequantize(v):
    out = [
        Case([u8(2, 3, 4), scalar(0.02), scalar(128, np.uint8)]),
        Case([np.array([-1000, 5, 70000], np.int32), scalar(0.001)], tag="int32 bias"),
    ]
    if v >= 13:
        q = _rng("i8").integers(-128, 128, size=(2, 3, 4)).astype(np.int8)
        out.append(Case([q, C(np.array([0.01, 0.02, 0.03], F32)), C(np.array([0, 3, -4], np.int8))], {"axis": 1}))
    return out


@cases("DynamicQuantizeLinear")
def _dynamic_quantize(v):
    return [Case([rand(2, 3, 4)], outputs=3), Case([pos(2, 3)], outputs=3, tag="positive")]


def _qconv_inputs(per_channel: bool) -> list:
    w_scale = C(np.array([0.01, 0.02, 0.015], F32)) if per_channel else scalar(0.02)
    w_zero = C(np.array([0, 0, 0], np.int8)) if per_channel else scalar(0, np.int8)
    # |w| <= 64: onnxruntime's AVX2 kernels add two uint8 x int8 products in saturating 16 bits, exact only
    # while 2 * 255 * |w| fits (test_int8_saturation.py covers full-range weights against the spec)
    weights = C(_rng("w").integers(-64, 65, size=(3, 2, 3, 3)).astype(np.int8))
    bias = C(_rng("b").integers(-500, 500, size=3).astype(np.int32))
    return [
        u8(1, 2, 5, 5),
        scalar(0.05),
        scalar(120, np.uint8),
        weights,
        w_scale,
        w_zero,
        scalar(0.2),
        scalar(100, np.uint8),
        bias,
    ]


@cases("QLinearConv")
def _qlinear_conv(v):
    return [
        Case(_qconv_inputs(False), {"pads": [1, 1, 1, 1]}),
        Case(_qconv_inputs(True), {"strides": [2, 2]}, tag="per channel"),
    ]


@cases("QLinearMatMul")
def _qlinear_matmul(v):
    b = C(u8(4, 3, key=1))
    return [
        Case(
            [
                u8(2, 4),
                scalar(0.05),
                scalar(120, np.uint8),
                b,
                scalar(0.02),
                scalar(128, np.uint8),
                scalar(0.3),
                scalar(90, np.uint8),
            ]
        )
    ]


@cases("ConvInteger")
def _conv_integer(v):
    return [
        Case(
            [u8(1, 2, 5, 5), C(u8(3, 2, 3, 3, key=1)), scalar(120, np.uint8), scalar(128, np.uint8)],
            {"pads": [1, 1, 1, 1]},
        )
    ]


@cases("MatMulInteger")
def _matmul_integer(v):
    return [Case([u8(2, 4), C(u8(4, 3, key=1)), scalar(120, np.uint8), scalar(128, np.uint8)])]


@cases("QLinearAveragePool")
def _qlinear_avgpool(v):
    common = [u8(1, 2, 6, 6), scalar(0.05), scalar(120, np.uint8), scalar(0.04), scalar(100, np.uint8)]
    return [
        Case(common, {"kernel_shape": [2, 2], "strides": [2, 2]}),
        Case(common, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1}),
    ]


@cases("QLinearGlobalAveragePool")
def _qlinear_gap(v):
    return [Case([u8(1, 2, 6, 6), scalar(0.05), scalar(120, np.uint8), scalar(0.04), scalar(100, np.uint8)])]


@cases("QGemm")
def _qgemm(v):
    a = [u8(2, 4), scalar(0.05), scalar(120, np.uint8)]
    b = [C(u8(3, 4, key=1)), scalar(0.02), scalar(128, np.uint8)]
    bias = C(_rng("qb").integers(-300, 300, size=3).astype(np.int32))
    return [
        Case([*a, *b, bias, scalar(0.3), scalar(90, np.uint8)], {"transB": 1}),
        Case([*a, *b, bias], {"transB": 1, "alpha": 0.5}, tag="float output"),
    ]


@cases("QLinearAdd", "QLinearMul")
def _qlinear_binary(v):
    return [
        Case(
            [
                u8(2, 3),
                scalar(0.05),
                scalar(120, np.uint8),
                u8(2, 3, key=1),
                scalar(0.03),
                scalar(100, np.uint8),
                scalar(0.1),
                scalar(128, np.uint8),
            ]
        )
    ]


# ---------------------------------------------------------------------------------------------------------
# degenerate shapes: what real exports feed every op besides the typical case
#
# 0-d (scalar) tensors and indices (``x.size(0)`` is Shape -> Gather with a 0-d index), empty axes (a Concat
# of an empty piece, a Slice that selects nothing), size-1 axes (batch 1, 1x1 spatial maps), negative axes,
# and broadcasting down to rank 0. Each registered op has its own list here, or a line in NO_DEGENERATE saying
# why there is nothing more to test; the cases run through the same onnxruntime parity test as CASES.

DEGENERATE: dict[str, Callable[[int], list[Case]]] = {}


def degenerate(*ops: str):
    def decorate(fn):
        for op in ops:
            DEGENERATE[op] = fn
        return fn

    return decorate


def s(value, dtype=F32) -> np.ndarray:
    """A 0-d runtime input."""
    return np.array(value, dtype=dtype)


#: ops whose inputs cannot be degenerate in a way the cases above do not already cover
NO_DEGENERATE = {
    "Constant": "no inputs; a 0-d value is covered below through ConstantOfShape and Range",
}


@degenerate("Add", "Sub", "Mul")
def _d_arith(v):
    return [
        Case([s(1.5), s(-2.0)], grad=True, tag="0-d"),
        Case([s(1.5), rand(3)], grad=True, tag="0-d with 1-d"),
        Case([rand(1), s(0.5)], grad=True, tag="broadcast to 1-element"),
        Case([rand(0, 3), rand(3, key=1)], tag="empty axis"),
        Case([rand(2, 1, 3), rand(1, 4, 1, key=1)], grad=True, tag="size-1 axes"),
        Case([s(3, I64), np.array([1, 2], I64)], tag="0-d int"),
    ]


@degenerate("Div")
def _d_div(v):
    return [
        Case([s(1.5), s(-2.0)], grad=True, tag="0-d"),
        Case([rand(0, 3), pos(3)], tag="empty axis"),
        Case([s(7, I64), np.array([2, -2], I64)], tag="0-d int"),
    ]


@degenerate("Pow")
def _d_pow(v):
    return [Case([s(1.5), s(2.0)], grad=True, tag="0-d"), Case([pos(0, 2), s(2.0)], tag="empty axis")]


@degenerate("Equal", "Greater", "Less", "GreaterOrEqual", "LessOrEqual")
def _d_compare(v):
    return [
        Case([s(2, I64), np.array([1, 2, 3], I64)], tag="0-d"),
        Case([np.zeros((0, 2), I64), s(1, I64)], tag="empty"),
    ]


@degenerate("And", "Or", "Xor")
def _d_logic(v):
    return [Case([s(True, bool), np.array([True, False])], tag="0-d"), Case([np.zeros((0,), bool), s(False, bool)])]


@degenerate("Not", "IsNaN")
def _d_bool_unary(v):
    value = s(True, bool) if v == 1 else s(np.nan)
    empty = np.zeros((0, 2), bool) if v == 1 else rand(0, 2)
    return [Case([value], tag="0-d"), Case([empty], tag="empty")]


@degenerate(
    "Sqrt",
    "Log",
    "Reciprocal",
    "Exp",
    "Neg",
    "Abs",
    "Erf",
    "Sin",
    "Cos",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Softsign",
    "Mish",
    "Floor",
    "Ceil",
    "Sign",
    "LeakyRelu",
    "Elu",
    "Celu",
    "ThresholdedRelu",
    "HardSigmoid",
    "Selu",
    "HardSwish",
    "Gelu",
    "Identity",
    "Dropout",
)
def _d_unary(v):
    return [
        Case([s(1.25)], grad=True, tag="0-d"),
        Case([rand(0, 3)], tag="empty"),
        Case([pos(1, 1, 1)], grad=True, tag="size-1"),
    ]


@degenerate("PRelu")
def _d_prelu(v):
    return [Case([rand(2, 3), scalar(0.25)], grad=True, tag="0-d slope"), Case([rand(4), rand(4, key=1)], grad=True)]


@degenerate("Clip")
def _d_clip(v):
    if v < 11:
        return [Case([s(1.5)], {"min": -0.5, "max": 0.7}, tag="0-d"), Case([rand(0, 2)], {"min": 0.0}, tag="empty")]
    return [Case([s(1.5), scalar(-0.5), scalar(0.7)], tag="0-d"), Case([rand(0, 2), scalar(0.0)], tag="empty")]


@degenerate("Min", "Max", "Sum", "Mean")
def _d_variadic(v):
    if v < 8:
        return [Case([rand(1), rand(1, key=1)], grad=True, tag="size-1")]
    return [Case([s(0.5), rand(3, key=1)], grad=True, tag="0-d"), Case([s(0.5), s(-1.0)], grad=True, tag="all 0-d")]


@degenerate("Where")
def _d_where(v):
    return [
        Case([s(True, bool), rand(3), rand(3, key=1)], grad=True, tag="0-d condition"),
        Case([s(False, bool), s(1.0), s(2.0)], tag="all 0-d"),
        Case([np.zeros((0, 3), bool), rand(3), s(0.0)], tag="empty"),
    ]


@degenerate("Softmax", "LogSoftmax", "Hardmax")
def _d_softmax(v):
    out = [
        Case([rand(2, 1)], {"axis": -1}, grad=True, tag="size-1 axis"),
        Case([rand(5)], {"axis": 0}, grad=True, tag="1-d"),
        Case([rand(2, 3, 4)], {"axis": -2}, grad=True, tag="negative axis"),
    ]
    if v >= 13:
        out.append(Case([rand(1, 4)], {"axis": 0}, grad=True, tag="size-1 leading axis"))
    return out


@degenerate("Conv")
def _d_conv(v):
    return [
        Case([rand(1, 3, 1, 1), rand(2, 3, 1, 1, key=1), rand(2, key=2)], grad=True, tag="1x1 map"),
        Case([rand(1, 1, 3, 3), rand(1, 1, 3, 3, key=1)], {"pads": [1, 1, 1, 1]}, grad=True, tag="one channel"),
        Case([rand(1, 2, 1, 1), rand(2, 1, 3, 3, key=1)], {"pads": [1, 1, 1, 1], "group": 2}, tag="depthwise 1x1 map"),
    ]


@degenerate("ConvTranspose")
def _d_conv_transpose(v):
    return [Case([rand(1, 2, 1, 1), rand(2, 3, 2, 2, key=1)], {"strides": [2, 2]}, grad=True, tag="1x1 map")]


@degenerate("Gemm")
def _d_gemm(v):
    out = [Case([rand(1, 4), rand(4, 1, key=1), scalar(0.5)], grad=True, tag="1x1 result, 0-d C")]
    if v >= 11:
        out.append(Case([rand(1, 4), rand(1, 4, key=1)], {"transB": 1}, grad=True, tag="no C"))
    return out


@degenerate("MatMul")
def _d_matmul(v):
    return [
        Case([rand(4), rand(4, key=1)], grad=True, tag="1-d x 1-d = 0-d"),
        Case([rand(4), rand(4, 2, key=1)], grad=True, tag="1-d x 2-d"),
        Case([rand(1, 1, 4), rand(2, 4, 1, key=1)], grad=True, tag="size-1 batch broadcast"),
    ]


@degenerate("BatchNormalization")
def _d_batchnorm(v):
    consts = [C(rand(1, key=1)), C(rand(1, key=2)), C(rand(1, key=3)), C(pos(1, key=4))]
    return [Case([rand(1, 1, 1, 1), *consts], grad=True, tag="one channel 1x1"), Case([rand(0, 1, 2, 2), *consts])]


@degenerate("InstanceNormalization")
def _d_instancenorm(v):
    return [Case([rand(1, 1, 3), C(rand(1, key=1)), C(rand(1, key=2))], grad=True, tag="one channel")]


@degenerate("LayerNormalization")
def _d_layernorm(v):
    return [
        Case([rand(2, 1), C(rand(1, key=1)), C(rand(1, key=2))], tag="size-1 axis"),
        Case([rand(2, 3, 4), rand(3, 4, key=1)], {"axis": -2}, grad=True, tag="negative axis"),
    ]


@degenerate("LRN")
def _d_lrn(v):
    return [Case([rand(1, 1, 2, 2)], {"size": 3}, grad=True, tag="one channel")]


@degenerate("MaxPool", "AveragePool")
def _d_pool(v):
    return [
        Case([rand(1, 2, 1, 1)], {"kernel_shape": [1, 1]}, grad=True, tag="1x1"),
        Case([rand(1, 1, 3, 3)], {"kernel_shape": [3, 3]}, grad=True, tag="window = map"),
    ]


@degenerate("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def _d_global_pool(v):
    return [Case([rand(1, 1, 1, 1)], grad=True, tag="1x1"), Case([rand(1, 2, 5)], grad=True, tag="1-d map")]


@degenerate("Pad")
def _d_pad(v):
    if v < 11:
        return [Case([rand(3)], {"pads": [1, 2]}, grad=True, tag="1-d"), Case([rand(2, 3)], {"pads": [0, 0, 0, 0]})]
    out = [Case([rand(3), ints([1, 2])], grad=True, tag="1-d"), Case([rand(2, 3), ints([0, 0, 0, 0])], tag="no-op")]
    if v >= 18:
        out.append(Case([rand(2, 3), ints([1, 1]), None, ints([-1])], grad=True, tag="negative axis"))
    return out


@degenerate("Reshape")
def _d_reshape(v):
    return [
        Case([rand(1, 1), ints([], I64)], grad=True, tag="to 0-d"),
        Case([s(2.0), ints([1])], grad=True, tag="from 0-d"),
        Case([s(2.0), ints([-1])], tag="0-d to -1"),
        Case([rand(0, 3), ints([-1, 3])], tag="empty"),
        Case([rand(2, 3), np.array([2, -1], I64)], tag="runtime shape"),
    ]


@degenerate("Flatten")
def _d_flatten(v):
    out = [Case([rand(3)], {"axis": 0}, tag="1-d axis 0"), Case([rand(3)], {"axis": 1}, tag="1-d axis 1")]
    if v >= 11:
        out.append(Case([rand(2, 3, 4)], {"axis": -1}, grad=True, tag="negative axis"))
    return out


@degenerate("Transpose")
def _d_transpose(v):
    return [Case([s(1.5)], tag="0-d"), Case([rand(3)], tag="1-d"), Case([rand(1, 3, 1)], {"perm": [2, 1, 0]})]


@degenerate("Squeeze")
def _d_squeeze(v):
    if v < 13:
        return [Case([rand(1, 1)], tag="to 0-d"), Case([rand(2, 1)], {"axes": [-1]}, tag="negative axis")]
    return [Case([rand(1, 1)], tag="to 0-d"), Case([rand(1)], tag="1-d to 0-d"), Case([rand(2, 1), ints([-1])])]


@degenerate("Unsqueeze")
def _d_unsqueeze(v):
    if v < 13:
        return [Case([s(1.5)], {"axes": [0]}, grad=True, tag="0-d"), Case([rand(3)], {"axes": [-1]})]
    return [Case([s(1.5), ints([0])], grad=True, tag="0-d"), Case([np.array(7, I64), ints([-1])], tag="0-d int")]


@degenerate("Concat")
def _d_concat(v):
    return [
        Case([rand(2, 0), rand(2, 3, key=1)], {"axis": -1}, tag="empty piece"),
        Case([np.array([2], I64), np.array([-1], I64)], {"axis": 0}, tag="shape pieces"),
        Case([rand(1, 3), rand(1, 3, key=1)], {"axis": -2}, grad=True, tag="negative axis"),
    ]


@degenerate("Split")
def _d_split(v):
    if v < 13:
        return [Case([rand(2, 2)], {"axis": -1, "split": [1, 1]}, outputs=2, grad=True, tag="negative axis")]
    out = [Case([rand(2, 2), ints([1, 1])], {"axis": -1}, outputs=2, grad=True, tag="negative axis")]
    out.append(Case([rand(3), ints([3, 0])], outputs=2, tag="empty part"))
    return out


@degenerate("Slice")
def _d_slice(v):
    if v < 10:
        return [Case([rand(4, 5)], {"starts": [2], "ends": [2], "axes": [0]}, tag="empty")]
    return [
        Case([rand(4, 5), ints([2]), ints([2]), ints([0])], tag="empty"),
        Case([rand(4, 5), ints([-2]), ints([np.iinfo(np.int64).max]), ints([-1])], grad=True, tag="negative axis"),
        Case([np.array([2, 3, 4], I64), ints([0]), ints([1])], tag="shape head"),
    ]


@degenerate("Gather")
def _d_gather(v):
    return [
        Case([np.array([8, 3, 4, 4], I64), ints(0)], tag="0-d index into a shape (x.size(0))"),
        Case([rand(5), ints(-1)], grad=True, tag="negative 0-d index into 1-d"),
        Case([rand(3, 4), ints(1)], {"axis": -1}, grad=True, tag="0-d index, negative axis"),
        Case([rand(5), ints(np.zeros(0, I64))], tag="empty indices"),
        Case([rand(1, 4), ints([[0]])], tag="size-1"),
    ]


@degenerate("GatherElements")
def _d_gather_elements(v):
    return [Case([rand(3, 4), ints([[1], [0], [-1]])], {"axis": -1}, grad=True, tag="negative axis, size-1")]


@degenerate("Shape")
def _d_shape(v):
    out = [Case([s(1.5)], tag="0-d"), Case([rand(0, 3)], tag="empty")]
    if v >= 15:
        out.append(Case([rand(2, 3)], {"start": 5}, tag="start past the end"))
    return out


@degenerate("Size")
def _d_size(v):
    return [Case([s(1.5)], tag="0-d"), Case([rand(0, 3)], tag="empty")]


@degenerate("Expand")
def _d_expand(v):
    return [
        Case([s(1.5), ints([2, 3])], grad=True, tag="0-d to 2-d"),
        Case([s(1.5), ints(np.zeros(0, I64))], tag="0-d to 0-d"),
        Case([rand(3), ints([1])], grad=True, tag="to a shorter shape"),
    ]


@degenerate("Tile")
def _d_tile(v):
    return [
        Case([s(1.5), ints(np.zeros(0, I64))], tag="0-d"),
        Case([rand(3), ints([1])], grad=True, tag="repeat 1"),
        Case([rand(3), ints([0])], tag="repeat 0"),
    ]


@degenerate("ConstantOfShape")
def _d_constant_of_shape(v):
    return [Case([ints(np.zeros(0, I64))], tag="0-d"), Case([ints([0, 2])], tag="empty")]


@degenerate("Range")
def _d_range(v):
    return [Case([ints(5), ints(2), ints(1)], tag="empty"), Case([scalar(0.0), scalar(1.0), scalar(2.0)])]


@degenerate("Cast")
def _d_cast(v):
    return [Case([s(2.7)], {"to": TensorProto.INT64}, tag="0-d"), Case([rand(0, 2)], {"to": TensorProto.INT64})]


@degenerate("CastLike")
def _d_cast_like(v):
    return [Case([s(2.7), ints(1)], tag="0-d")]


@degenerate("Resize")
def _d_resize(v):
    x = rand(1, 1, 1, 1)
    if v == 10:
        return [Case([x, C(np.array([1, 1, 2, 2], F32))], tag="1x1")]
    roi = C(np.array([], F32))
    return [
        Case([x, roi, C(np.array([1, 1, 3, 2], F32))], tag="1x1 nearest"),
        Case([x, roi, C(np.array([1, 1, 3, 2], F32))], {"mode": "linear"}, grad=True, tag="1x1 linear"),
    ]


@degenerate("Upsample")
def _d_upsample(v):
    x = rand(1, 1, 1, 1)
    if v < 9:
        return [Case([x], {"scales": [1.0, 1.0, 2.0, 2.0]}, tag="1x1")]
    return [Case([x, C(np.array([1, 1, 2, 2], F32))], tag="1x1")]


def _d_reduce_cases(op: str) -> Callable[[int], list[Case]]:
    def build(v: int) -> list[Case]:
        x1 = pos(4) if op == "ReduceLogSum" else rand(4)
        x2 = pos(2, 1) if op == "ReduceLogSum" else rand(2, 1)
        if v >= _REDUCE_INPUT_FROM.get(op, 18):
            return [
                Case([x1], {"keepdims": 0}, grad=True, tag="1-d to 0-d"),
                Case([x2, ints([-1])], grad=True, tag="size-1 negative axis"),
            ]
        return [
            Case([x1], {"keepdims": 0}, grad=True, tag="1-d to 0-d"),
            Case([x2], {"axes": [-1]}, grad=True, tag="size-1 negative axis"),
        ]

    return build


for _op in list(CASES):
    if _op.startswith("Reduce"):
        DEGENERATE[_op] = _d_reduce_cases(_op)


@degenerate("ArgMax", "ArgMin")
def _d_arg(v):
    return [Case([rand(4)], {"keepdims": 0}, tag="1-d to 0-d"), Case([rand(3, 1)], {"axis": -1}, tag="size-1")]


@degenerate("QuantizeLinear")
def _d_quantize(v):
    return [Case([s(0.3), scalar(0.02), scalar(128, np.uint8)], tag="0-d"), Case([rand(0, 2), scalar(0.02)])]


@degenerate("DequantizeLinear")
def _d_dequantize(v):
    return [Case([s(200, np.uint8), scalar(0.02), scalar(128, np.uint8)], tag="0-d"), Case([u8(0, 2), scalar(0.1)])]


@degenerate("DynamicQuantizeLinear")
def _d_dynamic_quantize(v):
    return [Case([rand(1)], outputs=3, tag="one element"), Case([np.full((2, 2), 0.7, F32)], outputs=3, tag="flat")]


@degenerate("QLinearConv")
def _d_qlinear_conv(v):
    inputs = _qconv_inputs(False)
    inputs[0] = u8(1, 2, 1, 1)
    return [Case(inputs, {"pads": [1, 1, 1, 1]}, tag="1x1 map")]


@degenerate("QLinearMatMul")
def _d_qlinear_matmul(v):
    zp = scalar(128, np.uint8)
    return [Case([u8(1, 4), scalar(0.05), zp, C(u8(4, 1, key=1)), scalar(0.02), zp, scalar(0.3), zp], tag="1x1")]


@degenerate("ConvInteger")
def _d_conv_integer(v):
    return [Case([u8(1, 2, 1, 1), C(u8(3, 2, 1, 1, key=1)), scalar(120, np.uint8)], tag="1x1 map")]


@degenerate("MatMulInteger")
def _d_matmul_integer(v):
    return [Case([u8(1, 4), C(u8(4, 1, key=1)), scalar(120, np.uint8)], tag="1x1")]


def _q_pool_inputs() -> list:
    return [u8(1, 2, 1, 1), scalar(0.05), scalar(120, np.uint8), scalar(0.04), scalar(100, np.uint8)]


@degenerate("QLinearAveragePool")
def _d_qlinear_avgpool(v):
    return [Case(_q_pool_inputs(), {"kernel_shape": [1, 1]}, tag="1x1")]


@degenerate("QLinearGlobalAveragePool")
def _d_qlinear_gap(v):
    return [Case(_q_pool_inputs(), tag="1x1")]


@degenerate("QGemm")
def _d_qgemm(v):
    a = [u8(1, 4), scalar(0.05), scalar(120, np.uint8)]
    b = [C(u8(1, 4, key=1)), scalar(0.02), scalar(128, np.uint8)]
    return [Case([*a, *b, None, scalar(0.3), scalar(90, np.uint8)], {"transB": 1}, tag="1x1, no bias")]


@degenerate("QLinearAdd", "QLinearMul")
def _d_qlinear_binary(v):
    return [
        Case(
            [
                u8(2, 3),
                scalar(0.05),
                scalar(120, np.uint8),
                u8(3, key=1),
                scalar(0.03),
                scalar(100, np.uint8),
                scalar(0.1),
                scalar(128, np.uint8),
            ],
            tag="broadcast",
        )
    ]


# ---------------------------------------------------------------------------------------------------------
# running a case

_ONNX_TYPE = {
    np.dtype(F32): TensorProto.FLOAT,
    np.dtype(I64): TensorProto.INT64,
    np.dtype(np.int32): TensorProto.INT32,
    np.dtype(np.int8): TensorProto.INT8,
    np.dtype(np.uint8): TensorProto.UINT8,
    np.dtype(bool): TensorProto.BOOL,
}


def build_model(
    op: str, domain: str, opset: int, case: Case
) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[str]]:
    """The one-node model, its feeds and its output names."""
    names, inputs, initializers, feeds = [], [], [], {}
    for i, value in enumerate(case.inputs):
        if value is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        if isinstance(value, C):
            initializers.append(numpy_helper.from_array(np.asarray(value.value), name))
        else:
            value = np.asarray(value)
            feeds[name] = value
            inputs.append(helper.make_tensor_value_info(name, _ONNX_TYPE[value.dtype], value.shape))
    outputs = [f"out{i}" for i in range(case.outputs)]
    node = helper.make_node(op, names, outputs, domain=domain, **case.attrs)
    graph = helper.make_graph([node], op, inputs, [onnx.ValueInfoProto(name=o) for o in outputs], initializers)
    imports = [helper.make_opsetid("", opset)]
    if domain:
        imports.append(helper.make_opsetid(domain, 1))
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = max(7, helper.find_min_ir_version_for(imports[:1]))
    return model, feeds, outputs


def _param_cases() -> list:
    params = []
    for impl in implementations():
        for since in impl.since:
            opset = 13 if impl.domain else max(since, 7)
            for table, kind in ((CASES, ""), (DEGENERATE, "degenerate-")):
                for k, case in enumerate(table.get(impl.op_type, lambda v: [])(since)):
                    label = f"{impl.op_type}-v{since}-{kind}{k}" + (f"-{case.tag}" if case.tag else "")
                    params.append(pytest.param(impl.op_type, impl.domain, opset, case, id=label))
    return params


PARAMS = _param_cases()


def test_every_registered_op_has_cases() -> None:
    missing = sorted(
        f"{impl.op_type} v{since}"
        for impl in implementations()
        for since in impl.since
        if not CASES.get(impl.op_type, lambda v: [])(since)
    )
    assert not missing, f"no test case for: {missing}"


def test_every_registered_op_has_degenerate_cases() -> None:
    missing = sorted(
        f"{impl.op_type} v{since}"
        for impl in implementations()
        for since in impl.since
        if impl.op_type not in NO_DEGENERATE and not DEGENERATE.get(impl.op_type, lambda v: [])(since)
    )
    assert not missing, f"no degenerate-shape case (0-d, empty, size-1, negative axis) for: {missing}"


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize(("op", "domain", "opset", "case"), PARAMS)
def test_op_matches_onnxruntime(op: str, domain: str, opset: int, case: Case) -> None:
    model, feeds, outputs = build_model(op, domain, opset, case)
    try:
        session = _session(model)
    except Exception as exc:  # the runtime lags the newest schema versions
        pytest.skip(f"onnxruntime {ort.__version__} cannot run {op} at opset {opset}: {str(exc)[:120]}")
    expected = session.run(outputs, feeds)
    mirror = OnnxMirror(model, outputs)
    got = mirror.run({k: torch.from_numpy(np.array(v)) for k, v in feeds.items()}, outputs)
    for name, ref in zip(outputs, expected, strict=True):
        mine = got[name].detach().numpy()
        assert mine.shape == ref.shape, f"{name}: shape {mine.shape} != {ref.shape}"
        if ref.dtype.kind in "biu" and mine.dtype.kind in "biu":
            np.testing.assert_array_equal(mine.astype(np.int64), ref.astype(np.int64), err_msg=name)
            continue
        ref64, mine64 = ref.astype(np.float64), mine.astype(np.float64)
        scale = max(1.0, float(np.nanmax(np.abs(ref64))) if ref64.size else 1.0)
        np.testing.assert_allclose(mine64, ref64, rtol=0, atol=case.tol * scale, equal_nan=True, err_msg=name)


GRAD_PARAMS = [p for p in PARAMS if p.values[3].grad]


@pytest.mark.parametrize(("op", "domain", "opset", "case"), GRAD_PARAMS)
def test_op_gradcheck(op: str, domain: str, opset: int, case: Case) -> None:
    model, feeds, outputs = build_model(op, domain, opset, case)
    mirror = OnnxMirror(model, outputs, dtype=torch.float64)
    float_names = [k for k, v in feeds.items() if v.dtype.kind == "f"]
    others = {k: torch.from_numpy(np.array(v)) for k, v in feeds.items() if k not in float_names}
    leaves = tuple(torch.from_numpy(feeds[k].astype(np.float64)).requires_grad_(True) for k in float_names)

    def fn(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        values = mirror.run({**others, **dict(zip(float_names, xs, strict=True))}, outputs)
        return tuple(v for v in values.values() if v.is_floating_point())

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
