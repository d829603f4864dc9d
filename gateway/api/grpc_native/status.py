"""gRPC status codes: the one spelling the native transport uses (numbers as on the wire)."""

from __future__ import annotations

from enum import IntEnum

import grpc


class Status(IntEnum):
    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16

    @classmethod
    def of(cls, code: grpc.StatusCode | int | None) -> Status:
        """The status a handler recorded (grpc.StatusCode, a number, or None for OK)."""
        if code is None:
            return cls.OK
        if isinstance(code, grpc.StatusCode):
            return cls(code.value[0])
        return cls(int(code))
