"""The compiled hot path (gateway.native._speedups) and its plain-Python twin
(gateway.native.reference) give the same answers and fail the same way.

Both modules are imported directly, so the parity checks do not depend on the
GATEWAY_NO_EXTENSIONS switch (read once, when gateway.native is imported).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import gateway.native
from gateway.native import _speedups as native
from gateway.native import reference

ROOT = Path(__file__).resolve().parents[2]
IMPLS = (native, reference)

NUMERIC_DTYPES = [
    np.dtype(t)
    for t in (
        "bool", "uint8", "uint16", "uint32", "uint64",
        "int8", "int16", "int32", "int64",
        "float16", "float32", "float64",
    )
]
OBJECT = np.dtype(object)
ALL_DTYPES = NUMERIC_DTYPES + [OBJECT]

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- strategies


def _values(dtype: np.dtype, shape: tuple[int, ...]):
    """Arrays of ``dtype`` and ``shape``; object arrays hold bytes."""
    if dtype == OBJECT:
        return hnp.arrays(OBJECT, shape, elements=st.binary(max_size=6), fill=st.just(b""))
    return hnp.arrays(dtype, shape)


LAYOUTS = ("contiguous", "row_step", "col_step", "transpose", "reversed")


def relayout(arr: np.ndarray, layout: str) -> np.ndarray:
    """Same values as ``arr``, laid out in memory as ``layout`` says (mostly not C-contiguous)."""
    if layout == "contiguous":
        return arr
    if layout == "row_step":  # every other row of a bigger buffer
        big = np.zeros((2 * arr.shape[0],) + arr.shape[1:], dtype=arr.dtype)
        big[::2] = arr
        view = big[::2]
    elif layout == "col_step" and arr.ndim >= 2:  # every other column
        big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=arr.dtype)
        big[..., ::2] = arr
        view = big[..., ::2]
    elif layout == "transpose":  # Fortran order: the transpose of a C-contiguous array
        view = np.ascontiguousarray(arr.T).T
    elif layout == "reversed":  # negative strides
        view = np.ascontiguousarray(arr[::-1])[::-1]
    else:
        view = arr
    assert view.shape == arr.shape and view.dtype == arr.dtype
    assert _same(view, arr)
    return view


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and contents, bit for bit (NaNs included) or by bytes objects."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.hasobject:
        return a.tolist() == b.tolist()
    return np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


trailing_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)
row_counts = st.lists(st.integers(0, 4), min_size=0, max_size=5)


@st.composite
def batches(draw, dtypes=ALL_DTYPES, trailing=trailing_shapes):
    """(dtype, trailing shape, inputs): a list of arrays of one dtype and trailing shape."""
    dtype = draw(st.sampled_from(dtypes))
    tail = draw(trailing)
    arrays = []
    for n in draw(row_counts):
        values = draw(_values(dtype, (n,) + tail))
        arrays.append(relayout(values, draw(st.sampled_from(LAYOUTS))))
    return dtype, tail, arrays


def blank(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An output buffer with a known, recognisable content."""
    out = np.empty(shape, dtype=dtype)
    out.fill(b"<unset>" if dtype == OBJECT else 1)
    return out


# ---------------------------------------------------------------- helpers


def outcome(fn, *args):
    """("ok", result) or ("error", exception type, message)."""
    try:
        return ("ok", fn(*args))
    except Exception as exc:  # noqa: BLE001 - compared between the implementations
        return ("error", type(exc), str(exc))


def run_gather(name: str, arrays: list[np.ndarray], make_out, *extra):
    """Run ``name`` of both implementations on fresh, equal output buffers."""
    results = []
    for impl in IMPLS:
        out = make_out()
        results.append((outcome(getattr(impl, name), list(arrays), out, *extra), out))
    (got_native, out_native), (got_ref, out_ref) = results
    return got_native, out_native, got_ref, out_ref


def assert_parity(name: str, arrays, make_out, *extra):
    got_native, out_native, got_ref, out_ref = run_gather(name, arrays, make_out, *extra)
    assert got_native == got_ref, f"{name}: native {got_native!r} != reference {got_ref!r}"
    assert _same(out_native, out_ref), f"{name}: output buffers differ\n{out_native!r}\n{out_ref!r}"
    return got_ref, out_ref


