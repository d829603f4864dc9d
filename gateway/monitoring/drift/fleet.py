"""Drift windows merged over the members of a fleet (the workers of a host, the replicas on Redis).

Histogram bins add: the fleet's window is the sum of what every member counted, and
the statistics judged on it are those of one process that saw all the traffic. So
each member publishes, per version, the rows and bin counts it has counted since its
layout began (``member_entry``, refreshed by the drift thread), and every member
sums the others' growth since its last reading into windows of its own
(``FleetWindow``). The members' windows close at slightly different moments, so one
of them speaks for the fleet: the leader, the member with the lowest (index,
name) among those counting with the same layout. Its verdict is published with its
counts; every member's report shows it, so ``/drift`` answers the same whichever
process takes the request, and only the leader logs the alerts. Every member keeps
its merged windows running, so when the leader goes the next one takes over with
its windows already full.

A merged count window is fed whole readings, not rows: it closes at the first
reading that brings it to ``pane_rows`` or more (over by at most one exchange
interval's rows). Growth is counted from the second reading of a member on:
a member first seen, or seen again after ``FORGET_S`` away, is taken as a starting
point; a member whose epoch changed (restarted, reference reloaded) or whose
counts went down counts whole.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gateway.core.drift_config import DriftConfig
from gateway.monitoring.drift.histograms import HistogramLayout
from gateway.monitoring.drift.judge import SEVERITY_NAMES
from gateway.monitoring.drift.monitor import AlertEdges, VersionDrift, judge_window, verdict_streams
from gateway.monitoring.drift.window import PaneWindow

FORGET_S = 30.0  # a member not heard from this long is forgotten (it died, or left the fleet)


@dataclass(frozen=True, slots=True)
class MemberCounts:
    """One member's published counts of one version."""

    member: str
    index: int
    key: str  # the layout's fingerprint: only equal keys add
    epoch: str
    rows: int
    counts: np.ndarray
    verdict: dict | None  # its merged verdict (used when it is the leader)
    windows: int  # merged windows it has closed


def member_entry(monitor: VersionDrift, window: FleetWindow | None) -> dict | None:
    """What this member publishes of ``monitor`` (None until it monitors against a reference)."""
    shared = monitor.shared
    if shared is None or monitor.state != "monitoring":
        return None
    rows, counts = shared
    return {"key": monitor.share_key, "epoch": monitor.epoch, "rows": int(rows), "counts": counts.tolist(),
            "verdict": window.latest if window is not None else None,
            "windows": window.windows_closed if window is not None else 0}


def parse_entry(member: str, index: int, doc: dict, width: int) -> MemberCounts | None:
    """A peer's entry, or None when it is malformed or of another width (a peer never breaks the merge)."""
    try:
        counts = np.asarray(doc["counts"], dtype=np.int64)
        if counts.shape != (width,):
            return None
        verdict = doc.get("verdict")
        return MemberCounts(member, int(index), str(doc["key"]), str(doc["epoch"]), int(doc["rows"]), counts,
                            verdict if isinstance(verdict, dict) else None, int(doc.get("windows", 0)))
    except (KeyError, TypeError, ValueError, OverflowError):
        return None


def leader_of(members: list[MemberCounts]) -> MemberCounts:
    return min(members, key=lambda m: (m.index, m.member))


class FleetWindow:
    """The fleet's merged windows of one version, as one member sums them. Runs on the event loop
    (a reading is a vector sum per member; a window's judgement is a few numpy passes)."""

    def __init__(self, model: str, version: str, cfg: DriftConfig, layout: HistogramLayout, key: str,
                 now_ns: int) -> None:
        self.model, self.version, self.cfg, self.layout, self.key = model, version, cfg, layout, key
        w = cfg.window
        pane_ns = round(w.pane_s * 1e9) if w.pane_s is not None else None
        self.window = PaneWindow(layout.width, panes=w.panes, pane_rows=w.pane_rows, pane_ns=pane_ns, start_ns=now_ns)
        self.edges = AlertEdges(model, version, scope="fleet")
        self.latest: dict | None = None  # verdict document: window, rows, closed_unix, severity, streams
        self.windows_closed = 0
        self.rows = 0  # rows merged since this window began
        self._seen: dict[str, tuple[str, int, np.ndarray, float]] = {}  # member -> (epoch, rows, counts, heard)

    def feed(self, members: list[MemberCounts], now_ns: int, log_alerts: bool) -> None:
        """Sum the members' growth since their last reading into the open pane; judge what closes."""
        heard = time.monotonic()
        rows, counts = 0, np.zeros(self.layout.width, dtype=np.int64)
        for m in members:
            if m.key != self.key:
                continue
            prev = self._seen.get(m.member)
            self._seen[m.member] = (m.epoch, m.rows, m.counts, heard)
            if prev is None or heard - prev[3] > FORGET_S:
                continue  # a starting point: what it counted before is not known to be new
            if prev[0] == m.epoch and m.rows >= prev[1]:
                grew = m.counts - prev[2]
                if (grew < 0).any():
                    continue  # not a count this member could have made: skip the reading
                rows += m.rows - prev[1]
                counts += grew
            else:  # restarted (or its reference reloaded): all it has is new
                rows += m.rows
                counts += m.counts
        for gone in [k for k, v in self._seen.items() if heard - v[3] > FORGET_S]:
            del self._seen[gone]
        closed = self.window.advance(now_ns)
        if rows:
            self.rows += rows
            closed += self.window.add_lump(counts, rows, now_ns)
        for w in closed:
            self.windows_closed = w.index
            verdict = judge_window(w, self.layout, self.cfg)
            if verdict is None:
                continue
            self.edges.update(verdict, log=log_alerts)
            self.latest = {"window": verdict.index, "rows": verdict.rows, "closed_unix": round(time.time(), 3),
                           "severity": SEVERITY_NAMES[verdict.severity], "streams": verdict_streams(verdict)}
