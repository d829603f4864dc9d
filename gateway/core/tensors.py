"""Raw tensor bytes <-> numpy, as the v2 protocol lays them out.

Fixed-width tensors are row-major little-endian with no padding and decode
zero-copy (``np.frombuffer``). BYTES elements are each a 4-byte little-endian
length followed by that many bytes.
"""

from __future__ import annotations

import math
import struct

import numpy as np

from gateway.core import datatypes
from gateway.core.errors import InvalidInputError, PayloadTooLargeError

_LEN = struct.Struct("<I")


MAX_RANK = 32  # numpy's own limit on the number of dimensions is 32 (numpy 1) or 64 (numpy 2)
# The decoders' own ceiling, whatever max_tensor_elements says: a shape past it cannot be a real tensor.
MAX_ELEMENTS = 1 << 31


def element_count(shape, what: str, max_tensor_elements: int | None = None) -> int:
    """The element count of a requested shape, after the gateway's one check of its rank, signs and size.

    Size is the product of the non-zero dims: numpy refuses a shape whose extent overflows even
    when the tensor is empty. Past ``max_tensor_elements`` (the setting, where the caller knows it)
    is PayloadTooLargeError (HTTP 413, gRPC RESOURCE_EXHAUSTED); past MAX_ELEMENTS, InvalidInputError.
    """
    if len(shape) > MAX_RANK:
        raise InvalidInputError(f"{what}: shape has {len(shape)} dimensions, more than the limit of {MAX_RANK}")
    count = 1
    extent = 1
    for d in shape:
        if d < 0:
            raise InvalidInputError(f"{what}: shape {list(shape)} has a negative dimension")
        count *= d
        extent *= d or 1
    if max_tensor_elements is not None and extent > max_tensor_elements:
        raise PayloadTooLargeError(_too_many(shape, count, what, f"{max_tensor_elements} (max_tensor_elements)"))
    if extent > MAX_ELEMENTS:
        raise InvalidInputError(_too_many(shape, count, what, str(MAX_ELEMENTS)))
    return count


def _too_many(shape, count: int, what: str, limit: str) -> str:
    return f"{what}: shape {list(shape)} has {count} elements, more than the limit of {limit}"


def bytes_from_raw(buf, count: int, what: str) -> np.ndarray:
    """Parse ``count`` length-prefixed BYTES elements that must fill ``buf`` exactly."""
    view = memoryview(buf)
    if count > len(view) // 4:
        # Checked before allocating: a small body must not make us allocate for a huge shape.
        raise InvalidInputError(
            f"{what}: BYTES shape needs {count} elements (4-byte length prefix each) but the data has {len(view)} bytes"
        )
    out = np.empty(count, dtype=object)
    pos, end = 0, len(view)
    for i in range(count):
        if pos + 4 > end:
            raise InvalidInputError(
                f"{what}: BYTES data ends inside the length prefix of element {i} (shape needs {count} elements)"
            )
        (n,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + n > end:
            raise InvalidInputError(f"{what}: BYTES element {i} claims {n} bytes but only {end - pos} remain")
        out[i] = bytes(view[pos : pos + n])
        pos += n
    if pos != end:
        raise InvalidInputError(f"{what}: BYTES data has {end - pos} bytes after its {count} elements")
    return out


def from_raw(buf, datatype: str, shape, what: str) -> np.ndarray:
    count = element_count(shape, what)
    dtype = datatypes.to_numpy(datatype)
    if dtype is None:
        return bytes_from_raw(buf, count, what).reshape(shape)
    expected = count * dtype.itemsize
    if len(buf) != expected:
        raise InvalidInputError(f"{what}: {datatype} shape {list(shape)} needs {expected} bytes, data has {len(buf)}")
    if dtype.kind != "b":
        return np.frombuffer(buf, dtype=dtype).reshape(shape)
    raw = np.frombuffer(buf, dtype=np.uint8)
    # Any other byte would be a "bool" whose value depends on the operation.
    if raw.size and raw.max() > 1:
        raise InvalidInputError(f"{what}: BOOL bytes must be 0 or 1")
    return raw.view(np.bool_).reshape(shape)


def as_bytes(item) -> bytes:
    """One BYTES element as bytes (runtimes hand back str for string tensors)."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, (bytearray, memoryview)):
        return bytes(item)
    return str(item).encode("utf-8")


def bytes_to_raw(arr: np.ndarray) -> bytes:
    parts = []
    for item in arr.reshape(-1).tolist():
        b = as_bytes(item)
        parts.append(_LEN.pack(len(b)))
        parts.append(b)
    return b"".join(parts)


def to_raw(arr: np.ndarray) -> bytes:
    if arr.dtype.kind in ("O", "S", "U"):
        return bytes_to_raw(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr.tobytes()


def numel(shape) -> int:
    return math.prod(shape)
