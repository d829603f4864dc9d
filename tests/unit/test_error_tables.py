"""Every error code has exactly one gRPC status and one HTTP status."""

from gateway.api.errors import GRPC_STATUS, HTTP_STATUS
from gateway.core.errors import ErrorCode


def test_every_error_code_is_in_both_tables():
    assert set(GRPC_STATUS) == set(ErrorCode)
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert HTTP_STATUS[ErrorCode.UNAUTHENTICATED] == 401 and HTTP_STATUS[ErrorCode.PERMISSION_DENIED] == 403
