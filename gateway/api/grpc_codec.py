"""ModelInferRequest / ModelInferResponse (protobuf) <-> domain types.

Parameters mean what :mod:`gateway.api.v2_request_policy` says, as over HTTP. ``raw_input_contents``
holds one entry per input *not* in shared memory, in input order (as Triton); an output written to
shared memory gets an empty ``raw_output_contents`` entry, so entries still line up with outputs.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from gateway._proto import grpc_service_pb2 as pb
from gateway.api import v2_request_policy as policy
from gateway.api.shared_memory import SharedMemoryRegistry
from gateway.core import datatypes
from gateway.core.errors import InvalidInputError
from gateway.core.tensors import element_count, from_raw, to_raw
from gateway.core.types import InferRequest, InferResponse, ParamValue, RequestedOutput

# InferTensorContents field holding each datatype when sent as typed values (FP16 is raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def param_value(p: pb.InferParameter) -> ParamValue:
    kind = p.WhichOneof("parameter_choice")
    if kind is None:
        raise InvalidInputError("a request parameter has no value")
    return getattr(p, kind)


def decode_parameters(params) -> dict[str, ParamValue]:
    if not params:  # the common case; iterating an empty protobuf map still costs a view and an iterator
        return {}
    return {k: param_value(v) for k, v in params.items()}


def set_parameter(target: pb.InferParameter, value: ParamValue) -> None:
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = str(value)


def _from_contents(tensor, datatype: str, shape, what: str) -> np.ndarray:
    count = element_count(shape, what)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInputError(f"{what}: {datatype} must be sent in raw_input_contents")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInputError(
            f"{what}: {len(values)} values in contents.{field} but shape {list(shape)} needs {count}"
        )
    if datatype == "BYTES":
        arr = np.empty(count, dtype=object)
        arr[:] = list(values)
        return arr.reshape(shape)
    dtype = datatypes.to_numpy(datatype)
    try:
        arr = np.array(values, dtype=dtype if datatype in ("BOOL", "FP32", "FP64") else np.int64)
        if arr.dtype != dtype:
            info = np.iinfo(dtype)
            if count and (arr.min() < info.min or arr.max() > info.max):
                raise InvalidInputError(f"{what}: a value is out of range for {datatype}")
            arr = arr.astype(dtype)
    except OverflowError:
        raise InvalidInputError(f"{what}: a value is out of range for {datatype}") from None
    return arr.reshape(shape)


def _raw_count_error(raw_count: int, msg: pb.ModelInferRequest, in_shm: int) -> InvalidInputError:
    shm = f" ({in_shm} in shared memory)" if in_shm else ""
    return InvalidInputError(
        f"raw_input_contents has {raw_count} entries but the request has {len(msg.inputs) - in_shm} inputs to read from it"
        f"{shm}"
    )


def decode_request(
    msg: pb.ModelInferRequest, deadline_ns: int = 0, shared_memory: SharedMemoryRegistry | None = None
) -> InferRequest:
    raw = msg.raw_input_contents
    inputs: dict[str, np.ndarray] = {}
    dts: dict[str, str] = {}
    next_raw = 0
    in_shm = 0
    for t in msg.inputs:
        what = f"input '{t.name}'"
        if t.name in inputs:
            raise InvalidInputError(f"{what} appears twice in the request")
        datatype = t.datatype
        if not datatypes.is_valid(datatype):
            raise InvalidInputError(f"{what}: unsupported datatype '{datatype}'")
        shape = tuple(t.shape)
        ref = policy.input_shm_ref(t.name, decode_parameters(t.parameters)) if t.parameters else None
        if ref is not None:
            if t.HasField("contents"):
                raise InvalidInputError(f"{what}: has both 'contents' and parameter 'shared_memory_region'")
            inputs[t.name] = policy.read_input(shared_memory, ref, t.name, datatype, shape)
            in_shm += 1
        elif raw:
            if t.HasField("contents"):
                raise InvalidInputError(f"{what}: contents must be empty when raw_input_contents is used")
            if next_raw >= len(raw):
                raise _raw_count_error(len(raw), msg, sum(1 for x in msg.inputs if _names_shm(x)))
            inputs[t.name] = from_raw(raw[next_raw], datatype, shape, what)
            next_raw += 1
        else:
            inputs[t.name] = _from_contents(t, datatype, shape, what)
        dts[t.name] = datatype
    if raw and next_raw != len(raw):
        raise _raw_count_error(len(raw), msg, in_shm)
    parameters = decode_parameters(msg.parameters)
    policy.check_request_parameters(parameters)
    outputs = None
    if msg.outputs:
        outputs = [RequestedOutput(o.name, decode_parameters(o.parameters)) for o in msg.outputs]
    return InferRequest(
        model=msg.model_name,
        version=msg.model_version,
        inputs=inputs,
        datatypes=dts,
        outputs=outputs,
        id=msg.id,
        parameters=parameters,
        deadline_ns=deadline_ns,
    )


def _names_shm(t) -> bool:
    return policy.SHM_REGION in t.parameters


def encode_response(resp: InferResponse, in_shared_memory: Collection[str] = ()) -> pb.ModelInferResponse:
    """The response message; outputs in ``in_shared_memory`` get an empty raw entry, as Triton."""
    msg = pb.ModelInferResponse(model_name=resp.model, model_version=resp.version, id=resp.id)
    raw = []
    for name, arr in resp.outputs.items():
        msg.outputs.add(name=name, datatype=resp.datatypes[name], shape=arr.shape)
        if in_shared_memory and name in in_shared_memory:
            raw.append(b"")
            continue
        raw.append(to_raw(arr))
    msg.raw_output_contents.extend(raw)
    for k, v in resp.parameters.items():
        set_parameter(msg.parameters[k], v)
    return msg
