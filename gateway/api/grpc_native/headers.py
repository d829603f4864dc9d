"""gRPC request heads from HPACK header blocks, and the few header blocks the server sends.

Decoding uses the `hpack` library. A steady client re-sends the same request head as
references into the HPACK tables and literals it does not index, so a block that leaves the
dynamic table as it is is remembered and decoded again by one dictionary lookup; any other
block may change the table and forgets what was remembered.
"""

from __future__ import annotations

import base64
import urllib.parse
from dataclasses import dataclass
from typing import cast

import hpack

from gateway.api.grpc_native.status import Status

# Request headers that are the transport's business, not the application's metadata (as grpcio).
_TRANSPORT_HEADERS = frozenset((
    b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"grpc-accept-encoding",
))
_TIMEOUT_UNIT_S = {b"H": 3600.0, b"M": 60.0, b"S": 1.0, b"m": 1e-3, b"u": 1e-6, b"n": 1e-9}
_REMEMBERED_BLOCKS = 64
MAX_STATUS_MESSAGE = 1024  # grpc-message bytes once percent-encoded: clients refuse trailers above ~8 KiB
# Printable ASCII but '%' stays as it is in grpc-message; everything else is percent-encoded.
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


class HeaderError(Exception):
    """A request head the server cannot serve; carries the gRPC status code number to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class RequestHead:
    path: bytes
    timeout_s: float | None  # relative, from grpc-timeout
    encoding: bytes  # grpc-encoding; b"" = identity
    metadata: tuple[tuple[str, str | bytes], ...]
    size: int  # header list size as HTTP/2 counts it (name + value + 32 per field)
    error: HeaderError | None = None


def parse_timeout(value: bytes) -> float:
    """grpc-timeout: up to 8 digits and a unit (H M S m u n)."""
    unit = _TIMEOUT_UNIT_S.get(value[-1:])
    digits = value[:-1]
    if unit is None or not digits.isdigit() or len(digits) > 8:
        raise HeaderError(Status.INTERNAL, f"malformed grpc-timeout header {value!r}")
    return int(digits) * unit


def _metadata_value(name: bytes, value: bytes) -> str | bytes:
    if name.endswith(b"-bin"):
        return base64.b64decode(value + b"=" * (-len(value) % 4))
    return value.decode("latin-1")


def request_head(fields: list[tuple[bytes, bytes]]) -> RequestHead:
    path = method = content_type = b""
    timeout = None
    encoding = b""
    metadata = []
    size = 0
    error = None
    for name, value in fields:
        size += len(name) + len(value) + 32
        if name[:1] == b":":
            if name == b":path":
                path = value
            elif name == b":method":
                method = value
            continue
        if name == b"content-type":
            content_type = value
        elif name == b"grpc-timeout":
            try:
                timeout = parse_timeout(value)
            except HeaderError as exc:
                error = exc
        elif name == b"grpc-encoding":
            encoding = b"" if value == b"identity" else value
        if name not in _TRANSPORT_HEADERS:
            try:
                metadata.append((name.decode("ascii"), _metadata_value(name, value)))
            except (ValueError, UnicodeDecodeError):
                error = HeaderError(Status.INTERNAL, f"metadata {name!r} is not valid")
    if method != b"POST":
        error = HeaderError(Status.UNIMPLEMENTED, f"gRPC needs POST, not {method.decode('latin-1')!r}")
    elif not content_type.startswith(b"application/grpc"):
        error = HeaderError(Status.INVALID_ARGUMENT, f"content-type {content_type.decode('latin-1')!r} is not application/grpc")
    elif encoding not in (b"", b"gzip", b"deflate"):
        error = HeaderError(Status.UNIMPLEMENTED, f"grpc-encoding {encoding.decode('latin-1')!r} is not supported (identity, gzip, deflate)")
    return RequestHead(path, timeout, encoding, tuple(metadata), size, error)


def _integer_end(block: bytes, i: int, prefix: int) -> tuple[int, int]:
    """(value, index after it) of the HPACK integer at ``i`` with a ``prefix``-bit mask."""
    value = block[i] & prefix
    i += 1
    if value == prefix:
        shift = 0
        while True:
            b = block[i]
            i += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
    return value, i


def _leaves_tables_alone(block: bytes) -> bool:
    """True when no field of the block adds to the dynamic table or resizes it.

    Such a block (indexed fields, literals without indexing or never indexed) decodes the
    same way for as long as the table is unchanged, so it can be remembered.
    """
    i, n = 0, len(block)
    try:
        while i < n:
            b = block[i]
            if b & 0x80:  # indexed field
                _, i = _integer_end(block, i, 0x7F)
                continue
            if b & 0x40 or b & 0x20:  # literal with incremental indexing, or a table size update
                return False
            name_index, i = _integer_end(block, i, 0x0F)
            if name_index == 0:  # the name is a string too
                length, i = _integer_end(block, i, 0x7F)
                i += length
            length, i = _integer_end(block, i, 0x7F)
            i += length
    except IndexError:
        return False
    return i == n


class HeadDecoder:
    """One per connection: HPACK state is per connection."""

    __slots__ = ("_decoder", "_remembered")

    def __init__(self, max_header_list_size: int) -> None:
        self._decoder = hpack.Decoder()
        self._decoder.max_header_list_size = max_header_list_size
        self._remembered: dict[bytes, RequestHead] = {}

    def decode(self, block: bytes) -> RequestHead:
        head = self._remembered.get(block)
        if head is not None:
            return head
        # raw=True: names and values stay bytes. hpack.HPACKError on a malformed block.
        fields = cast(list[tuple[bytes, bytes]], self._decoder.decode(block, raw=True))
        head = request_head(fields)
        if _leaves_tables_alone(block):
            if len(self._remembered) >= _REMEMBERED_BLOCKS:
                self._remembered.clear()
            self._remembered[block] = head
        else:
            self._remembered.clear()
        return head


# -- what the server sends: literal fields without indexing, so the server keeps no HPACK state --

def _integer(value: int, prefix_bits: int, first: int = 0) -> bytes:
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def literal(name: bytes, value: bytes) -> bytes:
    return b"\x00" + _integer(len(name), 7) + name + _integer(len(value), 7) + value


def table_size_update(size: int) -> bytes:
    """A dynamic table size update (RFC 7541 6.3): owed after the peer lowers SETTINGS_HEADER_TABLE_SIZE."""
    return _integer(size, 5, 0x20)


def percent_encode(message: str) -> bytes:
    """grpc-message: UTF-8, with bytes outside printable ASCII and '%' percent-encoded."""
    return urllib.parse.quote_from_bytes(message.encode("utf-8"), safe=_MESSAGE_SAFE).encode("ascii")


def _bounded_message(message: str) -> bytes:
    """The encoded message, cut to MAX_STATUS_MESSAGE bytes (never inside a %XX escape)."""
    # No character encodes to more than 12 bytes: cutting the text first bounds the work.
    text = message[:MAX_STATUS_MESSAGE]
    encoded = percent_encode(text)
    if len(encoded) <= MAX_STATUS_MESSAGE and len(text) == len(message):
        return encoded
    cut = encoded[:MAX_STATUS_MESSAGE - 3]
    escape = cut.rfind(b"%", len(cut) - 2)
    if escape != -1:
        cut = cut[:escape]
    return cut + b"..."


def metadata_fields(metadata) -> bytes:
    out = bytearray()
    for key, value in metadata or ():
        name = key.lower().encode("ascii")
        if name.endswith(b"-bin"):
            raw = value if isinstance(value, bytes) else str(value).encode()
            encoded = base64.b64encode(raw).rstrip(b"=")
        else:
            encoded = value.encode("latin-1") if isinstance(value, str) else bytes(value)
        out += literal(name, encoded)
    return bytes(out)


STATUS_200 = b"\x88"  # ":status: 200", index 8 of the static table
RESPONSE_HEAD = STATUS_200 + literal(b"content-type", b"application/grpc")
OK_TRAILERS = literal(b"grpc-status", b"0")


def status_fields(code: int, message: str, trailing_metadata=()) -> bytes:
    block = literal(b"grpc-status", b"%d" % code)
    if message:
        block += literal(b"grpc-message", _bounded_message(message))
    if trailing_metadata:
        block += metadata_fields(trailing_metadata)
    return block
