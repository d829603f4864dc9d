"""What the Triton protocol offers that this server does not, and why: one text for gRPC and HTTP.

Triton answers a feature it was built without with UNSUPPORTED (gRPC UNIMPLEMENTED, HTTP 501);
so do we, with a message a client's user can act on instead of an UNKNOWN or a bare 404.
"""

from __future__ import annotations

CUDA_SHARED_MEMORY = (
    "CUDA shared memory is not supported by this server: it hands tensors to its models through host "
    "memory only (no CUDA IPC); send tensors in the request body or use system shared memory"
)
TRACE_SETTINGS = (
    "trace settings are not supported by this server: tracing is OpenTelemetry over OTLP, set at start "
    "by the 'tracing' and 'trace_sample_ratio' settings and the standard OTEL_* variables"
)
LOG_SETTINGS = (
    "log settings cannot be read or changed at run time on this server: set 'log_level', 'log_levels' "
    "and 'log_format' in the server settings (gateway.yaml, flags or GATEWAY_* variables) and restart"
)


def not_implemented(rpc: str) -> str:
    return f"{rpc} is not implemented by this server"
