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


def histogram_update(
    values: np.ndarray,
    columns: np.ndarray,
    edges: np.ndarray,
    n_edges: np.ndarray,
    categorical: np.ndarray,
    counts: np.ndarray,
    missing: np.ndarray,
) -> int:
    if values.dtype not in (np.float32, np.float64, np.int32, np.int64) or values.ndim != 2:
        raise TypeError("No matching signature found")
    nf = len(columns)
    if not (len(edges) == len(n_edges) == len(categorical) == len(counts) == len(missing) == nf):
        raise ValueError("histogram_update: per-feature arrays must all have one entry per feature")
    for f in range(nf):
        if columns[f] < 0 or columns[f] >= values.shape[1]:
            raise ValueError(f"histogram_update: column {columns[f]} outside the row of {values.shape[1]}")
        if n_edges[f] < 0 or n_edges[f] > edges.shape[1] or counts.shape[1] < n_edges[f] + 1:
            raise ValueError(f"histogram_update: feature {f} has {n_edges[f]} edges, which its arrays cannot hold")
    for f in range(nf):
        x = values[:, columns[f]].astype(np.float64)
        nan = np.isnan(x)
        missing[f] += int(nan.sum())
        x = x[~nan]
        n = int(n_edges[f])
        e = edges[f, :n]
        idx = np.searchsorted(e, x, side="right")
        if categorical[f]:
            hit = (idx > 0) & (e[np.maximum(idx - 1, 0)] == x) if n else np.zeros(len(x), bool)
            idx = np.where(hit, idx - 1, n)
        counts[f, : n + 1] += np.bincount(idx, minlength=n + 1)
    return values.shape[0]


def page_hinkley_update(
    values: np.ndarray, state: np.ndarray, delta: float, threshold: float, min_instances: int, alpha: float
) -> int:
    if len(state) != 6:
        raise ValueError("page_hinkley_update: state must hold 6 values")
    alarms = 0
    for x in values:
        x = float(x)
        if x != x:
            continue
        state[0] += 1
        state[1] += (x - state[1]) / state[0]
        state[2] = alpha * state[2] + (x - state[1] - delta)
        state[3] = min(state[3], state[2])
        state[4] = alpha * state[4] + (x - state[1] + delta)
        state[5] = max(state[5], state[4])
        if state[0] >= min_instances and (state[2] - state[3] > threshold or state[5] - state[4] > threshold):
            alarms += 1
            state[:] = 0
    return alarms
