"""Exact-cache building blocks: keys, the msgpack codec, the in-process LRU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gateway.cache import codec
from gateway.cache.entry import ENTRY_OVERHEAD_BYTES, CachedResponse
from gateway.cache.keys import KEY_BYTES, exact_key, opted_out
from gateway.cache.memory import MemoryStore
from gateway.core.errors import InvalidInputError
from gateway.core.types import InferRequest, RequestedOutput


def request(**kw) -> InferRequest:
    base = dict(
        model="m",
        version="1",
        inputs={"A": np.arange(6, dtype=np.int32).reshape(2, 3), "B": np.ones((2, 3), dtype=np.float32)},
        datatypes={"A": "INT32", "B": "FP32"},
    )
    base.update(kw)
    return InferRequest(**base)


# ------------------------------------------------------------------ keys


def test_key_is_128_bits_and_stable():
    k = exact_key("m", "1", request())
    assert len(k) == KEY_BYTES == 16
    assert exact_key("m", "1", request()) == k


def test_key_changes_with_model_and_version():
    base = exact_key("m", "1", request())
    assert exact_key("m", "2", request()) != base
    assert exact_key("n", "1", request()) != base


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.inputs.__setitem__("A", r.inputs["A"] + 1),  # bytes
        lambda r: r.inputs.__setitem__("A", r.inputs["A"].reshape(3, 2)),  # shape, same bytes
        lambda r: r.datatypes.__setitem__("A", "UINT32"),  # datatype, same bytes
        lambda r: r.inputs.__setitem__("C", r.inputs.pop("A")) or r.datatypes.__setitem__("C", r.datatypes.pop("A")),
        lambda r: setattr(r, "outputs", [RequestedOutput("OUT")]),
        lambda r: r.parameters.__setitem__("top_k", 3),
        lambda r: r.parameters.__setitem__("flag", 1),
    ],
    ids=["bytes", "shape", "datatype", "name", "outputs", "parameter", "parameter-int"],
)
def test_key_changes_with_what_decides_the_answer(change):
    r = request(parameters={"flag": True})
    before = exact_key("m", "1", r)
    change(r)
    assert exact_key("m", "1", r) != before


def test_key_ignores_scheduling_parameters_input_order_and_id():
    a = request(id="a", parameters={"priority": 1, "timeout": 5000, "cache": True})
    b = request(id="b")
    b.inputs = dict(reversed(list(b.inputs.items())))
    assert exact_key("m", "1", a) == exact_key("m", "1", b)


def test_key_of_a_strided_view_equals_its_contiguous_copy():
    big = np.arange(24, dtype=np.int32).reshape(4, 6)
    view = big[::2, ::2]
    assert not view.flags.c_contiguous
    a = request(inputs={"A": view, "B": np.ones((2, 3), np.float32)})
    b = request(inputs={"A": view.copy(), "B": np.ones((2, 3), np.float32)})
    assert exact_key("m", "1", a) == exact_key("m", "1", b)


def test_key_of_bytes_tensors_is_unambiguous():
    def bytes_req(items):
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return request(inputs={"S": arr}, datatypes={"S": "BYTES"})

    assert exact_key("m", "1", bytes_req([b"ab", b"c"])) != exact_key("m", "1", bytes_req([b"a", b"bc"]))
    assert exact_key("m", "1", bytes_req([b"ab", b"c"])) == exact_key("m", "1", bytes_req([b"ab", b"c"]))


def test_opt_out_parameter():
    assert opted_out(request(parameters={"cache": False}))
    assert not opted_out(request(parameters={"cache": True}))
    assert not opted_out(request())
    with pytest.raises(InvalidInputError, match="'cache' must be true or false"):
        opted_out(request(parameters={"cache": "no"}))


# ------------------------------------------------------------------ codec

DTYPES = ["bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float16", "float32", "float64"]
V2 = {"bool": "BOOL", "float16": "FP16", "float32": "FP32", "float64": "FP64"}


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4),
    data=st.data(),
)
def test_codec_round_trips_fixed_width_tensors(dtype, shape, data):
    arr = data.draw(hnp.arrays(np.dtype(dtype), shape))
    datatype = V2.get(dtype, dtype.upper())
    entry = CachedResponse.from_outputs({"OUT": arr}, {"OUT": datatype})
    back = codec.unpack(codec.pack(entry))
    assert back.datatypes == {"OUT": datatype}
    out = back.outputs["OUT"]
    assert out.dtype == arr.dtype and out.shape == arr.shape
    assert out.tobytes() == arr.tobytes()  # bit-exact, NaNs included
    assert not out.flags.writeable
    assert back.nbytes == entry.nbytes


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(max_size=8), min_size=0, max_size=6))
def test_codec_round_trips_bytes_tensors(items):
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    entry = CachedResponse.from_outputs({"S": arr}, {"S": "BYTES"})
    back = codec.unpack(codec.pack(entry))
    assert back.outputs["S"].tolist() == items
    assert back.nbytes == entry.nbytes


def test_codec_keeps_big_endian_values():
    arr = np.arange(4, dtype=">i4")
    back = codec.unpack(codec.pack(CachedResponse.from_outputs({"X": arr}, {"X": "INT32"})))
    assert back.outputs["X"].tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("blob", [b"", b"\x01\x02", b"\x81\xa1v\x02", b"\x82\xa1v\x01\xa1o\x91\x91\x01"])
def test_codec_rejects_what_it_cannot_read(blob):
    with pytest.raises(codec.CorruptEntryError):
        codec.unpack(blob)


def test_entry_copies_views_of_a_batch_buffer():
    batch = np.arange(100, dtype=np.float32).reshape(10, 10)
    entry = CachedResponse.from_outputs({"OUT": batch[2:3]}, {"OUT": "FP32"})
    assert entry.outputs["OUT"].base is None or entry.outputs["OUT"].base is not batch
    assert entry.nbytes == ENTRY_OVERHEAD_BYTES + 40 + 3
    batch[2, 0] = -1
    assert entry.outputs["OUT"][0, 0] == 20


# ------------------------------------------------------------------ in-process LRU


def entry_of(size: int) -> CachedResponse:
    payload = size - ENTRY_OVERHEAD_BYTES - 1
    return CachedResponse.from_outputs({"X": np.zeros(payload, np.uint8)}, {"X": "UINT8"})


S = 1_000_000_000  # one second in ns


def test_lru_is_bounded_by_bytes_and_evicts_least_recently_used():
    store = MemoryStore(max_bytes=3000)
    for k in (b"a", b"b", b"c"):
        assert store.put(k, entry_of(1000), 60 * S, 0)
    assert store.bytes == 3000 and len(store) == 3
    assert store.get(b"a", 1) is not None  # a is now the most recent
    store.put(b"d", entry_of(1000), 60 * S, 2)
    assert store.get(b"b", 3) is None  # b was the least recent
    assert all(store.get(k, 3) is not None for k in (b"a", b"c", b"d"))
    assert store.bytes == 3000 and store.evictions == 1


def test_lru_refuses_an_entry_larger_than_the_bound():
    store = MemoryStore(max_bytes=1000)
    assert not store.put(b"big", entry_of(1001), 60 * S, 0)
    assert len(store) == 0 and store.bytes == 0


def test_lru_ttl_expires_on_the_monotonic_clock():
    store = MemoryStore(max_bytes=10_000)
    store.put(b"k", entry_of(500), 2 * S, now_ns=10 * S)
    assert store.get(b"k", 11 * S) is not None
    assert store.remaining_ns(b"k", 11 * S) == 1 * S
    assert store.get(b"k", 12 * S) is None
    assert store.bytes == 0


def test_lru_drops_expired_entries_when_storing():
    store = MemoryStore(max_bytes=10_000)
    store.put(b"old", entry_of(500), 1 * S, 0)
    store.put(b"new", entry_of(500), 1 * S, 5 * S)
    assert len(store) == 1 and store.bytes == 500


def test_lru_replacing_a_key_keeps_the_byte_count_right():
    store = MemoryStore(max_bytes=10_000)
    store.put(b"k", entry_of(500), S, 0)
    store.put(b"k", entry_of(700), S, 0)
    assert store.bytes == 700 and len(store) == 1


def test_lru_resize_shrinks_at_once():
    store = MemoryStore(max_bytes=10_000)
    for i in range(5):
        store.put(bytes([i]), entry_of(1000), S, 0)
    store.resize(2500)
    assert len(store) == 2 and store.bytes == 2000
    with pytest.raises(ValueError):
        store.resize(0)
