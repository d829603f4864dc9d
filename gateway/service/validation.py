"""Checks a request against the model version it targets, before it may queue.

A request that fails here never enters a batch, so it cannot fail others.
"""

from __future__ import annotations

from gateway.core.errors import InvalidInputError
from gateway.core.types import InferRequest
from gateway.service.models import LoadedVersion


def _fmt(shape) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def validate_request(loaded: LoadedVersion, req: InferRequest) -> tuple[int, tuple]:
    """Returns (rows along the batch dim, shape key for batch compatibility)."""
    where = f"model '{loaded.name}' version {loaded.version}"
    expected = loaded.input_index
    for name in req.inputs:
        if name not in expected:
            raise InvalidInputError(f"unexpected inference input '{name}' for {where}; it takes {sorted(expected)}")
    batching = loaded.max_batch_size > 0
    ragged = loaded.scheduler.spec.ragged_inputs
    rows = -1
    key = []
    for spec in loaded.inputs:
        arr = req.inputs.get(spec.name)
        if arr is None:
            raise InvalidInputError(f"missing inference input '{spec.name}' for {where}")
        datatype = req.datatypes.get(spec.name)
        if datatype != spec.datatype:
            raise InvalidInputError(
                f"input '{spec.name}' has datatype {datatype} but {where} expects {spec.datatype}"
            )
        shape = arr.shape
        want_rank = len(spec.shape) + (1 if batching else 0)
        if len(shape) != want_rank:
            full = ("-1," if batching else "") + ",".join(str(d) for d in spec.shape)
            raise InvalidInputError(
                f"input '{spec.name}' has shape {_fmt(shape)} but {where} expects [{full}] (rank {want_rank})"
            )
        trailing = shape[1:] if batching else shape
        if batching:
            if rows == -1:
                rows = shape[0]
            elif shape[0] != rows:
                raise InvalidInputError(
                    f"input '{spec.name}' has {shape[0]} rows but other inputs have {rows}: all inputs must share the batch size"
                )
        if spec.name not in ragged:
            for got, want in zip(trailing, spec.shape):
                if want != -1 and got != want:
                    raise InvalidInputError(
                        f"input '{spec.name}' has shape {_fmt(shape)} but {where} expects "
                        f"{_fmt(((-1,) if batching else ()) + spec.shape)}"
                    )
            key.append(trailing)
    if batching:
        if rows < 1:
            raise InvalidInputError(f"batch size must be at least 1 for {where}, got {rows}")
        if rows > loaded.max_batch_size:
            raise InvalidInputError(
                f"batch of {rows} rows exceeds max_batch_size {loaded.max_batch_size} of {where}"
            )
    if req.outputs is not None:
        for out in req.outputs:
            if out.name not in loaded.output_index:
                raise InvalidInputError(
                    f"unknown requested output '{out.name}' for {where}; it has {sorted(loaded.output_index)}"
                )
    return (rows if batching else 1), tuple(key)
