"""The servicer context handed to grpcio-style handlers when the native transport serves them.

It offers what grpc.aio's ServicerContext offers to a handler (abort, metadata, deadline,
codes, writes and reads for streams), so the same servicers run on either transport.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import grpc

if TYPE_CHECKING:
    from gateway.api.grpc_native.call import Call


class AbortError(Exception):
    """Raised by ServicerContext.abort; the transport answers with the recorded status."""


class ServicerContext:
    __slots__ = ("_call", "_code", "_details", "_trailing", "_done_callbacks")

    def __init__(self, call: Call) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details = ""
        self._trailing: tuple = ()
        self._done_callbacks: list | None = None

    # -- what the client sent --
    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._call.head.metadata

    def time_remaining(self) -> float | None:
        deadline = self._call.deadline_s
        if deadline is None:
            return None
        return max(0.0, deadline - time.monotonic())

    def peer(self) -> str:
        return self._call.connection.peer

    def peer_identities(self):
        return None

    def peer_identity_key(self):
        return None

    def auth_context(self) -> dict:
        return {}

    # -- the answer --
    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata=()) -> None:
        if code == grpc.StatusCode.OK:
            raise ValueError("abort() needs a status other than OK")
        self._code, self._details = code, details or ""
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise AbortError(details)

    async def abort_with_status(self, status) -> None:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata) -> None:
        self._trailing = tuple(metadata)

    def trailing_metadata(self) -> tuple:
        return self._trailing

    async def send_initial_metadata(self, metadata) -> None:
        self._call.send_head(metadata)

    def set_compression(self, compression) -> None:  # answers are sent uncompressed
        pass

    def disable_next_message_compression(self) -> None:
        pass

    # -- streams --
    async def write(self, message) -> None:
        await self._call.write(message)

    async def read(self):
        return await self._call.read()

    # -- state --
    def cancelled(self) -> bool:
        return self._call.cancelled

    def done(self) -> bool:
        return self._call.finished

    def add_done_callback(self, callback) -> None:
        if self._done_callbacks is None:
            self._done_callbacks = []
        self._done_callbacks.append(callback)

    def run_done_callbacks(self) -> None:
        for callback in self._done_callbacks or ():
            callback(self)
