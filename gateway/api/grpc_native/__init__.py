"""The native gRPC transport: HTTP/2 framing and gRPC calls on the event loop, without grpc.aio."""

from gateway.api.grpc_native.server import NativeGrpcServer, TransportOptions

__all__ = ["NativeGrpcServer", "TransportOptions"]
