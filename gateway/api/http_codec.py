"""Codecs of the KServe v2 REST inference protocol: HTTP body <-> domain types.

Pure functions, no I/O: the HTTP app hands in the body and two headers and
gets back an :class:`InferRequest` plus an :class:`OutputFormat` that says how
to encode the answer.

Three request encodings are understood, chosen by ``Content-Type``:

JSON (anything that is not msgpack)
    ``{"id"?, "parameters"?, "inputs": [{"name", "shape", "datatype",
    "parameters"?, "data"?}], "outputs"?: [{"name", "parameters"?}]}``.
    ``data`` is flat or nested exactly like ``shape`` (row-major). BOOL is
    ``true``/``false``, integer types take JSON integers only, FP types take
    any JSON number (and ``NaN``/``Infinity``), BYTES takes JSON strings (sent
    to the model as their UTF-8 bytes).

JSON + binary tensor extension
    The ``Inference-Header-Content-Length`` header gives the length of the JSON
    part; the raw tensors of the inputs whose ``parameters.binary_data_size``
    is set follow it in input order, with no padding and nothing after them.
    Raw tensors are row-major little-endian, BOOL one byte (0 or 1), BYTES a
    sequence of (uint32 little-endian length, bytes) per element. Fixed-width
    inputs are decoded without a copy (read-only views of the body).

msgpack (``Content-Type: application/msgpack`` or ``application/x-msgpack``)
    Our own compact encoding; the request is one msgpack map::

        {"id": str?, "parameters": {str: bool|int|float|str}?,
         "inputs": [{"name": str, "datatype": str, "shape": [int, ...],
                     "data": bin}],
         "outputs": [{"name": str, "parameters": {...}?}]?}

    ``data`` of a fixed-width input is one ``bin`` holding the raw row-major
    little-endian tensor (BOOL one byte per element, 0 or 1); of a BYTES input
    it is an array of ``bin``, one per element, row-major. Strings must be
    msgpack ``str`` and tensors ``bin`` (pack with ``use_bin_type=True``).
    The answer is msgpack too (``Content-Type: application/msgpack``)::

        {"model_name": str, "model_version": str, "id": str?,
         "parameters": {...}?,
         "outputs": [{"name": str, "datatype": str, "shape": [int, ...],
                      "data": bin | [bin, ...]}]}

    msgpack copies each ``bin`` once while unpacking; arrays are then views of
    those copies.

Request-level ``parameters`` are copied into ``InferRequest.parameters``
except ``binary_data_output``, which only steers the encoding. What every other
parameter means (``priority``, ``timeout``, the shared-memory parameters,
``classification``) is decided by :mod:`gateway.api.v2_request_policy`, the same
for gRPC. An input in shared memory carries neither ``data`` nor
``binary_data_size``; its tensor is a read-only view of the registered region.

Responses in JSON:

* outputs asked for with ``binary_data`` (or covered by ``binary_data_output``)
  carry ``"parameters": {"binary_data_size": n}`` and their bytes follow the
  JSON header in output order; the body is then ``application/octet-stream``
  with ``Inference-Header-Content-Length``.
* FP NaN and infinities are written as the bare tokens ``NaN``, ``Infinity``
  and ``-Infinity``: not strict JSON, but what Python's ``json`` and the
  ``rapidjson`` parser in ``tritonclient`` read back as the same floats (a
  ``null`` would lose the sign of an infinity).
* A BYTES output that is not valid UTF-8 cannot be a JSON string; rather than
  corrupt it, that output is sent in binary form as if ``binary_data`` had been
  asked for. Clients of the binary extension (tritonclient among them) read it
  unchanged; a JSON-only client fails loudly instead of reading wrong text.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Collection
from dataclasses import dataclass
from itertools import chain
from typing import Any

import msgpack
import numpy as np

from gateway.api import v2_request_policy as policy
from gateway.api.shared_memory import SharedMemoryRegistry
from gateway.core import datatypes, tensors
from gateway.core.errors import InvalidInputError
from gateway.core.types import InferRequest, InferResponse, ParamValue, RequestedOutput

HEADER_LENGTH_HEADER = "Inference-Header-Content-Length"
JSON_CONTENT_TYPE = "application/json"
BINARY_CONTENT_TYPE = "application/octet-stream"
MSGPACK_CONTENT_TYPE = "application/msgpack"
_MSGPACK_TYPES = frozenset({"application/msgpack", "application/x-msgpack"})

_SCALAR_TYPES = (bool, int, float, str)
# Python types a JSON element may have, per numpy dtype kind. bool is listed
# apart from int on purpose: type(True) is bool, so `true` in an INT32 tensor
# is rejected.
_JSON_ELEMENT_TYPES = {
    "b": frozenset({bool}),
    "i": frozenset({int}),
    "u": frozenset({int}),
    "f": frozenset({int, float}),
}
_JSON_TYPE_WORDS = {"b": "true/false", "i": "integers", "u": "integers", "f": "numbers"}


class Encoding(enum.Enum):
    JSON = "json"
    MSGPACK = "msgpack"


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """How to encode the response of one request."""

    encoding: Encoding = Encoding.JSON
    # Request-level `binary_data_output`: outputs without their own flag.
    binary_by_default: bool = False
    # Outputs whose own `binary_data` flag is true / false.
    binary_outputs: frozenset[str] = frozenset()
    json_outputs: frozenset[str] = frozenset()

    def is_binary(self, name: str) -> bool:
        if name in self.binary_outputs:
            return True
        if name in self.json_outputs:
            return False
        return self.binary_by_default


# --------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------


def decode_infer_request(
    body: bytes | memoryview,
    *,
    content_type: str | None,
    header_length: int | None,
    model: str,
    version: str,
    max_tensor_elements: int = 1 << 28,
    shared_memory: SharedMemoryRegistry | None = None,
) -> tuple[InferRequest, OutputFormat]:
    """Decode an infer request body; raises InvalidInputError (or
    PayloadTooLargeError for a tensor over ``max_tensor_elements``). Inputs in
    shared memory are read from ``shared_memory``'s regions."""
    view = _byte_view(body)
    if _is_msgpack(content_type):
        if header_length is not None:
            raise InvalidInputError(
                f"{HEADER_LENGTH_HEADER} cannot be used with a msgpack body"
            )
        return _decode_msgpack(view, model, version, max_tensor_elements, shared_memory)
    return _decode_json(view, header_length, model, version, max_tensor_elements, shared_memory)