def concat(arrays, dtype, tail):
    if not arrays:
        return np.empty((0,) + tail, dtype=dtype)
    return np.concatenate(arrays, axis=0)


# ---------------------------------------------------------------- selection


def test_cython_module_is_the_one_loaded_in_this_process():
    assert gateway.native.IMPLEMENTATION == "cython"
    assert gateway.native.USING_EXTENSIONS is True
    assert gateway.native.gather_rows is native.gather_rows
    assert gateway.native.gather_padded is native.gather_padded
    assert gateway.native.split_rows is native.split_rows


def test_no_extensions_switch_selects_the_python_twin():
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": "1"}
    proc = subprocess.run(
        [
            sys.executable, "-c",
            "import gateway.native as n; print(n.IMPLEMENTATION); print(n.gather_rows.__module__)",
        ],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    implementation, module = proc.stdout.strip().splitlines()
    assert implementation.startswith("python"), implementation
    assert implementation != gateway.native.IMPLEMENTATION
    assert module == "gateway.native.reference"


# ---------------------------------------------------------------- gather_rows


@FAST
@given(batch=batches(), spare=st.integers(0, 3))
def test_gather_rows_parity(batch, spare):
    dtype, tail, arrays = batch
    total = sum(a.shape[0] for a in arrays)
    got, out = assert_parity("gather_rows", arrays, lambda: blank((total + spare,) + tail, dtype))
    assert got == ("ok", total)
    assert _same(out[:total], concat(arrays, dtype, tail))
    # rows past the inputs are left alone
    assert _same(out[total:], blank((spare,) + tail, dtype))


@FAST
@given(batch=batches(dtypes=NUMERIC_DTYPES), other=st.sampled_from(ALL_DTYPES))
def test_gather_rows_dtype_mismatch_parity(batch, other):
    dtype, tail, arrays = batch
    arrays = arrays + [np.zeros((1,) + tail, dtype=other)]
    total = sum(a.shape[0] for a in arrays)
    got, _ = assert_parity("gather_rows", arrays, lambda: blank((total,) + tail, dtype))
    if other == dtype:
        assert got == ("ok", total)
    else:
        assert got == (
            "error", ValueError, f"gather_rows: dtype {other} does not match batch dtype {dtype}",
        )


zero_or_more_trailing = st.lists(st.integers(0, 3), min_size=0, max_size=2).map(tuple)


@FAST
@given(batch=batches(trailing=zero_or_more_trailing), short_by=st.integers(1, 4))
def test_gather_rows_overflow_parity(batch, short_by):
    """Rows are counted, not bytes: zero-width rows and BYTES rows overflow too."""
    dtype, tail, arrays = batch
    total = sum(a.shape[0] for a in arrays)
    last = blank((short_by,) + tail, dtype)
    # The buffer holds exactly the first inputs: the last one does not fit.
    got, out = assert_parity("gather_rows", arrays + [last], lambda: blank((total,) + tail, dtype))
    assert got == ("error", ValueError, "gather_rows: inputs exceed the batch buffer")
    assert _same(out, concat(arrays, dtype, tail))


@pytest.mark.parametrize("last_rows", [1, 2])
def test_gather_rows_object_overflow_parity(last_rows):
    """A 1-row BYTES input past the end must not be dropped silently (numpy broadcasts 1 -> 0)."""
    arrays = [
        np.array([b"a", b"b"], dtype=object),
        np.array([b"c"] * last_rows, dtype=object),
    ]
    got, out = assert_parity("gather_rows", arrays, lambda: blank((2,), OBJECT))
    assert got == ("error", ValueError, "gather_rows: inputs exceed the batch buffer")
    assert out.tolist() == [b"a", b"b"]


def test_gather_rows_zero_width_overflow_parity():
    arrays = [np.empty((3, 0), dtype=np.float32)]
    got, _ = assert_parity("gather_rows", arrays, lambda: blank((1, 0), np.dtype(np.float32)))
    assert got == ("error", ValueError, "gather_rows: inputs exceed the batch buffer")


@FAST
@given(
    batch=batches(),
    bad_tail=st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple),
    rows=st.integers(0, 3),
)
def test_gather_rows_trailing_shape_mismatch_parity(batch, bad_tail, rows):
    """Same-size but differently shaped rows are refused, never memcpy'd out of line."""
    dtype, tail, arrays = batch
    odd = blank((rows,) + bad_tail, dtype)
    total = sum(a.shape[0] for a in arrays) + rows
    got, out = assert_parity("gather_rows", arrays + [odd], lambda: blank((total,) + tail, dtype))
    if bad_tail == tail:
        assert got == ("ok", total)
    else:
        assert got == (
            "error", ValueError, f"gather_rows: trailing shape {bad_tail} does not match batch {tail}",
        )
        assert _same(out[: total - rows], concat(arrays, dtype, tail))


