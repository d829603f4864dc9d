"""Helpers shared by the locustfiles (imported beside them: locust puts their folder on sys.path)."""

from __future__ import annotations

import gevent
import numpy as np

NUMPY = {
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
}


def random_input(name: str, datatype: str, shape: list[int], rows: int, rng: np.random.Generator) -> np.ndarray:
    """Data for one input of the model's metadata: ``rows`` in the batch dim, 1 for any other dynamic dim."""
    dtype = NUMPY.get(datatype)
    if dtype is None:
        raise RuntimeError(f"input {name}: datatype {datatype} is not supported by these locustfiles")
    dims = [rows] + [d if d > 0 else 1 for d in shape[1:]]
    values = rng.standard_normal(dims) * 4
    return (np.abs(values) if np.issubdtype(dtype, np.unsignedinteger) else values).astype(dtype)


def refresh_gevent_clock() -> None:
    """Call at the end of a locustfile.

    gevent's loop caches its clock; after a slow import (numpy, grpc) that cached time is
    seconds old and locust's --run-time timer, armed right after, fires at once: a headless
    run then stops before any request is sent.
    """
    gevent.get_hub().loop.update_now()
