"""One policy for the parameters of a KServe v2 infer request, whichever protocol carried it.

Both codecs (``http_codec``, ``grpc_codec``) and both servers call these functions, so the same
parameters get the same outcome (and the same message) over HTTP and gRPC:

=========  ==============================  ==============  ===========================================
where      parameter                       value           outcome
=========  ==============================  ==============  ===========================================
request    ``priority``                    int >= 0        kept: the scheduler's priority level
request    ``timeout``                     int >= 0 (µs)   kept: may shorten the model's queue timeout
request    any other                       scalar          kept in ``InferRequest.parameters``
input      ``shared_memory_region``        string          data read from that registered region
input      ``shared_memory_byte_size``     int >= 0        required with a region
input      ``shared_memory_offset``        int >= 0        optional, default 0
input      any other                       scalar          ignored
output     ``classification``              int >= 1        top-k ``"score:index[:label]"`` BYTES
output     ``shared_memory_*``             as for inputs   written into the region; the response names the
                                                           output (datatype, shape) without data
output     any other                       scalar          kept in ``RequestedOutput.parameters``
=========  ==============================  ==============  ===========================================

Only one protocol's wire knows the binary tensor extension: ``binary_data_output`` (request),
``binary_data_size`` (input) and ``binary_data`` (output) are read by the HTTP codec; over gRPC
they are ordinary unknown parameters. A value of the wrong type for a known parameter is an
INVALID_ARGUMENT naming the tensor and the parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np

from gateway.api.classification import top_k
from gateway.api.shared_memory import OutputWindow, SharedMemoryRegistry, ShmRef
from gateway.core.errors import InvalidInputError, PermissionDeniedError
from gateway.core.types import InferResponse, ParamValue, RequestedOutput

SHM_REGION = "shared_memory_region"
SHM_BYTE_SIZE = "shared_memory_byte_size"
SHM_OFFSET = "shared_memory_offset"
CLASSIFICATION = "classification"
_SHM_PARAMS = (SHM_REGION, SHM_BYTE_SIZE, SHM_OFFSET)


@dataclass(frozen=True, slots=True)
class OutputPlan:
    """What to do with one requested output after inference."""

    name: str
    classes: int = 0  # top-k classification; 0 = the tensor itself
    shm: ShmRef | None = None
    # The region window ``shm`` names, taken when the request is decoded (``output_plans`` with a registry).
    target: OutputWindow | None = None


def _non_negative_int(value: ParamValue, where: str, key: str) -> int:
    if type(value) is not int or value < 0:
        raise InvalidInputError(f"{where}: parameter '{key}' must be a non-negative integer, got {value!r}")
    return value


def check_request_parameters(params: Mapping[str, ParamValue]) -> None:
    for key in ("priority", "timeout"):
        value = params.get(key)
        if value is not None:
            _non_negative_int(value, "the request", key)


def shm_ref(params: Mapping[str, ParamValue], where: str) -> ShmRef | None:
    """The tensor's shared-memory placement, or None when it names no region."""
    if not params or not any(key in params for key in _SHM_PARAMS):
        return None
    region = params.get(SHM_REGION)
    if region is None or SHM_BYTE_SIZE not in params:
        missing = SHM_REGION if region is None else SHM_BYTE_SIZE
        raise InvalidInputError(f"{where}: parameter '{missing}' is required with the other shared_memory_* parameters")
    if not isinstance(region, str) or not region:
        raise InvalidInputError(f"{where}: parameter '{SHM_REGION}' must be a non-empty string, got {region!r}")
    size = _non_negative_int(params[SHM_BYTE_SIZE], where, SHM_BYTE_SIZE)
    offset = _non_negative_int(params.get(SHM_OFFSET, 0), where, SHM_OFFSET)
    return ShmRef(region, size, offset)


def input_shm_ref(name: str, params: Mapping[str, ParamValue]) -> ShmRef | None:
    if not params:  # the hot path: an input with no parameters at all
        return None
    return shm_ref(params, f"input '{name}'")


def read_input(
    registry: SharedMemoryRegistry | None, ref: ShmRef, name: str, datatype: str, shape: tuple[int, ...]
) -> np.ndarray:
    what = f"input '{name}'"
    if registry is None:
        raise PermissionDeniedError(f"{what}: system shared memory is off on this server")
    return registry.read(ref, datatype, shape, what)


def output_plan(name: str, params: Mapping[str, ParamValue]) -> OutputPlan | None:
    """The output's plan; None when it is sent as it is (the common case, checked first)."""
    if not params or not (CLASSIFICATION in params or any(key in params for key in _SHM_PARAMS)):
        return None
    where = f"output '{name}'"
    classes = 0
    if CLASSIFICATION in params:
        value = params[CLASSIFICATION]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InvalidInputError(f"{where}: parameter '{CLASSIFICATION}' must be an integer >= 1, got {value!r}")
        classes = value
    return OutputPlan(name, classes, shm_ref(params, where))


def output_plans(
    outputs: list[RequestedOutput] | None, registry: SharedMemoryRegistry | None = None
) -> dict[str, OutputPlan]:
    """Plans of the requested outputs that need one, their shared-memory windows taken from
    ``registry`` (so a bad region fails the request before the model runs, and unregistering it
    meanwhile cannot pull the window away); raises InvalidInputError for a bad parameter."""
    plans: dict[str, OutputPlan] = {}
    for out in outputs or ():
        plan = output_plan(out.name, out.parameters)
        if plan is None:
            continue
        if plan.shm is not None and registry is not None:
            plan = replace(plan, target=registry.output_window(plan.shm, f"output '{out.name}'"))
        plans[out.name] = plan
    return plans


@dataclass(frozen=True, slots=True)
class OutputContext:
    """What classification needs to know of the model version that answered."""

    batched: bool
    labels: Mapping[str, tuple[str, ...]]


def apply_output_plans(
    response: InferResponse,
    plans: Mapping[str, OutputPlan],
    context: Callable[[str, str], OutputContext],
) -> tuple[InferResponse, frozenset[str]]:
    """The response with classified outputs replaced, and the names of the outputs written into
    shared memory (their data is not sent). ``response`` itself is left unchanged: a cached
    response is shared by other requests."""
    outputs = dict(response.outputs)
    types = dict(response.datatypes)
    placed: set[str] = set()
    ctx = None
    for name, plan in plans.items():
        array = outputs.get(name)
        if array is None:
            continue
        what = f"output '{name}'"
        if plan.classes:
            if ctx is None:
                ctx = context(response.model, response.version)
            outputs[name] = top_k(array, types[name], plan.classes, ctx.batched, ctx.labels.get(name, ()), what)
            types[name] = "BYTES"
        if plan.shm is not None:
            if plan.target is None:
                raise PermissionDeniedError(f"{what}: system shared memory is off on this server")
            plan.target.write(outputs[name], what)
            placed.add(name)
    shaped = InferResponse(response.model, response.version, outputs, types, response.id, response.parameters)
    return shaped, frozenset(placed)


def output_context_of(service) -> Callable[[str, str], OutputContext]:
    """Reads a served version's batching and output labels from the service facade."""

    def context(model: str, version: str) -> OutputContext:
        loaded = service.loaded(model, version)
        labels = {t.name: t.labels for t in loaded.config.outputs if t.labels}
        return OutputContext(loaded.max_batch_size > 0, labels)

    return context