def test_gather_rows_same_bytes_other_shape_is_refused():
    arrays = [np.arange(6, dtype=np.int32).reshape(3, 2)]
    got, out = assert_parity("gather_rows", arrays, lambda: blank((2, 3), np.dtype(np.int32)))
    assert got == ("error", ValueError, "gather_rows: trailing shape (2,) does not match batch (3,)")
    assert (out == 1).all()


@FAST
@given(batch=batches(), how=st.sampled_from(["row_step", "col_step", "transpose", "reversed"]))
def test_gather_rows_non_contiguous_output_parity(batch, how):
    """The output check comes first: whatever the inputs, a strided buffer is refused."""
    dtype, tail, arrays = batch
    rows = max(2, sum(a.shape[0] for a in arrays))

    def make_out():
        if how == "row_step":
            return blank((2 * rows, 3), dtype)[::2]
        if how == "col_step":
            return blank((rows, 6), dtype)[:, ::2]
        if how == "transpose":
            return blank((3, rows), dtype).T
        return blank((rows, 3), dtype)[::-1]

    assert not make_out().flags.c_contiguous
    got, _ = assert_parity("gather_rows", arrays, make_out)
    assert got == ("error", ValueError, "gather_rows: output buffer must be C-contiguous")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_gather_rows_empty_inputs(dtype):
    for arrays, rows in (([], 0), ([np.empty((0, 2), dtype=dtype)] * 3, 0)):
        got, out = assert_parity("gather_rows", arrays, lambda: blank((0, 2), dtype))
        assert got == ("ok", rows)
        assert out.shape == (0, 2)


# ---------------------------------------------------------------- gather_padded


@st.composite
def ragged_batches(draw):
    """(dtype, out trailing shape, inputs with trailing dims <= out's, pad value)."""
    dtype = draw(st.sampled_from(ALL_DTYPES))
    ndim = draw(st.integers(0, 2))
    out_tail = tuple(draw(st.lists(st.integers(1, 4), min_size=ndim, max_size=ndim)))
    arrays = []
    for n in draw(row_counts):
        tail = tuple(draw(st.integers(0, d)) for d in out_tail)
        values = draw(_values(dtype, (n,) + tail))
        arrays.append(relayout(values, draw(st.sampled_from(LAYOUTS))))
    if dtype == OBJECT:
        pad = draw(st.binary(max_size=3))
    elif dtype.kind == "b":
        pad = draw(st.booleans())
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        pad = draw(st.integers(int(info.min), int(info.max)))
    else:
        pad = draw(st.floats(width=dtype.itemsize * 8, allow_nan=True, allow_infinity=True))
    return dtype, out_tail, arrays, pad


@FAST
@given(batch=ragged_batches(), spare=st.integers(0, 3))
def test_gather_padded_parity(batch, spare):
    dtype, out_tail, arrays, pad = batch
    total = sum(a.shape[0] for a in arrays)
    got, out = assert_parity("gather_padded", arrays, lambda: blank((total + spare,) + out_tail, dtype), pad)
    assert got == ("ok", total)
    # Each input sits in its corner; everything else holds pad_value.
    expected = np.empty((total + spare,) + out_tail, dtype=dtype)
    expected.fill(pad)
    row = 0
    for a in arrays:
        expected[(slice(row, row + a.shape[0]),) + tuple(slice(0, d) for d in a.shape[1:])] = a
        row += a.shape[0]
    assert _same(out, expected)


