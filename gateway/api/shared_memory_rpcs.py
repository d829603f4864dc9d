"""gRPC RPCs of Triton's system shared-memory extension, mixed into the v2 servicer.

The servicer that mixes this in sets ``self.shared_memory`` (the process's registry, shared with HTTP)
and offers ``_check_api_key(context)``: with API keys set, regions are an inference client's
business and need a key, as infer does.
"""

from __future__ import annotations

from gateway._proto import grpc_service_pb2 as pb
from gateway.api.errors import GRPC_STATUS, classify
from gateway.core.errors import GatewayError


async def _abort(context, exc: GatewayError):
    code, message = classify(exc)
    await context.abort(GRPC_STATUS[code], message)


class SharedMemoryRpcs:
    async def SystemSharedMemoryStatus(self, request, context):
        try:
            self._check_api_key(context)
            regions = self.shared_memory.status(request.name)
        except GatewayError as exc:
            return await _abort(context, exc)
        response = pb.SystemSharedMemoryStatusResponse()
        for region in regions:
            response.regions[region["name"]].CopyFrom(pb.SystemSharedMemoryStatusResponse.RegionStatus(**region))
        return response

    async def SystemSharedMemoryRegister(self, request, context):
        try:
            self._check_api_key(context)
            self.shared_memory.register(request.name, request.key, request.offset, request.byte_size)
        except GatewayError as exc:
            return await _abort(context, exc)
        return pb.SystemSharedMemoryRegisterResponse()

    async def SystemSharedMemoryUnregister(self, request, context):
        try:
            self._check_api_key(context)
            self.shared_memory.unregister(request.name)
        except GatewayError as exc:
            return await _abort(context, exc)
        return pb.SystemSharedMemoryUnregisterResponse()
