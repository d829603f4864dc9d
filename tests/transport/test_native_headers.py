"""Unit tests of the native transport's header handling (gateway/api/grpc_native/headers.py, frames.py):
what the server encodes must decode with the `hpack` library, request heads are read as grpcio
reads them, and the cache of all-indexed header blocks never answers for a changed HPACK table."""

from __future__ import annotations

import base64
import urllib.parse

import hpack
import pytest
from hyperframe.frame import ContinuationFrame, Frame, HeadersFrame

from gateway.api.grpc_native import frames
from gateway.api.grpc_native.headers import (
    OK_TRAILERS, RESPONSE_HEAD, HeadDecoder, HeaderError, _integer, _leaves_tables_alone, literal,
    metadata_fields, parse_timeout, percent_encode, request_head, status_fields, table_size_update,
)


def _decode(block: bytes) -> list[tuple[bytes, bytes]]:
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 24
    return decoder.decode(block, raw=True)


def _request(path: str = "/pkg.Svc/Method", **extra: str) -> list[tuple[str, str]]:
    return [(":method", "POST"), (":scheme", "http"), (":path", path), (":authority", "gw"),
            ("content-type", "application/grpc"), ("te", "trailers"), *extra.items()]


# -- HPACK integers and literals the server writes --

@pytest.mark.parametrize("value", [0, 1, 126, 127, 128, 254, 255, 256, 16383, 16384, 1 << 20, (1 << 28) + 12345])
@pytest.mark.parametrize("prefix_bits", [4, 5, 6, 7])
def test_integer_encoding_matches_rfc7541(value, prefix_bits):
    encoded = _integer(value, prefix_bits)
    # RFC 7541 5.1, decoded by hand: prefix, then 7-bit groups, least significant first.
    limit = (1 << prefix_bits) - 1
    first = encoded[0] & limit
    if first < limit:
        assert len(encoded) == 1 and first == value
        return
    total, shift = limit, 0
    for i, b in enumerate(encoded[1:], 1):
        total += (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            assert i == len(encoded) - 1, "continuation bit set on the last byte"
            break
    assert total == value
    assert encoded[0] & ~limit & 0xFF == 0  # the first-byte pattern bits are left to the caller


@pytest.mark.parametrize("name_len,value_len", [(1, 0), (126, 126), (127, 127), (128, 128), (300, 20000)])
def test_literal_decodes_with_hpack(name_len, value_len):
    name = b"x" * name_len
    value = bytes(range(32, 127)) * (value_len // 95 + 1)
    value = value[:value_len]
    block = literal(name, value) + literal(b"grpc-status", b"0")
    assert _decode(block) == [(name, value), (b"grpc-status", b"0")]


def test_literals_leave_the_peer_table_empty():
    decoder = hpack.Decoder()
    decoder.decode(RESPONSE_HEAD + literal(b"a", b"b") + OK_TRAILERS, raw=True)
    assert len(decoder.header_table.dynamic_entries) == 0  # "without indexing": no state on either side


@pytest.mark.parametrize("size", [0, 1, 30, 31, 1000, 4096])
def test_table_size_update_decodes_with_hpack(size):
    decoder = hpack.Decoder()
    assert decoder.decode(table_size_update(size) + RESPONSE_HEAD, raw=True)[0] == (b":status", b"200")
    assert decoder.header_table_size == size


def test_response_head_and_trailers():
    assert _decode(RESPONSE_HEAD) == [(b":status", b"200"), (b"content-type", b"application/grpc")]
    assert _decode(OK_TRAILERS) == [(b"grpc-status", b"0")]
    fields = _decode(status_fields(5, "model 'x' 100% gone\né", [("k", "v"), ("b-bin", b"\x00\xff\x01")]))
    assert fields[0] == (b"grpc-status", b"5")
    assert fields[1][0] == b"grpc-message"
    assert urllib.parse.unquote(fields[1][1].decode("ascii")) == "model 'x' 100% gone\né"
    assert fields[2] == (b"k", b"v")
    assert fields[3][0] == b"b-bin"
    raw = fields[3][1]
    assert b"=" not in raw and base64.b64decode(raw + b"=" * (-len(raw) % 4)) == b"\x00\xff\x01"


def test_metadata_field_names_are_lowercased():
    assert _decode(metadata_fields([("X-Trace", "abc"), ("Blob-Bin", "text as bytes")])) == [
        (b"x-trace", b"abc"), (b"blob-bin", base64.b64encode(b"text as bytes").rstrip(b"="))]


# -- grpc-message percent-encoding (gRPC PROTOCOL-HTTP2: "Status-Message") --

@pytest.mark.parametrize("message,expected", [
    ("plain text, ok", b"plain text, ok"),
    ("100%", b"100%25"),
    ("line\nbreak\ttab", b"line%0Abreak%09tab"),
    ("é", b"%C3%A9"),
    ("\x7f~ ", b"%7F~ "),
    ("", b""),
])
def test_percent_encode(message, expected):
    assert percent_encode(message) == expected
    assert urllib.parse.unquote(expected.decode("ascii")) == message
    assert all(0x20 <= b <= 0x7E for b in expected)


# -- grpc-timeout --

@pytest.mark.parametrize("value,seconds", [
    (b"1H", 3600.0), (b"2M", 120.0), (b"3S", 3.0), (b"4m", 0.004), (b"5u", 5e-6), (b"6n", 6e-9),
    (b"0S", 0.0), (b"99999999S", 99999999.0), (b"00000010m", 0.01),
])
def test_parse_timeout_units(value, seconds):
    assert parse_timeout(value) == pytest.approx(seconds, rel=1e-12, abs=0)


@pytest.mark.parametrize("value", [b"", b"S", b"1", b"10", b"1s", b"1h", b"1x", b"-1S", b"1.5S", b" 1S", b"1S ",
                                   b"123456789S", b"\xd9\xa1S", b"+1S"])
def test_parse_timeout_rejects_malformed(value):
    with pytest.raises(HeaderError) as err:
        parse_timeout(value)
    assert err.value.code == 13  # INTERNAL, as grpcio answers a malformed grpc-timeout


# -- request heads --

def _head(fields):
    return request_head([(k.encode(), v if isinstance(v, bytes) else v.encode()) for k, v in fields])


def test_request_head_reads_path_timeout_encoding_and_metadata():
    blob = b"\x00\x01\xfe\xff"
    head = _head(_request(**{"grpc-timeout": "250m", "grpc-encoding": "gzip", "grpc-accept-encoding": "gzip",
                             "x-route-key": "user-7", "blob-bin": base64.b64encode(blob).rstrip(b"=")}))
    assert head.error is None
    assert head.path == b"/pkg.Svc/Method"
    assert head.timeout_s == pytest.approx(0.25)
    assert head.encoding == b"gzip"
    # Transport headers and pseudo-headers are not the application's metadata; -bin values are decoded.
    assert head.metadata == (("x-route-key", "user-7"), ("blob-bin", blob))
    fields = _request(**{"grpc-timeout": "250m", "grpc-encoding": "gzip", "grpc-accept-encoding": "gzip",
                         "x-route-key": "user-7", "blob-bin": base64.b64encode(blob).rstrip(b"=").decode()})
    assert head.size == sum(len(k) + len(v) + 32 for k, v in fields)


def test_request_head_identity_encoding_and_no_timeout():
    head = _head(_request(**{"grpc-encoding": "identity"}))
    assert head.error is None and head.encoding == b"" and head.timeout_s is None


@pytest.mark.parametrize("change,code", [
    ({":method": "GET"}, 12),
    ({"content-type": "application/json"}, 3),
    ({"content-type": ""}, 3),
    ({"grpc-encoding": "snappy"}, 12),
    ({"grpc-timeout": "soon"}, 13),
])
def test_request_head_errors(change, code):
    fields = [(k, change.get(k, v)) for k, v in _request()]
    fields += [(k, v) for k, v in change.items() if k not in dict(fields)]
    head = _head(fields)
    assert head.error is not None and head.error.code == code


def test_content_type_with_subtype_is_accepted():
    head = _head([(k, "application/grpc+proto" if k == "content-type" else v) for k, v in _request()])
    assert head.error is None


# -- the cache of all-indexed header blocks --

class _CountingDecoder:
    """Wraps hpack.Decoder to count the blocks really decoded."""

    def __init__(self, inner: hpack.Decoder) -> None:
        self.inner = inner
        self.calls = 0

    def decode(self, block, raw=False):
        self.calls += 1
        return self.inner.decode(block, raw=raw)


def _decoder() -> tuple[HeadDecoder, _CountingDecoder]:
    heads = HeadDecoder(1 << 20)
    counting = _CountingDecoder(heads._decoder)
    heads._decoder = counting
    return heads, counting


def test_indexed_only_blocks_are_remembered_and_decode_correctly():
    heads, counting = _decoder()
    encoder = hpack.Encoder()
    fields = _request(**{"x-route-key": "k1"})
    first = encoder.encode(fields)  # literal fields with incremental indexing: the table grows
    again = encoder.encode(fields)  # now only references into the static and dynamic tables
    assert not _leaves_tables_alone(first)
    assert _leaves_tables_alone(again)
    assert first != again
    h1 = heads.decode(first)
    h2 = heads.decode(again)
    h3 = heads.decode(encoder.encode(fields))
    assert h1 == h2 == h3
    assert h3.path == b"/pkg.Svc/Method" and h3.metadata == (("x-route-key", "k1"),)
    assert counting.calls == 2  # the third block was the remembered one


def test_a_remembered_block_is_not_reused_after_the_table_changed():
    """The same indexed bytes mean another header once the dynamic table has changed."""
    heads, _ = _decoder()
    encoder = hpack.Encoder()
    a = [(":method", "POST"), (":path", "/svc/A"), ("content-type", "application/grpc")]
    b = [(":method", "POST"), ("content-type", "application/grpc"), (":path", "/svc/B")]
    heads.decode(encoder.encode(a))
    indexed_a = encoder.encode(a)
    assert heads.decode(indexed_a).path == b"/svc/A"
    heads.decode(encoder.encode(b))  # inserts /svc/B at index 62: the references shift
    indexed_b = encoder.encode(b)
    assert _leaves_tables_alone(indexed_b)
    assert indexed_b == indexed_a  # the very bytes remembered for /svc/A
    assert heads.decode(indexed_b).path == b"/svc/B"
    assert heads.decode(indexed_a).path == b"/svc/B"


def test_table_size_update_and_never_indexed_fields_are_not_remembered():
    heads, counting = _decoder()
    encoder = hpack.Encoder()
    fields = _request()
    heads.decode(encoder.encode(fields))
    heads.decode(encoder.encode(fields))
    encoder.header_table_size = 0  # the next block starts with a dynamic table size update (evicts all)
    shrunk = encoder.encode(fields)
    assert not _leaves_tables_alone(shrunk)
    assert heads.decode(shrunk).path == b"/pkg.Svc/Method"
    # Never-indexed and without-indexing literals leave the table alone: remembered too.
    # :method POST, :scheme http (static references), then authorization: secret never indexed (0x10).
    sensitive = b"\x83\x86\x10\x0dauthorization\x06secret"
    assert _leaves_tables_alone(sensitive)
    calls = counting.calls
    assert heads.decode(sensitive).metadata == (("authorization", "secret"),)
    assert heads.decode(sensitive).metadata == (("authorization", "secret"),)
    assert counting.calls == calls + 1


def test_literals_without_indexing_are_remembered():
    """nghttp2 (h2load) sends :path as a Huffman literal without indexing on every request."""
    heads, counting = _decoder()
    block = bytes.fromhex("049f60d54a5b0b510abe2dbaef64aa52d85a885dc5b3b98856341e42d192a94b6786"
                          "83860f0d03323838")  # then :method POST, :scheme http, content-length: 288
    assert _leaves_tables_alone(block)
    first = heads.decode(block)
    assert first.path == b"/inference.GRPCInferenceService/ModelInfer"
    assert heads.decode(block) == first and counting.calls == 1
    assert not _leaves_tables_alone(block[:-2])  # cut inside a string


def test_multi_byte_indexes_are_recognised():
    """References beyond index 126 take more than one byte (RFC 7541 5.1)."""
    heads, counting = _decoder()
    encoder = hpack.Encoder()
    fields = _request(**{f"x-h{i:03d}": f"v{i}" for i in range(90)})
    heads.decode(encoder.encode(fields))
    indexed = encoder.encode(fields)
    assert _leaves_tables_alone(indexed)
    assert any(b == 0xFF for b in indexed)  # some index continues in the next byte
    want = heads.decode(indexed)
    assert dict(want.metadata) == {f"x-h{i:03d}": f"v{i}" for i in range(90)}
    calls = counting.calls
    assert heads.decode(indexed) == want and counting.calls == calls


def test_remembered_blocks_are_bounded():
    heads, counting = _decoder()
    # Static-table references only: each path below is a distinct all-indexed block.
    static_blocks = [bytes((0x83, 0x86, idx)) for idx in range(0x80 | 1, 0x80 | 62)]  # :method POST, :scheme http, any
    for block in static_blocks:
        heads.decode(block)
    assert len(heads._remembered) <= 64
    assert counting.calls == len(static_blocks)


def test_malformed_block_raises_hpack_error():
    heads = HeadDecoder(1 << 20)
    with pytest.raises(hpack.HPACKError):
        heads.decode(b"\xff\xff\xff\xff\xff\x7f")  # an index far beyond both tables
    with pytest.raises(hpack.HPACKError):
        heads.decode(b"\x00\x85ab")  # a literal whose name is cut short


def test_header_list_size_limit():
    heads = HeadDecoder(200)
    encoder = hpack.Encoder()
    with pytest.raises(hpack.HPACKError):
        heads.decode(encoder.encode(_request(**{"x-big": "v" * 500})))


# -- frames.header_frames: CONTINUATION when the peer takes smaller frames --

def _parse(data: bytes) -> list[Frame]:
    out = []
    while data:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


@pytest.mark.parametrize("size,max_frame,count", [(10, 16384, 1), (16384, 16384, 1), (16385, 16384, 2), (50000, 16384, 4)])
def test_header_frames_split_into_continuations(size, max_frame, count):
    block = bytes(i % 251 for i in range(size))
    parts = _parse(frames.header_frames(7, block, True, max_frame))
    assert len(parts) == count
    assert isinstance(parts[0], HeadersFrame) and all(isinstance(p, ContinuationFrame) for p in parts[1:])
    assert all(p.stream_id == 7 and len(p.data) <= max_frame for p in parts)
    assert "END_STREAM" in parts[0].flags
    assert ["END_HEADERS" in p.flags for p in parts] == [False] * (count - 1) + [True]
    assert b"".join(p.data for p in parts) == block