@FAST
@given(
    dtype=st.sampled_from(NUMERIC_DTYPES),
    out_rows=st.integers(0, 4),
    shapes=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5)), min_size=1, max_size=4),
)
def test_gather_padded_error_parity(dtype, out_rows, shapes):
    """Inputs too many rows or too wide for the buffer: same answer or same error."""
    arrays = [np.ones(shape, dtype=dtype) for shape in shapes]
    got, _ = assert_parity("gather_padded", arrays, lambda: blank((out_rows, 3), dtype), 0)
    fits = sum(s[0] for s in shapes) <= out_rows and all(s[1] <= 3 for s in shapes)
    if fits:
        assert got == ("ok", sum(s[0] for s in shapes))


def test_gather_padded_wider_input_is_value_error_in_both():
    arrays = [np.ones((1, 4), dtype=np.float32)]
    got, _ = assert_parity("gather_padded", arrays, lambda: blank((1, 3), np.dtype(np.float32)), 0.0)
    assert got[0] == "error" and got[1] is ValueError


# ---------------------------------------------------------------- split_rows


@st.composite
def splits(draw):
    dtype = draw(st.sampled_from(ALL_DTYPES))
    tail = draw(trailing_shapes)
    rows = draw(st.integers(0, 8))
    array = relayout(draw(_values(dtype, (rows,) + tail)), draw(st.sampled_from(LAYOUTS)))
    counts = draw(st.lists(st.integers(0, 4), max_size=5))
    return array, counts


def _view_signature(part: np.ndarray):
    iface = part.__array_interface__
    return part.shape, part.strides, part.dtype, iface["data"][0]


@FAST
@given(split=splits())
def test_split_rows_parity(split):
    array, counts = split
    got_native = outcome(native.split_rows, array, list(counts))
    got_ref = outcome(reference.split_rows, array, list(counts))
    if sum(counts) <= array.shape[0]:
        assert got_native[0] == got_ref[0] == "ok"
        parts_native, parts_ref = got_native[1], got_ref[1]
        assert [p.shape[0] for p in parts_ref] == counts
        assert [_view_signature(p) for p in parts_native] == [_view_signature(p) for p in parts_ref]
        for start, part in zip(np.cumsum([0] + counts[:-1]), parts_native):
            assert np.shares_memory(part, array) or part.size == 0
            assert _same(part, array[start : start + part.shape[0]])
    else:
        message = f"split_rows: output has {array.shape[0]} rows, batch needs more"
        assert got_native == got_ref == ("error", ValueError, message)


@pytest.mark.parametrize("impl", IMPLS, ids=lambda m: m.__name__)
def test_split_rows_of_a_scalar_has_no_rows(impl):
    scalar = np.array(5.0)
    assert impl.split_rows(scalar, []) == []
    with pytest.raises(ValueError, match=r"^split_rows: output has 0 rows, batch needs more$"):
        impl.split_rows(scalar, [1])


@pytest.mark.parametrize("impl", IMPLS, ids=["cython", "python"])
def test_gather_padded_refuses_rows_past_the_buffer(impl):
    out = np.zeros((2, 3), np.float32)
    arrays = [np.ones((2, 2), np.float32), np.ones((1, 3), np.float32)]
    with pytest.raises(ValueError, match="gather_padded: inputs exceed the batch buffer"):
        impl.gather_padded(arrays, out, 0.0)


@pytest.mark.parametrize("impl", IMPLS, ids=["cython", "python"])
def test_split_rows_refuses_negative_counts(impl):
    with pytest.raises(ValueError, match="split_rows: negative row count -1"):
        impl.split_rows(np.arange(3), [-1, 2])


# ------------------------------------------------------- drift: histograms, Page-Hinkley

HIST_DTYPES = [np.dtype(t) for t in ("float32", "float64", "int32", "int64")]


@st.composite
def histogram_cases(draw):
    dtype = draw(st.sampled_from(HIST_DTYPES))
    rows = draw(st.integers(0, 12))
    width = draw(st.integers(1, 5))
    if dtype.kind == "f":
        elements = st.floats(-5, 5, width=dtype.itemsize * 8) | st.sampled_from([-np.inf, np.inf, np.nan])
    else:
        elements = st.integers(-4, 4)
    values = draw(hnp.arrays(dtype, (rows, width), elements=elements))
    nf = draw(st.integers(1, 4))
    columns = np.array(draw(st.lists(st.integers(0, width - 1), min_size=nf, max_size=nf)), dtype=np.int64)
    max_edges = draw(st.integers(0, 6))
    edges = np.full((nf, max(max_edges, 1)), np.inf)
    n_edges = np.zeros(nf, dtype=np.int64)
    for f in range(nf):
        e = np.unique(draw(st.lists(st.integers(-4, 4).map(float), max_size=max_edges)))
        edges[f, : len(e)] = e
        n_edges[f] = len(e)
    categorical = np.array(draw(st.lists(st.booleans(), min_size=nf, max_size=nf)), dtype=np.uint8)
    return values, columns, edges, n_edges, categorical


