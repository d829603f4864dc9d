"""What a cache tier holds for one answer: the output tensors and their v2 datatypes."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Bookkeeping charged per entry beyond its tensor bytes (key, dicts, array headers),
# so that many tiny answers cannot exceed a byte bound by hiding in overhead.
ENTRY_OVERHEAD_BYTES = 256


def tensor_bytes(arr: np.ndarray) -> int:
    if arr.dtype.hasobject:
        return arr.size * 8 + sum(len(x) for x in arr.reshape(-1).tolist())
    return arr.nbytes


@dataclass(frozen=True, slots=True)
class CachedResponse:
    outputs: dict[str, np.ndarray]  # read-only arrays owned by the cache
    datatypes: dict[str, str]
    nbytes: int

    @classmethod
    def from_outputs(cls, outputs: dict[str, np.ndarray], datatypes: dict[str, str]) -> CachedResponse:
        """Copies the arrays: a model's outputs may be views of a whole batch's buffer,
        which the cache must not keep alive."""
        owned = {}
        size = ENTRY_OVERHEAD_BYTES
        for name, arr in outputs.items():
            copy = np.array(arr, copy=True, order="C")
            copy.setflags(write=False)
            owned[name] = copy
            size += tensor_bytes(copy) + len(name)
        return cls(owned, {n: datatypes[n] for n in owned}, size)
