"""KServe v2 datatypes and their numpy counterparts.

BYTES tensors are numpy object arrays whose elements are ``bytes``; every
other datatype maps to one fixed-width little-endian numpy dtype.
"""

from __future__ import annotations

import numpy as np

from gateway.core.errors import InvalidInputError

# v2 name -> numpy dtype (None for BYTES, which has no fixed width).
_V2_TO_NUMPY: dict[str, np.dtype | None] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": None,
}

_NUMPY_TO_V2: dict[np.dtype, str] = {
    dt: name for name, dt in _V2_TO_NUMPY.items() if dt is not None
}

# ONNX tensor element type names (as onnxruntime reports them) -> v2 names.
_ONNX_TO_V2 = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}

DATATYPES: tuple[str, ...] = tuple(_V2_TO_NUMPY)


def is_valid(datatype: str) -> bool:
    return datatype in _V2_TO_NUMPY


def to_numpy(datatype: str) -> np.dtype | None:
    """numpy dtype of a v2 datatype; None for BYTES. Unknown names raise."""
    try:
        return _V2_TO_NUMPY[datatype]
    except KeyError:
        raise InvalidInputError(
            f"unsupported datatype '{datatype}' (expected one of {', '.join(DATATYPES)})"
        ) from None


def from_numpy(dtype: np.dtype) -> str:
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_V2[dtype.newbyteorder("<") if dtype.byteorder == ">" else dtype]
    except KeyError:
        raise InvalidInputError(f"numpy dtype {dtype} has no v2 datatype") from None


def from_onnx(type_name: str) -> str:
    try:
        return _ONNX_TO_V2[type_name]
    except KeyError:
        raise ValueError(f"ONNX type {type_name} is not supported") from None


def itemsize(datatype: str) -> int:
    """Bytes per element of a fixed-width datatype (0 for BYTES)."""
    dt = to_numpy(datatype)
    return 0 if dt is None else dt.itemsize