def _byte_view(body: bytes | memoryview) -> memoryview:
    view = memoryview(body)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    return view


def _is_msgpack(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in _MSGPACK_TYPES


def _decode_json(
    view: memoryview, header_length: int | None, model: str, version: str, max_elements: int,
    shared_memory: SharedMemoryRegistry | None,
) -> tuple[InferRequest, OutputFormat]:
    header_end = _header_end(view, header_length)
    doc = _load_json(view[:header_end])
    _expect_map(doc, "the request body")
    inputs: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    offset = header_end
    binary_names: list[str] = []
    for index, item in enumerate(_expect_list(doc, "inputs", "the request", required=True)):
        name, datatype, shape, count = _tensor_header(item, index, "input", max_elements)
        if name in inputs:
            raise InvalidInputError(f"input '{name}' appears more than once")
        params = _tensor_parameters(item, f"input '{name}'")
        ref = policy.input_shm_ref(name, params)
        size = None if ref is not None else _binary_data_size(item, params, name, header_length)
        if ref is not None:
            _no_data_beside_shm(item, params, name)
            array = policy.read_input(shared_memory, ref, name, datatype, shape)
        elif size is None:
            array = _array_from_json(name, datatype, shape, count, item["data"])
        else:
            if offset + size > len(view):
                raise InvalidInputError(
                    f"input '{name}': binary_data_size {size} exceeds the "
                    f"{len(view) - offset} bytes left in the body"
                )
            buf = view[offset : offset + size]
            array = _array_from_buffer(name, datatype, shape, count, buf)
            binary_names.append(name)
            offset += size
        inputs[name] = array
        types[name] = datatype
    _check_body_consumed(view, offset, header_end, binary_names)
    request, binary_default, binary, plain = _infer_request(model, version, inputs, types, doc)
    return request, OutputFormat(Encoding.JSON, binary_default, binary, plain)


def _header_end(view: memoryview, header_length: int | None) -> int:
    if header_length is None:
        return len(view)
    if type(header_length) is not int or not 0 < header_length <= len(view):
        raise InvalidInputError(
            f"{HEADER_LENGTH_HEADER} {header_length!r} must be between 1 and the "
            f"body length {len(view)}"
        )
    return header_length


def _load_json(raw: memoryview) -> Any:
    try:
        return json.loads(str(raw, "utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"the JSON request is not valid UTF-8: {exc.reason}") from None
    except RecursionError:
        raise InvalidInputError("the JSON request is nested too deeply") from None
    except ValueError as exc:
        raise InvalidInputError(f"the request is not valid JSON: {exc}") from None


def _check_body_consumed(
    view: memoryview, offset: int, header_end: int, binary_names: list[str]
) -> None:
    if offset == len(view):
        return
    left = len(view) - offset
    if not binary_names:
        raise InvalidInputError(
            f"{left} bytes follow the JSON header but no input sets binary_data_size"
        )
    names = ", ".join(f"'{n}'" for n in binary_names)
    raise InvalidInputError(
        f"inputs {names}: binary_data_size values sum to {offset - header_end} bytes "
        f"but {len(view) - header_end} bytes follow the JSON header"
    )


def _no_data_beside_shm(item: dict, params: dict, name: str) -> None:
    for key, found in (("data", "data" in item), ("binary_data_size", "binary_data_size" in params)):
        if found:
            raise InvalidInputError(f"input '{name}': has both '{key}' and parameter 'shared_memory_region'")


def _binary_data_size(item: dict, params: dict, name: str, header_length: int | None) -> int | None:
    """The input's byte count in the binary part; None when it carries JSON `data`."""
    size = params.get("binary_data_size")
    if size is None:
        if "data" not in item:
            raise InvalidInputError(
                f"input '{name}': has neither 'data' nor parameters.binary_data_size"
            )
        return None
    if "data" in item:
        raise InvalidInputError(f"input '{name}': has both 'data' and parameters.binary_data_size")
    if type(size) is not int or size < 0:
        raise InvalidInputError(
            f"input '{name}': binary_data_size must be a non-negative integer, got {size!r}"
        )
    if header_length is None:
        raise InvalidInputError(
            f"input '{name}': binary_data_size is set but the request has no "
            f"{HEADER_LENGTH_HEADER} header"
        )
    return size


def _decode_msgpack(
    view: memoryview, model: str, version: str, max_elements: int, shared_memory: SharedMemoryRegistry | None
) -> tuple[InferRequest, OutputFormat]:
    doc = _load_msgpack(view)
    _expect_map(doc, "the request body")
    inputs: dict[str, np.ndarray] = {}
    types: dict[str, str] = {}
    for index, item in enumerate(_expect_list(doc, "inputs", "the request", required=True)):
        name, datatype, shape, count = _tensor_header(item, index, "input", max_elements)
        if name in inputs:
            raise InvalidInputError(f"input '{name}' appears more than once")
        ref = policy.input_shm_ref(name, _tensor_parameters(item, f"input '{name}'"))
        if ref is not None:
            _no_data_beside_shm(item, {}, name)
            inputs[name] = policy.read_input(shared_memory, ref, name, datatype, shape)
        elif "data" not in item:
            raise InvalidInputError(f"input '{name}': missing 'data'")
        else:
            inputs[name] = _array_from_msgpack(name, datatype, shape, count, item["data"])
        types[name] = datatype
    request, _, _, _ = _infer_request(model, version, inputs, types, doc)
    return request, OutputFormat(Encoding.MSGPACK)


def _load_msgpack(view: memoryview) -> Any:
    try:
        return msgpack.unpackb(view, raw=False)
    except (msgpack.UnpackException, ValueError, TypeError) as exc:
        raise InvalidInputError(f"the request is not valid msgpack: {exc}") from None


# --- fields shared by both encodings ---------------------------------------


def _expect_map(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInputError(f"{what} must be an object, got {_kind(value)}")
    return value


def _expect_list(doc: dict, key: str, where: str, *, required: bool = False) -> list:
    value = doc.get(key)
    if value is None and not required:
        return []
    if not isinstance(value, list):
        if value is None:
            raise InvalidInputError(f"{where} is missing '{key}'")
        raise InvalidInputError(f"{where}: '{key}' must be a list, got {_kind(value)}")
    return value


def _tensor_header(
    item: Any, index: int, role: str, max_elements: int
) -> tuple[str, str, tuple[int, ...], int]:
    name = _tensor_name(item, index, role)
    datatype = item.get("datatype")
    if not isinstance(datatype, str):
        raise InvalidInputError(
            f"{role} '{name}': 'datatype' must be a string, got {_kind(datatype)}"
        )
    if not datatypes.is_valid(datatype):
        raise InvalidInputError(
            f"{role} '{name}': unsupported datatype '{datatype}' "
            f"(expected one of {', '.join(datatypes.DATATYPES)})"
        )
    shape = _shape(item.get("shape"), name, role)
    return name, datatype, shape, tensors.element_count(shape, f"{role} '{name}'", max_elements)


def _tensor_name(item: Any, index: int, role: str) -> str:
    if not isinstance(item, dict):
        raise InvalidInputError(f"{role} #{index} must be an object, got {_kind(item)}")
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"{role} #{index}: 'name' must be a non-empty string")
    return name


def _shape(shape: Any, name: str, role: str) -> tuple[int, ...]:
    if not isinstance(shape, list):
        raise InvalidInputError(f"{role} '{name}': 'shape' must be a list of integers")
    for dim in shape:
        if type(dim) is not int:
            raise InvalidInputError(f"{role} '{name}': shape {shape} holds a non-integer {dim!r}")
    return tuple(shape)


def _tensor_parameters(item: dict, where: str) -> dict[str, ParamValue]:
    return _parameters(item.get("parameters"), where)


def _parameters(raw: Any, where: str) -> dict[str, ParamValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: 'parameters' must be an object, got {_kind(raw)}")
    for key, value in raw.items():
        if not isinstance(key, str) or not isinstance(value, _SCALAR_TYPES):
            raise InvalidInputError(
                f"{where}: parameter {key!r} must be a bool, number or string, got {_kind(value)}"
            )
    return raw


def _request_parameters(doc: dict) -> tuple[dict[str, ParamValue], bool]:
    params = dict(_parameters(doc.get("parameters"), "the request"))
    binary_default = params.pop("binary_data_output", False)
    if type(binary_default) is not bool:
        raise InvalidInputError("the request: parameter 'binary_data_output' must be true or false")
    policy.check_request_parameters(params)
    return params, binary_default


def _infer_request(model: str, version: str, inputs: dict, types: dict, doc: dict):
    """The request from decoded inputs and the document's id, parameters and requested outputs;
    also the output format the JSON encoding reads: (request, binary_default, binary, plain)."""
    parameters, binary_default = _request_parameters(doc)
    outputs, binary, plain = _requested_outputs(doc)
    request = InferRequest(
        model=model,
        version=version,
        inputs=inputs,
        datatypes=types,
        outputs=outputs,
        id=_request_id(doc),
        parameters=parameters,
    )
    return request, binary_default, binary, plain


def _request_id(doc: dict) -> str:
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInputError(f"the request: 'id' must be a string, got {_kind(request_id)}")
    return request_id


def _requested_outputs(
    doc: dict,
) -> tuple[list[RequestedOutput] | None, frozenset[str], frozenset[str]]:
    """The requested outputs (None: all) and the names flagged binary / not binary."""
    outputs: list[RequestedOutput] = []
    binary: set[str] = set()
    plain: set[str] = set()
    seen: set[str] = set()
    for index, item in enumerate(_expect_list(doc, "outputs", "the request")):
        name = _tensor_name(item, index, "output")
        if name in seen:
            raise InvalidInputError(f"output '{name}' is requested more than once")
        seen.add(name)
        params = _tensor_parameters(item, f"output '{name}'")
        flag = params.get("binary_data")
        if flag is not None:
            if type(flag) is not bool:
                raise InvalidInputError(f"output '{name}': 'binary_data' must be true or false")
            (binary if flag else plain).add(name)
        outputs.append(RequestedOutput(name, dict(params)))
    return (outputs or None), frozenset(binary), frozenset(plain)


# --- tensor data -------------------------------------------------------------


def _array_from_json(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any
) -> np.ndarray:
    flat = _flat_elements(name, data, shape, count)
    dtype = datatypes.to_numpy(datatype)
    if dtype is None:
        return _bytes_from_json(name, flat).reshape(shape)
    return _numeric_from_json(name, datatype, dtype, flat).reshape(shape)


def _flat_elements(name: str, data: Any, shape: tuple[int, ...], count: int) -> list:
    if not isinstance(data, list):
        raise InvalidInputError(f"input '{name}': 'data' must be a list, got {_kind(data)}")
    if len(shape) > 1 and data and isinstance(data[0], list):
        data = _flatten_nested(name, data, shape)
    if len(data) != count:
        raise InvalidInputError(
            f"input '{name}': shape {list(shape)} needs {count} elements, data has {len(data)}"
        )
    return data


def _flatten_nested(name: str, data: list, shape: tuple[int, ...]) -> list:
    # One Python step per row, never per element: the rows' lengths are
    # checked with len() and the last level is spliced by chain().
    rows: list = [data]
    for depth, dim in enumerate(shape):
        for row in rows:
            if not isinstance(row, list) or len(row) != dim:
                raise InvalidInputError(
                    f"input '{name}': nested data does not follow shape {list(shape)} "
                    f"at depth {depth} (a row has "
                    f"{f'{len(row)} elements' if isinstance(row, list) else _kind(row)}, "
                    f"expected {dim})"
                )
        rows = list(chain.from_iterable(rows))
    return rows


def _numeric_from_json(name: str, datatype: str, dtype: np.dtype, flat: list) -> np.ndarray:
    allowed = _JSON_ELEMENT_TYPES[dtype.kind]
    if not set(map(type, flat)) <= allowed:
        bad = next(x for x in flat if type(x) not in allowed)
        raise InvalidInputError(
            f"input '{name}': {datatype} data takes {_JSON_TYPE_WORDS[dtype.kind]}, "
            f"got {_kind(bad)} {_preview(bad)}"
        )
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(flat, dtype=dtype)
    except (OverflowError, ValueError):
        raise InvalidInputError(
            f"input '{name}': {_out_of_range(flat, dtype)} does not fit in {datatype}"
        ) from None
    if dtype.kind == "f" and not np.isfinite(array).all():
        _check_no_float_overflow(name, datatype, flat, array)
    return array


def _out_of_range(flat: list, dtype: np.dtype) -> str:
    if dtype.kind == "f":
        return "a value"
    info = np.iinfo(dtype)
    return repr(next((x for x in flat if not info.min <= x <= info.max), "a value"))


def _check_no_float_overflow(name: str, datatype: str, flat: list, array: np.ndarray) -> None:
    # Infinity sent as Infinity is fine; 1e300 turning into inf in FP32 is not.
    sent_inf = np.isinf(np.asarray(flat, dtype=np.float64))
    overflow = np.isinf(array) & ~sent_inf
    if overflow.any():
        value = flat[int(np.flatnonzero(overflow)[0])]
        raise InvalidInputError(f"input '{name}': {value!r} does not fit in {datatype}")


def _bytes_from_json(name: str, flat: list) -> np.ndarray:
    if not set(map(type, flat)) <= {str}:
        bad = next(x for x in flat if type(x) is not str)
        raise InvalidInputError(
            f"input '{name}': BYTES data takes strings, got {_kind(bad)} {_preview(bad)}"
        )
    try:
        return _object_array([s.encode("utf-8") for s in flat])
    except UnicodeEncodeError:
        # JSON's \ud800 escapes decode to lone surrogates, which have no UTF-8 bytes.
        index = next(i for i, s in enumerate(flat) if not _encodes(s))
        raise InvalidInputError(
            f"input '{name}': BYTES element {index} is not valid Unicode (it holds a lone surrogate)"
        ) from None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _array_from_buffer(
    name: str, datatype: str, shape: tuple[int, ...], count: int, buf: memoryview
) -> np.ndarray:
    return tensors.from_raw(buf, datatype, shape, f"input '{name}'")


def _array_from_msgpack(
    name: str, datatype: str, shape: tuple[int, ...], count: int, data: Any
) -> np.ndarray:
    dtype = datatypes.to_numpy(datatype)
    if dtype is None:
        if not isinstance(data, list) or not set(map(type, data)) <= {bytes}:
            raise InvalidInputError(f"input '{name}': BYTES data must be an array of bin")
        if len(data) != count:
            raise InvalidInputError(
                f"input '{name}': shape {list(shape)} needs {count} elements, data has {len(data)}"
            )
        return _object_array(data).reshape(shape)
    if not isinstance(data, bytes):
        raise InvalidInputError(f"input '{name}': {datatype} data must be bin, got {_kind(data)}")
    return tensors.from_raw(data, datatype, shape, f"input '{name}'")


def _object_array(items: list) -> np.ndarray:
    # np.array(items) would try to treat the elements as sequences.
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return array


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _preview(value: Any) -> str:
    text = repr(value)
    return f"({text[:40]}...)" if len(text) > 40 else f"({text})"


# --------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------


def encode_infer_response(
    response: InferResponse, fmt: OutputFormat, in_shared_memory: Collection[str] = ()
) -> tuple[bytes, dict[str, str]]:
    """The response body and the headers it needs (Content-Type, and the
    header length when binary outputs follow the JSON). Outputs in
    ``in_shared_memory`` were written to a region: as Triton, they carry
    name, datatype and shape only (no data, no parameters: Triton's C++
    client reads any output ``parameters`` as binary-data ones)."""
    placed = in_shared_memory
    if fmt.encoding is Encoding.MSGPACK:
        return _encode_msgpack(response, placed), {"Content-Type": MSGPACK_CONTENT_TYPE}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes | memoryview] = []
    for name, array in response.outputs.items():
        datatype = _output_datatype(response, name, array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if name in placed:
            outputs.append(entry)
            continue
        data = None if fmt.is_binary(name) else _json_data(array, datatype)
        if data is None:
            blob = _raw_data(array, datatype)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = data
        outputs.append(entry)
    header = _dump_json(_response_envelope(response, outputs))
    if not blobs:
        return header, {"Content-Type": JSON_CONTENT_TYPE}
    headers = {"Content-Type": BINARY_CONTENT_TYPE, HEADER_LENGTH_HEADER: str(len(header))}
    return b"".join([header, *blobs]), headers


def encode_error(message: str) -> bytes:
    return _dump_json({"error": message})


def _dump_json(doc: Any) -> bytes:
    # ASCII output keeps character and byte lengths equal for the header length.
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


def _response_envelope(response: InferResponse, outputs: list) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_name": response.model, "model_version": response.version}
    if response.id:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    return doc


def _output_datatype(response: InferResponse, name: str, array: np.ndarray) -> str:
    return response.datatypes.get(name) or datatypes.from_numpy(array.dtype)


def _json_data(array: np.ndarray, datatype: str) -> list | None:
    """Flat row-major JSON values; None when a BYTES element is not UTF-8."""
    dtype = datatypes.to_numpy(datatype)
    if dtype is not None:
        return np.asarray(array, dtype=dtype).ravel().tolist()
    try:
        return [_as_text(x) for x in array.ravel().tolist()]
    except UnicodeDecodeError:
        return None


def _raw_data(array: np.ndarray, datatype: str) -> bytes | memoryview:
    """The tensor in the binary layout, viewed rather than copied when possible."""
    dtype = datatypes.to_numpy(datatype)
    if dtype is None:
        return tensors.bytes_to_raw(array)
    flat = np.ascontiguousarray(array, dtype=dtype).reshape(-1)
    return memoryview(flat.data).cast("B")


def _as_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item).decode("utf-8")
    return str(item)


def _encode_msgpack(response: InferResponse, placed: Collection[str]) -> bytes:
    outputs = []
    for name, array in response.outputs.items():
        datatype = _output_datatype(response, name, array)
        if name in placed:
            outputs.append({"name": name, "datatype": datatype, "shape": list(array.shape)})
            continue
        if datatypes.to_numpy(datatype) is None:
            data: Any = [tensors.as_bytes(x) for x in array.ravel().tolist()]
        else:
            data = _raw_data(array, datatype)
        outputs.append(
            {"name": name, "datatype": datatype, "shape": list(array.shape), "data": data}
        )
    return msgpack.packb(_response_envelope(response, outputs), use_bin_type=True)
