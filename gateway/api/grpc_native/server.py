"""A gRPC server on the event loop: grpcio-style servicers, served over our own HTTP/2 transport.

Servicers register as they would on grpc.aio (`add_XServicer_to_server(servicer, server)`),
so the same handlers run on either transport. The socket is bound when the server is built
(the port is known at once, 0 picks one) and served from `start()`.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass

from gateway.api.grpc_native.budgets import ByteBudget
from gateway.api.grpc_native.call import Call, open_call
from gateway.api.grpc_native.engine import Http2Connection
from gateway.api.grpc_native.headers import RequestHead
from gateway.api.grpc_native.message_stream import MessageStreamHandler
from gateway.api.grpc_native.options import TransportOptions

__all__ = ["NativeGrpcServer", "TransportOptions"]


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple = ()


def _listening_socket(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Every worker of `gateway serve --workers N` listens on the same port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class NativeGrpcServer:
    def __init__(self, host: str, port: int, options: TransportOptions, ssl_context: ssl.SSLContext | None = None) -> None:
        self.options = options
        self._ssl = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["h2"])  # gRPC clients insist on h2 by ALPN
        self._sock = _listening_socket(host, port)
        self.port = self._sock.getsockname()[1]
        self._by_path: dict[bytes, object] = {}
        self._generic: list = []
        self.connections: set[Http2Connection] = set()
        self.active_calls = 0
        # Process-wide byte budgets (one server per process): answers the peers do not take, and
        # request messages not yet whole or not yet read by their handlers.
        self.pending = ByteBudget(options.max_pending_bytes_total)
        self.request_buffer = ByteBudget(options.max_buffered_request_bytes_total)
        self._idle: asyncio.Event | None = None
        self._server: asyncio.base_events.Server | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    @property
    def running_loop(self) -> asyncio.AbstractEventLoop:
        """The loop ``start`` ran on; connections exist only after it."""
        if self.loop is None:
            raise RuntimeError("the gRPC server has not started")
        return self.loop

    # -- the grpcio registration interface used by generated add_*_to_server functions --
    def add_generic_rpc_handlers(self, handlers) -> None:
        self._generic.extend(handlers)

    def add_registered_method_handlers(self, service: str, method_handlers: dict) -> None:
        for method, handler in method_handlers.items():
            self._by_path[f"/{service}/{method}".encode()] = handler

    def add_message_stream(self, service: str, method: str, handler: MessageStreamHandler) -> None:
        """Serves this streaming method message by message (message_stream.py) instead of through
        the grpcio-style handler registered for it."""
        self._by_path[f"/{service}/{method}".encode()] = handler

    def handler(self, path: bytes):
        found = self._by_path.get(path)
        if found is None and self._generic:
            details = _CallDetails(path.decode("latin-1"))
            for generic in self._generic:
                found = generic.service(details)
                if found is not None:
                    self._by_path[path] = found
                    break
        return found

    def open_stream(self, connection: Http2Connection, stream_id: int, head: RequestHead, end_stream: bool) -> Call:
        return open_call(connection, stream_id, head, end_stream)

    # -- calls in progress, for max_concurrent_calls and the graceful stop --
    def call_started(self) -> bool:
        limit = self.options.max_concurrent_calls
        if limit and self.active_calls >= limit:
            return False
        self.active_calls += 1
        return True

    def call_ended(self) -> None:
        self.active_calls -= 1
        if self.active_calls == 0 and self._idle is not None:
            self._idle.set()

    # -- lifecycle, as grpc.aio.Server --
    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(
            lambda: Http2Connection(self), sock=self._sock, ssl=self._ssl,
            ssl_handshake_timeout=self.options.tls_handshake_timeout_s if self._ssl is not None else None,
        )

    async def stop(self, grace: float | None) -> None:
        if self._server is None:
            return
        self._server.close()
        self._idle = asyncio.Event()
        if self.active_calls == 0:
            self._idle.set()
        for connection in list(self.connections):
            connection.go_away()
        if grace:
            try:
                await asyncio.wait_for(self._idle.wait(), grace)
            except asyncio.TimeoutError:
                pass  # what is still running is cancelled below
        for connection in list(self.connections):
            connection.abort()
        await self._server.wait_closed()

    async def wait_for_termination(self, timeout: float | None = None) -> bool:
        if self._server is None:
            return True
        try:
            await asyncio.wait_for(self._server.wait_closed(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
