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
