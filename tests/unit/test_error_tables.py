"""Every error code has exactly one gRPC status and one HTTP status."""

from gateway.api.errors import GRPC_STATUS, HTTP_STATUS
from gateway.core.errors import ErrorCode


def test_every_error_code_is_in_both_tables():
    assert set(GRPC_STATUS) == set(ErrorCode)
    assert set(HTTP_STATUS) == set(ErrorCode)
    assert HTTP_STATUS[ErrorCode.UNAUTHENTICATED] == 401 and HTTP_STATUS[ErrorCode.PERMISSION_DENIED] == 403


def test_no_error_class_shadows_a_builtin_or_asyncio_name():
    # An ``except CancelledError`` must mean asyncio's (task cancellation), never a request error.
    import asyncio
    import builtins

    import gateway.core.errors as errors

    public = {name for name in vars(errors) if not name.startswith("_")}
    assert not public & (set(dir(builtins)) | set(asyncio.__all__))
    assert HTTP_STATUS[errors.RequestCancelledError.code] == 499
