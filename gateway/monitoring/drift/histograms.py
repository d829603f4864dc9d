"""The layout of every stream's bins in one flat int64 vector, and the per-batch count.

Streams reading the same tensor form a group, counted by one native call per
batch. A group's segment is its (streams x slots) counts followed by one missing
count per stream; a window pane is one such vector for all groups.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from gateway import native
from gateway.monitoring.drift.profile import ReferenceProfile, StreamProfile
from gateway.monitoring.drift.streams import Stream, group_values


@dataclass(slots=True)
class _Group:
    key: tuple[str, str, bool]
    profiles: list[StreamProfile]
    columns: np.ndarray
    edges: np.ndarray
    n_edges: np.ndarray
    categorical: np.ndarray
    offset: int
    slots: int
    ref_counts: np.ndarray  # (streams, slots): the reference histograms, zero-padded

    @property
    def size(self) -> int:
        return len(self.profiles) * (self.slots + 1)

    def views(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = len(self.profiles)
        seg = flat[self.offset : self.offset + self.size]
        return seg[: n * self.slots].reshape(n, self.slots), seg[n * self.slots :]


class HistogramLayout:
    def __init__(self, streams: list[Stream], profile: ReferenceProfile) -> None:
        """Only streams the profile has are laid out (``unprofiled`` lists the others)."""
        by_group: dict[tuple[str, str, bool], list[tuple[Stream, StreamProfile]]] = {}
        self.unprofiled = [s.name for s in streams if s.name not in profile.streams]
        for s in streams:
            p = profile.streams.get(s.name)
            if p is not None:
                by_group.setdefault(s.group, []).append((s, p))
        self.groups: list[_Group] = []
        offset = 0
        for key, members in by_group.items():
            width = max(len(p.edges) for _, p in members)
            edges = np.full((len(members), max(width, 1)), np.inf)
            for i, (_, p) in enumerate(members):
                edges[i, : len(p.edges)] = p.edges
            g = _Group(
                key,
                [p for _, p in members],
                np.array([max(s.column, 0) for s, _ in members], dtype=np.int64),
                edges,
                np.array([len(p.edges) for _, p in members], dtype=np.int64),
                np.array([p.categorical for _, p in members], dtype=np.uint8),
                offset,
                width + 1,
                np.zeros((len(members), width + 1), dtype=np.int64),
            )
            for i, (_, p) in enumerate(members):
                g.ref_counts[i, : len(p.counts)] = p.counts
            self.groups.append(g)
            offset += g.size
        self.width = offset

    def fingerprint(self) -> str:
        """Names this layout: two members' counts add only when their streams, bins and reference
        are the same (a worker that captured its own reference has another)."""
        h = hashlib.blake2b(digest_size=12)
        for g in self.groups:
            h.update(repr((g.key, [p.name for p in g.profiles], g.offset, g.slots)).encode())
            for a in (g.columns, g.edges, g.n_edges, g.categorical, g.ref_counts):
                h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()

    def batch_values(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> list[np.ndarray | None]:
        return [group_values(g.key, feeds, outputs) for g in self.groups]

    def count(self, values: list[np.ndarray | None], start: int, stop: int, flat: np.ndarray) -> None:
        """Add rows [start, stop) of each group's values into ``flat``."""
        for g, v in zip(self.groups, values):
            if v is None:
                continue
            counts, missing = g.views(flat)
            native.histogram_update(v[start:stop], g.columns, g.edges, g.n_edges, g.categorical, counts, missing)

    def per_group(self, flat: np.ndarray):
        """(profiles, reference counts, window counts, missing) per group, histograms as padded rows."""
        for g in self.groups:
            counts, missing = g.views(flat)
            yield g.profiles, g.ref_counts, counts, missing
