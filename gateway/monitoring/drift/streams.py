"""Streams: the watched columns of a model version, resolved against its tensors.

A stream reads one column of an input or output tensor (the row flattened to 1-D),
or the argmax of an output row. Resolution happens at load, when the tensors'
shapes are known; a column the tensor does not have is a config error naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod

import numpy as np

from gateway.core.drift_config import DriftConfig
from gateway.core.errors import ConfigError
from gateway.core.types import TensorSpec

# Dtypes the compiled histogram loop reads directly; others are converted to float64 first.
NATIVE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64))


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    source: str  # "input" | "output"
    tensor: str
    column: int  # in the flattened row; -1 for argmax
    categorical: bool
    argmax: bool = False

    @property
    def group(self) -> tuple[str, str, bool]:
        """Streams of one group are counted by one native call per batch."""
        return (self.source, self.tensor, self.argmax)


def _row_width(spec: TensorSpec) -> int | None:
    return prod(spec.shape) if all(d > 0 for d in spec.shape) else None


def resolve_streams(
    cfg: DriftConfig, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...], file: str,
    problems: list[ConfigError] | None = None,
) -> list[Stream]:
    """Every stream of the drift section, checked against the version's tensors (without the batch dim).

    Raises the first problem, or with ``problems`` given appends every one there and returns the
    streams that resolved (``gateway check`` lists them all)."""
    def fail(err: ConfigError) -> None:
        if problems is None:
            raise err
        problems.append(err)

    streams: list[Stream] = []
    tables = (
        ("features", "input", "input", cfg.features, {s.name: s for s in inputs}),
        ("outputs", "output", "output", cfg.outputs, {s.name: s for s in outputs}),
    )
    for kind, key, source, entries, specs in tables:
        for i, entry in enumerate(entries):
            where = f"drift.{kind}[{i}]"
            tensor = getattr(entry, key)
            spec = specs.get(tensor)
            if spec is None:
                fail(ConfigError(file, f"{where}.{key}", f"'{tensor}' is not an {source} of the model (it has {sorted(specs)})"))
                continue
            if spec.datatype == "BYTES":
                fail(ConfigError(file, f"{where}.{key}", f"'{tensor}' is BYTES: only numeric tensors can be watched"))
                continue
            if getattr(entry, "argmax", False):
                streams.append(Stream(f"{tensor}_argmax", source, tensor, -1, True, argmax=True))
                continue
            width = _row_width(spec)
            columns = entry.columns
            if columns is None:
                if width is None:
                    fail(ConfigError(file, f"{where}.columns", f"'{tensor}' has a dynamic shape {list(spec.shape)}: list the columns"))
                    continue
                columns = tuple(range(width))
            elif width is not None and max(columns) >= width:
                fail(ConfigError(file, f"{where}.columns", f"column {max(columns)} is outside the {width} values of a '{tensor}' row"))
                continue
            names = entry.names or tuple(f"{tensor}_{c}" for c in columns)
            streams += [Stream(n, source, tensor, c, entry.categorical) for n, c in zip(names, columns)]
    seen: set[str] = set()
    for s in streams:
        if s.name in seen:
            fail(ConfigError(file, "drift", f"stream name '{s.name}' is used twice"))
        seen.add(s.name)
    ph = cfg.page_hinkley
    if ph is not None:
        spec = {s.name: s for s in outputs}.get(ph.output)
        if spec is None:
            fail(ConfigError(file, "drift.page_hinkley.output", f"'{ph.output}' is not an output of the model"))
        elif (width := _row_width(spec)) is not None and ph.column >= width:
            fail(ConfigError(file, "drift.page_hinkley.column", f"column {ph.column} is outside the {width} values of a '{ph.output}' row"))
    return streams


def tensor_rows(array: np.ndarray) -> np.ndarray:
    """The batch as (rows, flattened row), in a dtype the native loop reads (a view when it can be)."""
    rows = array.shape[0] if array.ndim else 1
    flat = array.reshape(rows, -1)
    if flat.dtype not in NATIVE_DTYPES:
        flat = flat.astype(np.float64)
    return flat


def group_values(group: tuple[str, str, bool], feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The 2-D array a group's columns index, or None when this batch lacks the tensor."""
    source, tensor, argmax = group
    array = (feeds if source == "input" else outputs).get(tensor)
    if array is None:
        return None
    flat = tensor_rows(array)
    if argmax:
        return flat.argmax(axis=1).astype(np.int64).reshape(-1, 1)
    return flat
