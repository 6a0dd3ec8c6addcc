"""Conversions between ONNX tensors and the torch tensors the mirror computes with.

Every ONNX floating type (float16, bfloat16, float32, float64) computes in the mirror's one floating dtype
(float32 by default): gradients of a float16 graph are then float32 gradients, and its parity check must
allow for the float16 rounding the model itself does. Integer and bool tensors keep their type (unsigned
types torch lacks widen to the next signed type).
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, numpy_helper

_FLOAT_TYPES = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}

_INT_TYPES: dict[int, torch.dtype] = {
    TensorProto.INT8: torch.int8,
    TensorProto.UINT8: torch.uint8,
    TensorProto.INT16: torch.int16,
    TensorProto.UINT16: torch.int32,
    TensorProto.INT32: torch.int32,
    TensorProto.UINT32: torch.int64,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT64: torch.int64,
    TensorProto.BOOL: torch.bool,
}

#: Saturation range of the 8-bit (and 16-bit) integer types used by quantization ops.
INT_RANGES: dict[int, tuple[int, int]] = {
    TensorProto.INT8: (-128, 127),
    TensorProto.UINT8: (0, 255),
    TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT16: (0, 65535),
    TensorProto.INT32: (-(2**31), 2**31 - 1),
    TensorProto.INT4: (-8, 7),
    TensorProto.UINT4: (0, 15),
}

_TORCH_TO_ONNX = {
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.int16: TensorProto.INT16,
    torch.int32: TensorProto.INT32,
    torch.int64: TensorProto.INT64,
    torch.bool: TensorProto.BOOL,
}


def is_float_type(elem_type: int) -> bool:
    """True for ONNX floating element types."""
    return elem_type in _FLOAT_TYPES


def torch_dtype(elem_type: int, float_dtype: torch.dtype) -> torch.dtype:
    """The torch dtype the mirror uses for ONNX ``elem_type`` (floats -> ``float_dtype``)."""
    if elem_type in _FLOAT_TYPES:
        return float_dtype
    if elem_type in _INT_TYPES:
        return _INT_TYPES[elem_type]
    name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
    raise TypeError(f"element type {name} is not supported by the PyTorch mirror")


def onnx_type_of(tensor: torch.Tensor) -> int | None:
    """The ONNX integer type a torch integer tensor stands for (None for floats)."""
    return _TORCH_TO_ONNX.get(tensor.dtype)


def from_numpy(array: np.ndarray, float_dtype: torch.dtype) -> torch.Tensor:
    """A torch tensor for a numpy array, floats converted to ``float_dtype``."""
    array = np.asarray(array)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        if array.dtype not in (np.float16, np.float32, np.float64):
            array = array.astype(np.float64)  # bfloat16 and other ml_dtypes floats torch cannot wrap
        return torch.from_numpy(_owned(array)).to(float_dtype)
    if array.dtype == np.uint16:
        array = array.astype(np.int32)
    elif array.dtype in (np.uint32, np.uint64):
        array = array.astype(np.int64)
    return torch.from_numpy(_owned(array))


def _owned(array: np.ndarray) -> np.ndarray:
    """A C-contiguous, writable array torch can wrap (np.ascontiguousarray would turn 0-d into 1-d)."""
    # torch.from_numpy shares memory; read-only arrays (e.g. onnxruntime outputs) must be copied first
    if array.flags.c_contiguous and array.flags.writeable:
        return array
    return np.array(array, order="C", copy=True)


def from_proto(tensor: onnx.TensorProto, float_dtype: torch.dtype) -> torch.Tensor:
    """A torch tensor for an ONNX initializer or ``Constant`` value."""
    return from_numpy(numpy_helper.to_array(tensor), float_dtype)


def as_float(x: torch.Tensor, float_dtype: torch.dtype) -> torch.Tensor:
    """``x`` in the mirror's floating dtype (no copy when it already is)."""
    return x if x.dtype == float_dtype else x.to(float_dtype)


def to_ints(x: torch.Tensor | None) -> list[int]:
    """The values of a (small, shape-like) tensor as Python ints."""
    if x is None:
        return []
    return [int(v) for v in x.reshape(-1).tolist()]
