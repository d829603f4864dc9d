"""Reference profiles: per-stream bins and reference counts, stored as JSON beside the model file.

Numeric streams: edges at the reference's quantiles 0, 1/B, ..., 1 (duplicates merged),
so bin i holds [edge[i-1], edge[i]) and the two outer bins (-inf, min) and [max, +inf)
are open-ended and catch values the reference never saw. Categorical streams: the
reference's most frequent values, sorted, plus one "other" slot. Reference counts
come from the same binning routine the live traffic goes through.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import dataclass

import numpy as np

from gateway import native

FORMAT = "gateway.drift.reference/1"


@dataclass(slots=True)
class StreamProfile:
    name: str
    categorical: bool
    edges: np.ndarray  # float64: bin edges, or the sorted known categories
    counts: np.ndarray  # int64, len(edges) + 1: reference rows per bin (last = other, for categories)
    missing: int = 0  # NaN values in the reference

    @property
    def rows(self) -> int:
        return int(self.counts.sum())

    def to_json(self) -> dict:
        key = "categories" if self.categorical else "edges"
        return {
            "kind": "categorical" if self.categorical else "numeric",
            key: [float(e) for e in self.edges],
            "counts": [int(c) for c in self.counts],
            "missing": self.missing,
        }

    @classmethod
    def from_json(cls, name: str, doc: dict) -> StreamProfile:
        categorical = doc["kind"] == "categorical"
        edges = np.asarray(doc["categories" if categorical else "edges"], dtype=np.float64)
        counts = np.asarray(doc["counts"], dtype=np.int64)
        if edges.ndim != 1 or counts.shape != (len(edges) + 1,):
            raise ValueError(f"stream '{name}': {len(counts)} counts for {len(edges)} edges (expected edges + 1)")
        if np.any(np.diff(edges) <= 0):
            raise ValueError(f"stream '{name}': edges must increase strictly")
        return cls(name, categorical, edges, counts, int(doc.get("missing", 0)))


def bin_counts(values: np.ndarray, edges: np.ndarray, categorical: bool) -> tuple[np.ndarray, int]:
    """Counts of a 1-D sample over a stream's bins, through the same native routine as live traffic."""
    counts = np.zeros((1, len(edges) + 1), dtype=np.int64)
    missing = np.zeros(1, dtype=np.int64)
    native.histogram_update(
        np.ascontiguousarray(values, dtype=np.float64).reshape(-1, 1),
        np.zeros(1, dtype=np.int64),
        np.asarray(edges, dtype=np.float64).reshape(1, -1) if len(edges) else np.zeros((1, 1)),
        np.array([len(edges)], dtype=np.int64),
        np.array([categorical], dtype=np.uint8),
        counts,
        missing,
    )
    return counts[0], int(missing[0])


def profile_stream(name: str, values: np.ndarray, categorical: bool, bins: int, max_categories: int) -> StreamProfile:
    values = np.asarray(values, dtype=np.float64)
    known = values[~np.isnan(values)]
    if not len(known):
        raise ValueError(f"stream '{name}': the reference has no values (all missing)")
    if categorical:
        cats, freq = np.unique(known, return_counts=True)
        if len(cats) > max_categories:
            keep = np.sort(np.argsort(-freq, kind="stable")[:max_categories])
            cats = cats[keep]
        edges = cats
    else:
        edges = np.unique(np.quantile(known, np.linspace(0.0, 1.0, bins + 1)))
    counts, missing = bin_counts(values, edges, categorical)
    return StreamProfile(name, categorical, edges, counts, missing)


@dataclass(slots=True)
class ReferenceProfile:
    streams: dict[str, StreamProfile]
    rows: int
    source: str
    created: str = ""

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "rows": self.rows,
            "source": self.source,
            "created": self.created,
            "streams": {name: s.to_json() for name, s in self.streams.items()},
        }

    @classmethod
    def from_json(cls, doc: dict) -> ReferenceProfile:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a reference profile (expected \"format\": \"{FORMAT}\")")
        streams = {name: StreamProfile.from_json(name, s) for name, s in doc["streams"].items()}
        return cls(streams, int(doc["rows"]), str(doc.get("source", "")), str(doc.get("created", "")))

    def save(self, path: str) -> None:
        """Written to a temporary name and renamed: a reader never sees half a file."""
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(self.to_json(), fh, indent=1)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> ReferenceProfile:
        with open(path, encoding="utf-8") as fh:
            return cls.from_json(json.load(fh))


def build_profile(columns: dict[str, tuple[np.ndarray, bool]], bins: int, max_categories: int, source: str) -> ReferenceProfile:
    """``columns``: stream name -> (its reference values, categorical)."""
    streams = {name: profile_stream(name, v, cat, bins, max_categories) for name, (v, cat) in columns.items()}
    rows = max((len(v) for v, _ in columns.values()), default=0)
    created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return ReferenceProfile(streams, rows, source, created)
