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
