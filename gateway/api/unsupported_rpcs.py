"""GRPCInferenceService RPCs this server does not offer: UNIMPLEMENTED with the reason.

grpcio's generated servicer base answers an RPC nobody overrode by raising
NotImplementedError, which reaches the client as UNKNOWN "Unexpected <class ...>". Clients
(tritonclient, perf_analyzer) and their users need UNIMPLEMENTED and a reason, as Triton
sends for a feature it was built without.
"""

from __future__ import annotations

import grpc

from gateway._proto import grpc_service_pb2 as pb
from gateway._proto import grpc_service_pb2_grpc as pb_grpc
from gateway.api.unsupported import CUDA_SHARED_MEMORY, LOG_SETTINGS, TRACE_SETTINGS, not_implemented

_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _unimplemented(message: str):
    async def rpc(self, request, context):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, message)

    return rpc


class UnsupportedRpcs:
    """Mixed in before the generated base: the RPCs we decline, and a net under any other left out."""

    CudaSharedMemoryStatus = _unimplemented(CUDA_SHARED_MEMORY)
    CudaSharedMemoryRegister = _unimplemented(CUDA_SHARED_MEMORY)
    CudaSharedMemoryUnregister = _unimplemented(CUDA_SHARED_MEMORY)
    TraceSetting = _unimplemented(TRACE_SETTINGS)
    LogSettings = _unimplemented(LOG_SETTINGS)

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        base = pb_grpc.GRPCInferenceServiceServicer
        for method in _SERVICE.methods:
            # Unary RPCs only: a streaming handler must be a generator, and every streaming RPC
            # of the service is implemented.
            if method.client_streaming or method.server_streaming:
                continue
            if getattr(cls, method.name, None) is getattr(base, method.name, None):
                setattr(cls, method.name, _unimplemented(not_implemented(f"{_SERVICE.full_name}/{method.name}")))
