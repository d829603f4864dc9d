"""Domain types passed between the wire layers, the service and the scheduler.

Tensors are plain numpy arrays (BYTES as object arrays of ``bytes``). The
wire decoders build these without copying where the wire allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Scalar request/response parameter values, as the v2 protocol allows.
ParamValue = bool | int | float | str


@dataclass(slots=True)
class RequestedOutput:
    name: str
    # Per-output parameters, e.g. ``binary_data`` for the HTTP binary extension.
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(slots=True)
class TraceRecord:
    """Monotonic-clock stamps (ns) of a traced request's hops, turned into spans when it ends.

    Only traced requests carry one, so an untraced request pays one ``is None``
    test per hop. The stages that own each hop fill it in; monitoring reads it.
    """

    enqueue_ns: int = 0
    dispatch_ns: int = 0
    done_ns: int = 0
    batch_rows: int = 0
    batch_requests: int = 0
    cache_start_ns: int = 0
    cache_end_ns: int = 0
    cache_hit: bool = False

    def batched(self, enqueue_ns: int, dispatch_ns: int, done_ns: int, rows: int, requests: int) -> None:
        self.enqueue_ns, self.dispatch_ns, self.done_ns = enqueue_ns, dispatch_ns, done_ns
        self.batch_rows, self.batch_requests = rows, requests

    def cache_lookup(self, start_ns: int, end_ns: int, hit: bool) -> None:
        """Hook for the response cache: stamp the lookup so it shows as a span."""
        self.cache_start_ns, self.cache_end_ns, self.cache_hit = start_ns, end_ns, hit


@dataclass(slots=True)
class InferRequest:
    model: str
    # "" means "the version the model's policy serves by default".
    version: str
    inputs: dict[str, np.ndarray]
    # The v2 datatype each input was sent as (keeps BYTES vs. UINT8 etc. exact).
    datatypes: dict[str, str]
    # None: every output of the model.
    outputs: list[RequestedOutput] | None = None
    id: str = ""
    parameters: dict[str, ParamValue] = field(default_factory=dict)
    # Absolute deadline on the monotonic clock (ns); 0 means none.
    deadline_ns: int = 0
    # Set only when this request is traced; the scheduler stamps its hops into it.
    trace: TraceRecord | None = None
    # Sticky routing key from the transport (HTTP header / gRPC metadata x-route-key); "" = none.
    route_key: str = ""


@dataclass(slots=True)
class InferResponse:
    model: str
    version: str
    outputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str = ""
    parameters: dict[str, ParamValue] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """A model input or output as the model declares it (-1 = any size)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ModelMetadata:
    name: str
    versions: tuple[str, ...]
    platform: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int


def request_parameter(request: InferRequest, name: str, default: Any = None) -> Any:
    return request.parameters.get(name, default)
