"""Plain-Python twin of native/speedups.pyx: the reference in parity tests.

Served only when GATEWAY_NO_EXTENSIONS=1 is set explicitly.
"""

from __future__ import annotations

import numpy as np


def gather_rows(arrays: list[np.ndarray], out: np.ndarray) -> int:
    if not out.flags.c_contiguous:
        raise ValueError("gather_rows: output buffer must be C-contiguous")
    trailing = out.shape[1:]
    rows = 0
    for arr in arrays:
        if not out.dtype.hasobject and arr.dtype != out.dtype:
            raise ValueError(f"gather_rows: dtype {arr.dtype} does not match batch dtype {out.dtype}")
        if arr.shape[1:] != trailing:
            raise ValueError(f"gather_rows: trailing shape {arr.shape[1:]} does not match batch {trailing}")
        n = arr.shape[0]
        if rows + n > out.shape[0]:
            raise ValueError("gather_rows: inputs exceed the batch buffer")
        out[rows : rows + n] = arr
        rows += n
    return rows


def gather_padded(arrays: list[np.ndarray], out: np.ndarray, pad_value) -> int:
    out.fill(pad_value)
    row = 0
    for arr in arrays:
        n = arr.shape[0]
        if row + n > out.shape[0]:
            raise ValueError("gather_padded: inputs exceed the batch buffer")
        out[(slice(row, row + n),) + tuple(slice(0, d) for d in arr.shape[1:])] = arr
        row += n
    return row


def split_rows(array: np.ndarray, counts: list[int]) -> list[np.ndarray]:
    total = array.shape[0] if array.ndim else 0
    parts = []
    start = 0
    for n in counts:
        if n < 0:
            raise ValueError(f"split_rows: negative row count {n}")
        if start + n > total:
            raise ValueError(f"split_rows: output has {total} rows, batch needs more")
        parts.append(array[start : start + n])
        start += n
    return parts
