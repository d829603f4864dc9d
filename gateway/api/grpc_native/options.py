"""The native transport's limits and timeouts, validated once when the server is built."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class TransportOptions:
    max_message_bytes: int = 64 << 20
    max_header_bytes: int = 8190  # decoded request metadata, as HTTP/2 counts it (SETTINGS_MAX_HEADER_LIST_SIZE)
    max_concurrent_calls: int = 0  # process-wide calls in progress; 0: no limit; beyond it RESOURCE_EXHAUSTED at once
    max_concurrent_calls_words: str = ""  # how a refusal names that limit ("" : "max_concurrent_requests N")
    # Per connection, advertised in SETTINGS (grpc clients queue calls beyond it); beyond it REFUSED_STREAM.
    # It also bounds what one connection can have answered but not read (streams x answer size).
    max_concurrent_streams: int = 128
    header_timeout_s: float = 10.0  # preface and first HEADERS of a new connection; any one header block
    idle_timeout_s: float = 120.0  # no call in progress (or writes stalled this long): GOAWAY, then close
    tls_handshake_timeout_s: float = 10.0
    # Peer-driven work, as token buckets per connection (burst, then a steady rate); beyond: ENHANCE_YOUR_CALM.
    max_resets_burst: int = 1000  # RST_STREAM frames received and streams refused
    max_resets_per_s: float = 200.0
    max_control_burst: int = 10_000  # PING, SETTINGS, WINDOW_UPDATE, PRIORITY, empty DATA, unknown frames
    max_control_per_s: float = 1000.0
    max_continuations: int = 16  # CONTINUATION frames in one header block
    max_settings_entries: int = 32  # entries in one SETTINGS frame
    # Bytes held for peers: answers waiting for their flow-control window, and unfinished request messages.
    # Beyond the per-connection figure new streams are refused and answers end RESOURCE_EXHAUSTED;
    # a connection holding nothing may still queue one answer of any size (within the total).
    max_pending_bytes_per_connection: int = 64 << 20
    max_pending_bytes_total: int = 256 << 20
    max_buffered_request_bytes_total: int = 256 << 20  # per connection: max(max_message_bytes, 32 MiB)

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.name == "max_concurrent_calls_words":
                if not isinstance(value, str):
                    raise ValueError(f"TransportOptions.{spec.name}: expected a string, got {value!r}")
                continue
            least = 0 if spec.name == "max_concurrent_calls" else 1
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < least:
                raise ValueError(f"TransportOptions.{spec.name}: expected a number >= {least}, got {value!r}")
        if self.max_header_bytes > 1 << 24:
            raise ValueError(f"TransportOptions.max_header_bytes: at most {1 << 24}, got {self.max_header_bytes}")

    @property
    def max_header_block_bytes(self) -> int:
        """Bytes of one header block, compressed or decoded. Heads above max_header_bytes but within
        this are still decoded (the HPACK tables stay in step) and refused per call; beyond it the
        connection is closed, so a peer cannot park big unfinished blocks on many connections."""
        return max(64 << 10, 4 * self.max_header_bytes)

    @property
    def max_buffered_request_bytes_per_connection(self) -> int:
        return max(self.max_message_bytes + 5, 32 << 20)