@FAST
@given(histogram_cases(), st.sampled_from(["contiguous", "row_step", "col_step"]))
def test_histogram_update_parity(case, layout):
    values, columns, edges, n_edges, categorical = case
    values = relayout(values, layout) if values.size else values
    results = []
    for impl in IMPLS:
        counts = np.full((len(columns), edges.shape[1] + 1), 3, dtype=np.int64)  # adds to what is there
        missing = np.zeros(len(columns), dtype=np.int64)
        rows = impl.histogram_update(values, columns, edges, n_edges, categorical, counts, missing)
        results.append((rows, counts.tolist(), missing.tolist()))
    assert results[0] == results[1]
    rows, counts, missing = results[0]
    assert rows == len(values)
    assert all(sum(c) - 3 * len(c) + m == len(values) for c, m in zip(counts, missing))


def test_histogram_update_bins_and_categories():
    values = np.array([[-1.0, 2.0], [0.0, 5.0], [0.5, np.nan], [9.0, 2.0]])
    edges = np.array([[0.0, 1.0, np.inf], [2.0, 3.0, np.inf]])
    for impl in IMPLS:
        counts = np.zeros((2, 4), dtype=np.int64)
        missing = np.zeros(2, dtype=np.int64)
        impl.histogram_update(values, np.array([0, 1]), edges, np.array([2, 2]), np.array([0, 1], np.uint8), counts, missing)
        # numeric: (-inf,0) [0,1) [1,+inf); categorical: 2.0, 3.0, other
        assert counts.tolist() == [[1, 2, 1, 0], [2, 0, 1, 0]], impl
        assert missing.tolist() == [0, 1]


@pytest.mark.parametrize("impl", IMPLS, ids=["cython", "python"])
def test_histogram_update_errors(impl):
    values = np.zeros((2, 3))
    ok = dict(columns=np.array([0]), edges=np.zeros((1, 2)), n_edges=np.array([2]), categorical=np.zeros(1, np.uint8),
              counts=np.zeros((1, 3), np.int64), missing=np.zeros(1, np.int64))
    with pytest.raises(ValueError, match="column 3 outside"):
        impl.histogram_update(values, **{**ok, "columns": np.array([3])})
    with pytest.raises(ValueError, match="cannot hold"):
        impl.histogram_update(values, **{**ok, "counts": np.zeros((1, 2), np.int64)})
    with pytest.raises(ValueError, match="one entry per feature"):
        impl.histogram_update(values, **{**ok, "missing": np.zeros(2, np.int64)})
    with pytest.raises(TypeError):
        impl.histogram_update(values.astype(np.float16), **ok)


@FAST
@given(
    hnp.arrays(np.float64, st.integers(0, 200), elements=st.floats(-10, 10) | st.just(np.nan)),
    st.floats(0, 0.5), st.floats(0.5, 20), st.integers(1, 40), st.sampled_from([1.0, 0.9999, 0.99]),
)
def test_page_hinkley_parity(values, delta, threshold, min_instances, alpha):
    out = []
    for impl in IMPLS:
        state = np.zeros(6)
        alarms = impl.page_hinkley_update(values, state, delta, threshold, min_instances, alpha)
        out.append((alarms, state))
    assert out[0][0] == out[1][0]
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS, ids=["cython", "python"])
def test_page_hinkley_detects_a_step_not_noise(impl):
    rng = np.random.default_rng(0)
    state = np.zeros(6)
    quiet = rng.normal(0, 0.1, 2000)
    assert impl.page_hinkley_update(quiet, state, 0.005, 5.0, 30, 1.0) == 0
    stepped = rng.normal(1.0, 0.1, 100)  # +10 sigma
    assert impl.page_hinkley_update(stepped, state, 0.005, 5.0, 30, 1.0) >= 1
