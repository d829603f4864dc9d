"""CachedResponse <-> bytes for shared tiers (msgpack).

Layout: ``{"v": 1, "o": [[name, datatype, dtype, shape, data], ...]}`` where
``dtype`` is numpy's little-endian type string and ``data`` the raw row-major
bytes (BYTES tensors: ``dtype`` "bytes" and ``data`` a list of bin, one per
element). Decoding wraps the bytes without copying.
"""

from __future__ import annotations

import msgpack
import numpy as np

from gateway.cache.entry import ENTRY_OVERHEAD_BYTES, CachedResponse, tensor_bytes
from gateway.core.tensors import as_bytes

FORMAT_VERSION = 1
_BYTES = "bytes"


class CorruptEntryError(ValueError):
    """A stored value is not an entry this version can read."""


def pack(entry: CachedResponse) -> bytes:
    outputs = []
    for name, arr in entry.outputs.items():
        if arr.dtype.hasobject:
            data = [as_bytes(x) for x in arr.reshape(-1).tolist()]
            outputs.append([name, entry.datatypes[name], _BYTES, list(arr.shape), data])
        else:
            le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
            outputs.append([name, entry.datatypes[name], le.dtype.str, list(arr.shape), le.tobytes()])
    return msgpack.packb({"v": FORMAT_VERSION, "o": outputs}, use_bin_type=True)


def unpack(blob: bytes) -> CachedResponse:
    try:
        doc = msgpack.unpackb(blob, raw=False)
        if not isinstance(doc, dict) or doc.get("v") != FORMAT_VERSION:
            raise CorruptEntryError(f"unknown cache entry format {doc.get('v') if isinstance(doc, dict) else doc!r}")
        outputs: dict[str, np.ndarray] = {}
        datatypes: dict[str, str] = {}
        size = ENTRY_OVERHEAD_BYTES
        for name, datatype, dtype, shape, data in doc["o"]:
            if dtype == _BYTES:
                arr = np.empty(len(data), dtype=object)
                arr[:] = data
                arr = arr.reshape(shape)
            else:
                arr = np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)
            arr.setflags(write=False)
            outputs[name] = arr
            datatypes[name] = datatype
            size += tensor_bytes(arr) + len(name)
    except CorruptEntryError:
        raise
    except (ValueError, TypeError, KeyError, msgpack.UnpackException) as exc:
        raise CorruptEntryError(f"unreadable cache entry: {exc}") from None
    return CachedResponse(outputs, datatypes, size)
