"""``gateway drift profile MODEL --data FILE``: write a version's reference profile.

Reads the reference data, runs it through the model version (for output streams
and the argmax of outputs), bins every stream of the model's ``drift:`` section
and writes ``reference.json`` (or ``drift.reference.file``) beside the model file.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from gateway.core import datatypes
from gateway.core.errors import ConfigError
from gateway.core.model_config import load_model_config
from gateway.core.repository import scan_model
from gateway.core.types import TensorSpec
from gateway.executors.base import DEFAULT_MAX_BATCH_SIZE
from gateway.monitoring.drift.data import DataError, assemble_inputs, read_table
from gateway.monitoring.drift.profile import build_profile
from gateway.monitoring.drift.streams import resolve_streams, tensor_rows


class ProfileError(Exception):
    pass


def _strip(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(s.name, s.datatype, s.shape[1:]) for s in specs)


def make_profile(repository: str, model: str, data: str, version: str = "") -> tuple[str, dict]:
    """Writes the profile; returns (its path, a summary per stream)."""
    directory = os.path.join(repository, model)
    try:
        cfg = load_model_config(directory)
    except ConfigError as exc:
        raise ProfileError(str(exc)) from None
    if cfg.drift is None:
        raise ProfileError(f"{directory}/model.yaml: drift: missing (list the features to watch first)")
    entry = scan_model(repository, model)
    if entry is None or not entry.versions:
        raise ProfileError(f"{directory}: no model version found")
    v = int(version) if version else max(entry.versions)
    if v not in entry.versions:
        raise ProfileError(f"{directory}: no version {v} (has {sorted(entry.versions)})")
    model_file = entry.versions[v].model_file

    from gateway.executors.factory import create_executors  # loads onnxruntime: only here

    executor = create_executors(cfg.model_copy(update={"instances": 1}), model_file)[0]
    try:
        batching = all(s.shape and s.shape[0] == -1 for s in executor.inputs + executor.outputs) and cfg.max_batch_size != 0
        inputs = _strip(executor.inputs) if batching else executor.inputs
        outputs = _strip(executor.outputs) if batching else executor.outputs
        streams = resolve_streams(cfg.drift, inputs, outputs, f"{directory}/model.yaml")
        kind, table = read_table(data)
        feeds = assemble_inputs(kind, table, inputs)
        needs_model = any(s.source == "output" for s in streams)
        outs: dict[str, np.ndarray] = {}
        if needs_model:
            missing = [s.name for s in inputs if s.name not in feeds]
            if missing:
                raise ProfileError(f"{data}: output streams need every input to run the model; missing {missing}")
            outs = _run(executor, feeds, inputs, [s.name for s in outputs], cfg.max_batch_size or DEFAULT_MAX_BATCH_SIZE)
        columns = {}
        for s in streams:
            if s.source == "input" and s.tensor in feeds:
                flat = tensor_rows(feeds[s.tensor])
                columns[s.name] = (flat[:, s.column].astype(np.float64), s.categorical)
            elif s.source == "input" and kind == "columns" and s.name in table:
                columns[s.name] = (np.asarray(table[s.name], dtype=np.float64), s.categorical)
            elif s.source == "output":
                flat = tensor_rows(outs[s.tensor])
                col = flat.argmax(axis=1) if s.argmax else flat[:, s.column]
                columns[s.name] = (col.astype(np.float64), s.categorical)
            else:
                raise ProfileError(f"{data}: no data for stream '{s.name}' (input '{s.tensor}', column {s.column})")
    except (DataError, ConfigError, ValueError) as exc:
        raise ProfileError(str(exc)) from None
    finally:
        executor.close()
    ref = cfg.drift.reference
    try:
        profile = build_profile(columns, ref.bins, ref.max_categories, source=os.path.basename(data))
    except ValueError as exc:
        raise ProfileError(str(exc)) from None
    path = os.path.join(os.path.dirname(model_file), ref.file)
    profile.save(path)
    summary = {name: {"kind": "categorical" if p.categorical else "numeric", "bins": len(p.counts), "rows": p.rows}
               for name, p in profile.streams.items()}
    return path, summary


def _run(executor, feeds: dict[str, np.ndarray], inputs: tuple[TensorSpec, ...], names: list[str], batch: int) -> dict[str, np.ndarray]:
    typed = {s.name: np.ascontiguousarray(feeds[s.name], dtype=datatypes.to_numpy(s.datatype)) for s in inputs}
    rows = len(next(iter(typed.values())))
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for start in range(0, rows, batch):
        arrays = executor.run({k: a[start : start + batch] for k, a in typed.items()}, names)
        for n, a in zip(names, arrays):
            parts[n].append(a)
    return {n: np.concatenate(p) for n, p in parts.items()}


def main(args) -> int:
    try:
        path, summary = make_profile(args.repository, args.model, args.data, args.version or "")
    except ProfileError as exc:
        print(f"gateway drift profile: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    for name, s in summary.items():
        print(f"  {name}: {s['kind']}, {s['bins']} bins, {s['rows']} rows")
    return 0
