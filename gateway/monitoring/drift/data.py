"""Reference data files for ``gateway drift profile``: .npy, .npz, .csv and Parquet.

- ``.npy``: one array, the model's only input (rows first).
- ``.npz``: arrays named after the model's inputs.
- ``.csv`` (header row, numbers only) and ``.parquet``: one column per value; an input
  ``X`` whose row has W values is read from columns ``X_0`` .. ``X_{W-1}`` (or ``X``
  when W is 1), and a stream can also be read from a column with the stream's name.
  Parquet needs pyarrow (``pip install 'gateway[parquet]'``), kept optional for its size.
"""

from __future__ import annotations

import csv
import os
from math import prod

import numpy as np

from gateway.core.types import TensorSpec


class DataError(Exception):
    pass


def read_table(path: str) -> tuple[str, dict[str, np.ndarray]]:
    """(kind, arrays by name): kind "arrays" for .npy/.npz (whole tensors), "columns" for tables."""
    ext = os.path.splitext(path)[1].lower()
    try:
        if ext == ".npy":
            return "arrays", {"": np.load(path, allow_pickle=False)}
        if ext == ".npz":
            with np.load(path, allow_pickle=False) as z:
                return "arrays", {k: z[k] for k in z.files}
        if ext == ".csv":
            return "columns", _read_csv(path)
        if ext in (".parquet", ".pq"):
            return "columns", _read_parquet(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: {exc}") from None
    raise DataError(f"{path}: unknown data format '{ext}' (use .npy, .npz, .csv or .parquet)")


def _read_csv(path: str) -> dict[str, np.ndarray]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if not header:
            raise ValueError("empty file (a header row naming the columns is needed)")
        rows = [r for r in reader if r]
    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        try:
            cols[name.strip()] = np.array([float(r[j]) if r[j].strip() else np.nan for r in rows], dtype=np.float64)
        except (ValueError, IndexError):
            raise ValueError(f"column '{name}': every value must be a number (categories as numeric codes)") from None
    return cols


def _read_parquet(path: str) -> dict[str, np.ndarray]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError("reading Parquet needs pyarrow: pip install 'gateway[parquet]'") from None
    table = pq.read_table(path)
    out = {}
    for name in table.column_names:
        col = table.column(name).to_numpy(zero_copy_only=False)
        if col.dtype.kind not in "biuf":
            raise ValueError(f"column '{name}': every value must be a number (categories as numeric codes)")
        out[name] = col.astype(np.float64) if col.dtype.kind == "b" else col
    return out


def assemble_inputs(kind: str, table: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...]) -> dict[str, np.ndarray]:
    """The model inputs the data holds whole, as (rows, *shape) arrays."""
    out: dict[str, np.ndarray] = {}
    if kind == "arrays":
        if "" in table:
            if len(inputs) != 1:
                raise DataError(f"a .npy file holds one array but the model has {len(inputs)} inputs: use .npz")
            out[inputs[0].name] = table[""]
        else:
            out = {s.name: table[s.name] for s in inputs if s.name in table}
        return out
    for spec in inputs:
        width = prod(spec.shape) if all(d > 0 for d in spec.shape) else None
        if width is None:
            continue
        names = [spec.name] if width == 1 and spec.name in table else [f"{spec.name}_{j}" for j in range(width)]
        if all(n in table for n in names):
            out[spec.name] = np.stack([table[n] for n in names], axis=1).reshape(-1, *spec.shape)
    return out
