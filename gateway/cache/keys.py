"""Exact-cache keys: a 128-bit xxh3 digest of everything that decides an answer.

Hashed: model name, resolved version, every input's name, datatype, shape and
bytes (inputs in name order, so wire order does not matter), the requested
output names, and the request parameters except those that only steer
scheduling or transport. A msgpack header lists the inputs with their byte
lengths before the raw bytes follow, so no two requests hash the same bytes.
"""

from __future__ import annotations

import msgpack
import numpy as np
import xxhash

from gateway.core.errors import InvalidInputError
from gateway.core.tensors import bytes_to_raw
from gateway.core.types import InferRequest

# Parameters that change when or how an answer is delivered, never the answer.
NON_KEY_PARAMETERS = frozenset({"priority", "timeout", "cache", "binary_data_output"})
# Request parameter that opts a request out of every cache tier.
OPT_OUT_PARAMETER = "cache"

KEY_BYTES = 16


def _raw(arr: np.ndarray):
    if arr.dtype.hasobject:
        return bytes_to_raw(arr)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    # reshape(-1) of a C-contiguous array is a view; the rest are copied once.
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def exact_key(model: str, version: str, req: InferRequest) -> bytes:
    names = sorted(req.inputs)
    blobs = [_raw(req.inputs[n]) for n in names]
    header = [
        model,
        version,
        [[n, req.datatypes[n], list(req.inputs[n].shape), len(b)] for n, b in zip(names, blobs)],
        None if req.outputs is None else sorted(o.name for o in req.outputs),
        sorted((k, v) for k, v in req.parameters.items() if k not in NON_KEY_PARAMETERS),
    ]
    h = xxhash.xxh3_128(msgpack.packb(header, use_bin_type=True))
    for blob in blobs:
        h.update(blob)
    return h.digest()


def opted_out(req: InferRequest) -> bool:
    """True when the request asks for no caching (parameter ``cache: false``)."""
    value = req.parameters.get(OPT_OUT_PARAMETER, True)
    if type(value) is not bool:
        raise InvalidInputError(f"request parameter '{OPT_OUT_PARAMETER}' must be true or false, got {value!r}")
    return not value
