"""The HTTP/1 connections under aiohttp: how long a peer may take, and what a malformed request costs.

aiohttp bounds an idle keep-alive connection (``keepalive_timeout``, also armed when a
connection opens) but not the arrival of a request head: a peer sending one byte a second
would hold its connection (and a file descriptor) for as long as the idle timeout allows,
every byte counting as activity. Here a request head must be complete ``header_timeout_s``
after the connection opened, or after its first byte arrived on an idle connection; the
TLS handshake is bounded by the event loop's own ``ssl_handshake_timeout``.

A malformed request (a NUL in a header, a garbage request line) answers 400 with a JSON
body and costs at most one log line, rate limited; aiohttp's own handling logs an
11-line traceback for each.
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from gateway.api.http_codec import encode_error

_log = logging.getLogger(__name__)
# One line per malformed request; rate-limited by the log set-up (monitoring.logs).
_bad_request = logging.getLogger("gateway.http.bad_request")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_REASON = 160


def _one_line(exc: HttpProcessingError) -> str:
    """aiohttp's parser messages span lines and echo the offending bytes: one short, printable line."""
    text = " ".join(str(exc.message or type(exc).__name__).split())
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text).removesuffix(" ^")  # aiohttp's column marker
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON] + "..."


class TimedRequestHandler(RequestHandler):
    """aiohttp's per-connection protocol with a deadline on each request head."""

    __slots__ = ("_header_timeout_s", "_header_handle")

    def __init__(self, manager, *, header_timeout_s: float, **kwargs) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout_s = header_timeout_s
        self._header_handle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        heads = self._request_count  # aiohttp counts each request head parsed (or refused)
        super().data_received(data)
        if self._request_count != heads:
            self._disarm_header_timer()
        elif data and self._header_handle is None and self._idle():
            self._arm_header_timer()  # the first bytes of the next request on a kept-alive connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def _idle(self) -> bool:
        """Waiting for the next request: not reading a body, not handling a request."""
        waiter = self._waiter
        return waiter is not None and not waiter.done() and not self._messages

    def _arm_header_timer(self) -> None:
        self._header_handle = self._loop.call_later(self._header_timeout_s, self._header_timed_out)

    def _disarm_header_timer(self) -> None:
        if self._header_handle is not None:
            self._header_handle.cancel()
            self._header_handle = None

    def _header_timed_out(self) -> None:
        self._header_handle = None
        if self.transport is None or self._force_close:
            return
        _log.debug("closed a connection from %s: no complete request head within header_timeout_s %.3g",
                   self.peername, self._header_timeout_s)
        self.force_close()

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        reason = _one_line(exc)
        _bad_request.warning("bad HTTP request from %s: %s", request.remote, reason)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was sent already: the connection is dropped")
        resp = web.Response(status=status, body=encode_error(f"bad HTTP request: {reason}"),
                            content_type="application/json")
        resp.force_close()
        return resp


class GatewaySite(web.TCPSite):
    """A TCP site whose connections run :class:`TimedRequestHandler`, with a TLS handshake deadline."""

    __slots__ = ("_header_timeout_s", "_tls_handshake_timeout_s")

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, header_timeout_s: float,
                 tls_handshake_timeout_s: float, ssl_context: ssl.SSLContext | None = None,
                 reuse_port: bool = True, backlog: int = 1024) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_port=reuse_port, backlog=backlog)
        self._header_timeout_s = header_timeout_s
        self._tls_handshake_timeout_s = tls_handshake_timeout_s

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; TCPSite.start would create its own server
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        # The handler gets the options the runner gave aiohttp's Server (limits, keep-alive,
        # access log), as Server.__call__ would pass them.
        options = dict(server._kwargs)

        def protocol() -> TimedRequestHandler:
            return TimedRequestHandler(server, loop=loop, header_timeout_s=self._header_timeout_s, **options)

        self._server = await loop.create_server(
            protocol, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=self._tls_handshake_timeout_s if self._ssl_context else None,
        )
        self._bound_port = self._server.sockets[0].getsockname()[1] if self._server.sockets else self._port

    @property
    def port(self) -> int:
        """The port listened on: the kernel's choice when 0 was asked."""
        if self._bound_port is None:
            raise RuntimeError("the HTTP site has not started")
        return self._bound_port
