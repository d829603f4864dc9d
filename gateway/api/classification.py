"""The v2 classification extension: an output's top-k classes as BYTES ``"score:index[:label]"``.

As Triton: each batch row (the first dim when the model batches) is ranked over all its other
elements flattened; the result has shape ``[batch, min(k, classes)]`` (``[min(k, classes)]`` for a
model that does not batch). Scores are written like C++ ``std::to_string``: ``%f`` for floating
point, plain integers otherwise. Equal scores keep index order, so the answer is deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gateway.core.errors import InvalidInputError

_RANKABLE = frozenset({"UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"})


def top_k(array: np.ndarray, datatype: str, k: int, batched: bool, labels: Sequence[str], what: str) -> np.ndarray:
    """The classification strings (an object array of bytes) of ``array``."""
    if datatype not in _RANKABLE:
        raise InvalidInputError(f"{what}: classification needs a numeric output, not {datatype}")
    rows = array.reshape(array.shape[0], -1) if batched and array.ndim > 0 else array.reshape(1, -1)
    classes = rows.shape[1]
    keep = min(k, classes)
    # Descending, ties in index order: a stable ascending sort of the reversed row, read backwards.
    order = (classes - 1) - np.argsort(rows[:, ::-1], axis=1, kind="stable")[:, ::-1][:, :keep]
    scores = np.take_along_axis(rows, order, axis=1)
    as_text = "%f".__mod__ if rows.dtype.kind == "f" else str
    out = np.empty(order.shape, dtype=object)
    count = len(labels)
    for r in range(order.shape[0]):
        for c, (index, score) in enumerate(zip(order[r].tolist(), scores[r].tolist())):
            text = f"{as_text(score)}:{index}"
            if index < count:
                text += ":" + labels[index]
            out[r, c] = text.encode("utf-8")
    return out if batched and array.ndim > 0 else out.reshape(keep)
