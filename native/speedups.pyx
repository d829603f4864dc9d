# cython: language_level=3
"""Hot path of the batcher: gather requests into one batch buffer, scatter outputs.

The plain-Python twin with identical behaviour is gateway/native/reference.py;
tests/unit/test_native_parity.py holds the two to the same answers.
"""

import numpy as np
cimport numpy as cnp
from libc.string cimport memcpy

cnp.import_array()


def gather_rows(list arrays, cnp.ndarray out):
    """Copy each array, row after row, into ``out`` (contiguous along dim 0).

    Every array must share ``out``'s dtype and trailing dims. Returns the rows written.
    """
    cdef Py_ssize_t offset = 0
    cdef Py_ssize_t rows = 0
    cdef Py_ssize_t n
    cdef Py_ssize_t capacity = out.shape[0]
    cdef cnp.ndarray arr
    cdef char* dst = <char*> cnp.PyArray_DATA(out)
    cdef bint objects = out.dtype.hasobject
    cdef tuple trailing = (<object> out).shape[1:]
    if not cnp.PyArray_IS_C_CONTIGUOUS(out):
        raise ValueError("gather_rows: output buffer must be C-contiguous")
    for arr in arrays:
        if not objects and arr.dtype != out.dtype:
            raise ValueError(f"gather_rows: dtype {arr.dtype} does not match batch dtype {out.dtype}")
        if (<object> arr).shape[1:] != trailing:
            raise ValueError(
                f"gather_rows: trailing shape {(<object> arr).shape[1:]} does not match batch {trailing}"
            )
        n = arr.shape[0]
        if rows + n > capacity:
            raise ValueError("gather_rows: inputs exceed the batch buffer")
        if objects:
            out[rows:rows + n] = arr
        else:
            if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
                arr = np.ascontiguousarray(arr)
            if arr.nbytes:
                memcpy(dst + offset, cnp.PyArray_DATA(arr), arr.nbytes)
            offset += arr.nbytes
        rows += n
    return rows


def gather_padded(list arrays, cnp.ndarray out, pad_value):
    """Copy arrays whose trailing dims may be smaller than ``out``'s, padding the rest."""
    cdef Py_ssize_t row = 0
    cdef Py_ssize_t n
    cdef cnp.ndarray arr
    out.fill(pad_value)
    for arr in arrays:
        n = arr.shape[0]
        if row + n > out.shape[0]:
            raise ValueError("gather_padded: inputs exceed the batch buffer")
        out[(slice(row, row + n),) + tuple([slice(0, d) for d in (<object> arr).shape[1:]])] = arr
        row += n
    return row


def split_rows(cnp.ndarray array, list counts):
    """Views of ``array`` along dim 0, one per count (no copies)."""
    cdef Py_ssize_t start = 0
    cdef Py_ssize_t n
    cdef list parts = []
    cdef Py_ssize_t total = array.shape[0] if array.ndim else 0
    for c in counts:
        n = c
        if n < 0:
            raise ValueError(f"split_rows: negative row count {n}")
        if start + n > total:
            raise ValueError(f"split_rows: output has {total} rows, batch needs more")
        parts.append(array[start:start + n])
        start += n
    return parts


# -- drift monitoring: per-feature histograms and the Page-Hinkley detector --------------

ctypedef fused binned_t:
    cnp.float32_t
    cnp.float64_t
    cnp.int32_t
    cnp.int64_t


def histogram_update(
    const binned_t[:, :] values,
    const cnp.int64_t[:] columns,
    const cnp.float64_t[:, :] edges,
    const cnp.int64_t[:] n_edges,
    const cnp.uint8_t[:] categorical,
    cnp.int64_t[:, :] counts,
    cnp.int64_t[:] missing,
):
    """Add each row of ``values`` to the histogram of every feature, in place.

    Feature ``f`` reads column ``columns[f]``. Numeric: its bin is the number of
    ``edges[f, :n_edges[f]]`` that are <= the value (0 .. n_edges[f]; the outer bins are
    open-ended). Categorical: the edges are the sorted known categories; an exact match
    counts in the category's slot, anything else in slot ``n_edges[f]`` ("other").
    NaN counts in ``missing[f]``. Returns the rows counted.
    """
    cdef Py_ssize_t rows = values.shape[0]
    cdef Py_ssize_t nf = columns.shape[0]
    cdef Py_ssize_t r, f, lo, hi, mid, n
    cdef double x
    if edges.shape[0] != nf or n_edges.shape[0] != nf or categorical.shape[0] != nf \
            or counts.shape[0] != nf or missing.shape[0] != nf:
        raise ValueError("histogram_update: per-feature arrays must all have one entry per feature")
    for f in range(nf):
        if columns[f] < 0 or columns[f] >= values.shape[1]:
            raise ValueError(f"histogram_update: column {columns[f]} outside the row of {values.shape[1]}")
        if n_edges[f] < 0 or n_edges[f] > edges.shape[1] or counts.shape[1] < n_edges[f] + 1:
            raise ValueError(f"histogram_update: feature {f} has {n_edges[f]} edges, which its arrays cannot hold")
    with nogil:
        for r in range(rows):
            for f in range(nf):
                x = <double> values[r, columns[f]]
                if x != x:
                    missing[f] += 1
                    continue
                n = n_edges[f]
                lo = 0
                hi = n
                while lo < hi:  # lo = how many edges are <= x
                    mid = (lo + hi) >> 1
                    if edges[f, mid] <= x:
                        lo = mid + 1
                    else:
                        hi = mid
                if categorical[f]:
                    if lo > 0 and edges[f, lo - 1] == x:
                        counts[f, lo - 1] += 1
                    else:
                        counts[f, n] += 1
                else:
                    counts[f, lo] += 1
    return rows


def page_hinkley_update(
    const cnp.float64_t[:] values,
    cnp.float64_t[:] state,
    double delta,
    double threshold,
    Py_ssize_t min_instances,
    double alpha,
):
    """Feed a stream to a two-sided Page-Hinkley detector; returns the alarms raised.

    ``state`` = [n, mean, up, up_min, down, down_max], updated in place; after an
    alarm the detector starts afresh (as river's does). NaN values are skipped.
    """
    cdef Py_ssize_t i
    cdef Py_ssize_t alarms = 0
    cdef double x
    if state.shape[0] != 6:
        raise ValueError("page_hinkley_update: state must hold 6 values")
    with nogil:
        for i in range(values.shape[0]):
            x = values[i]
            if x != x:
                continue
            state[0] += 1
            state[1] += (x - state[1]) / state[0]
            state[2] = alpha * state[2] + (x - state[1] - delta)
            if state[2] < state[3]:
                state[3] = state[2]
            state[4] = alpha * state[4] + (x - state[1] + delta)
            if state[4] > state[5]:
                state[5] = state[4]
            if state[0] >= min_instances and (state[2] - state[3] > threshold or state[5] - state[4] > threshold):
                alarms += 1
                state[0] = 0
                state[1] = 0
                state[2] = 0
                state[3] = 0
                state[4] = 0
                state[5] = 0
    return alarms
