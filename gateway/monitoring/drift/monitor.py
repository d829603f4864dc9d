"""Drift monitoring of one model version: reference, windows, statistics, alerts.

``observe`` and ``tick`` run on the drift thread only (never on the event loop);
``report`` and ``flat_metrics`` read from any thread what the last judged window
left (an immutable result swapped in whole).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from gateway import native
from gateway.core.drift_config import DriftConfig, PageHinkleyConfig
from gateway.monitoring.drift.histograms import HistogramLayout
from gateway.monitoring.drift.judge import SEVERITY_NAMES, StreamResult, judge_group
from gateway.monitoring.drift.profile import ReferenceProfile, build_profile
from gateway.monitoring.drift.streams import Stream, group_values, tensor_rows
from gateway.monitoring.drift.window import ClosedWindow, PaneWindow

alerts = logging.getLogger("gateway.drift")


@dataclass(frozen=True, slots=True)
class WindowVerdict:
    index: int
    rows: int
    closed_ns: int
    streams: tuple[StreamResult, ...]

    @property
    def severity(self) -> int:
        return max((s.severity for s in self.streams), default=0)


def judge_window(w: ClosedWindow, layout: HistogramLayout, cfg: DriftConfig) -> WindowVerdict | None:
    """The verdict on one closed window, or None when it holds fewer rows than the window judges."""
    if w.rows < cfg.window.judged_rows:
        return None
    results = tuple(
        r
        for profiles, ref_counts, counts, missing in layout.per_group(w.counts)
        for r in judge_group(profiles, ref_counts, counts, missing, cfg.thresholds, cfg.epsilon)
    )
    return WindowVerdict(w.index, w.rows, w.closed_ns, results)


def verdict_streams(verdict: WindowVerdict) -> dict[str, dict]:
    """The per-stream part of a report's ``latest`` (JSON: NaN statistics as None)."""
    return {
        r.name: {
            "kind": "categorical" if r.categorical else "numeric",
            "severity": SEVERITY_NAMES[r.severity],
            "rows": r.rows,
            "missing": r.missing,
            **{k: (None if math.isnan(v) else v) for k, v in r.statistics.items()},
            "alerts": {k: SEVERITY_NAMES[v] for k, v in r.votes.items() if v},
        }
        for r in verdict.streams
    }


_NOT_STATISTICS = frozenset({"kind", "severity", "rows", "missing", "alerts"})


def flat_verdict(streams: dict[str, dict]) -> dict[str, float]:
    """``drift.<stream>.<statistic>`` and ``.severity`` (0/1/2) from ``verdict_streams``' document."""
    out: dict[str, float] = {}
    for name, doc in streams.items():
        for k, v in doc.items():
            if k not in _NOT_STATISTICS and v is not None:
                out[f"drift.{name}.{k}"] = float(v)
        out[f"drift.{name}.severity"] = float(SEVERITY_NAMES.index(doc["severity"]))
    return out


class AlertEdges:
    """Edge-triggered drift alerts: a stream that stays drifted is logged once, not once per window."""

    def __init__(self, model: str, version: str, scope: str = "") -> None:
        self.model, self.version, self.scope = model, version, scope
        self._alerted: dict[tuple[str, str], int] = {}  # (stream, statistic) -> severity last logged

    def clear(self) -> None:
        self._alerted.clear()

    def update(self, verdict: WindowVerdict, log: bool = True) -> None:
        """Follow ``verdict``'s severities; log the changes when ``log`` (the edges are kept either
        way, so a member that starts logging later does not repeat what was already said)."""
        for r in verdict.streams:
            for statistic, severity in r.votes.items():
                key = (r.name, statistic)
                if severity != self._alerted.get(key, 0):
                    self._alerted[key] = severity
                    if log:
                        self._alert(verdict, r, statistic, severity)

    def _alert(self, verdict: WindowVerdict, r: StreamResult, statistic: str, severity: int) -> None:
        value = r.statistics[statistic]
        level = (logging.INFO, logging.WARNING, logging.ERROR)[severity]
        scope = f" ({self.scope})" if self.scope else ""
        alerts.log(
            level,
            "drift %s%s: model %s version %s feature %s %s=%.4g (window %d, %d rows)",
            SEVERITY_NAMES[severity] if severity else "cleared", scope, self.model, self.version, r.name, statistic,
            value, verdict.index, verdict.rows,
            extra={"model": self.model, "version": self.version, "feature": r.name, "statistic": statistic,
                   "value": value, "severity": SEVERITY_NAMES[severity], "window": verdict.index,
                   **({"scope": self.scope} if self.scope else {})},
        )


@dataclass(frozen=True, slots=True)
class FleetView:
    """What the fleet's members agree on for one version (gateway.monitoring.drift.fleet): the
    leader's merged verdict, shown by every member's report instead of its own windows."""

    scope: str  # "fleet": merged over ``members``; "process": the fleet is out of reach
    member: str  # this member (which process answered)
    leader: str
    members: int
    rows: int  # rows counted by the members since their windows began
    windows_closed: int  # merged windows closed by the leader
    latest: dict | None  # the leader's verdict: window, rows, closed_unix, severity, streams


class VersionDrift:
    def __init__(
        self,
        model: str,
        version: str,
        cfg: DriftConfig,
        streams: list[Stream],
        reference_path: str,
        clock: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.model = model
        self.version = version
        self.cfg = cfg
        self.streams = streams
        self.reference_path = reference_path
        self.clock = clock
        self.profile: ReferenceProfile | None = None
        self.layout: HistogramLayout | None = None
        self.window: PaneWindow | None = None
        self.state = "no_reference"  # | "capturing" | "monitoring" | "invalid_reference"
        self.reason = ""
        self.latest: WindowVerdict | None = None
        self.windows_closed = 0
        self.rows_seen = 0
        # Batches handed over by the loop (appended there, popped by the drift thread).
        self.pending: deque[tuple[dict, dict]] = deque()
        self.processed = 0  # batches counted (drift thread)
        self.dropped = 0  # batches refused with a full backlog (loop)
        self.errors = 0
        self._captured: list[np.ndarray] = []
        self._captured_rows = 0
        self.ph = cfg.page_hinkley
        # [n, mean, up, up_min, down, down_max] of the Page-Hinkley detector (unused without one).
        self.ph_state = np.zeros(6, dtype=np.float64)
        self.ph_alarms = 0
        self.edges = AlertEdges(model, version)
        # In a fleet (--workers, state_url) the leader's merged windows are the verdict: this
        # member counts and judges its own share but only the merge alerts.
        self.alerting = True
        self.fleet: FleetView | None = None
        # What a fleet member publishes, refreshed by the drift thread: (rows, bin counts) counted
        # since the layout in force began; ``share_key`` names the layout (same reference, same
        # bins) and ``epoch`` this run of it (a reloaded reference or a restarted member starts over).
        self.share_key = ""
        self.epoch = ""
        self.shared: tuple[int, np.ndarray] | None = None
        self._load_reference()

    # -- reference ------------------------------------------------------------------

    def _reference_mtime(self) -> int:
        try:
            return os.stat(self.reference_path).st_mtime_ns
        except OSError:
            return 0

    def _load_reference(self) -> None:
        self.profile = self.layout = self.window = None
        self.shared = None
        self.state = "no_reference"
        self._loaded_mtime = self._reference_mtime()
        if self._loaded_mtime:
            try:
                self._use(ReferenceProfile.load(self.reference_path))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                self.state, self.reason = "invalid_reference", f"{self.reference_path}: {exc}"
                alerts.error("drift reference of model %s version %s unusable: %s", self.model, self.version, self.reason)
            return
        if self.cfg.reference.capture_rows > 0 and self.streams:
            self.state = "capturing"
            self.reason = f"building the reference from the first {self.cfg.reference.capture_rows} rows"
        else:
            self.reason = f"no reference profile at {self.reference_path} (make one with `gateway drift profile`)"

    def _use(self, profile: ReferenceProfile) -> None:
        self.profile = profile
        self.layout = HistogramLayout(self.streams, profile)
        w = self.cfg.window
        pane_s = w.pane_s
        pane_ns = round(pane_s * 1e9) if pane_s is not None else None
        self.window = PaneWindow(self.layout.width, panes=w.panes, pane_rows=w.pane_rows, pane_ns=pane_ns, start_ns=self.clock())
        self.share_key = self.layout.fingerprint()
        self.epoch = secrets.token_hex(6)
        self.shared = None
        self.state = "monitoring"
        self.reason = f"unprofiled streams: {', '.join(self.layout.unprofiled)}" if self.layout.unprofiled else ""

    def _capture(self, feeds: dict, outputs: dict, rows: int) -> int:
        """Keep reference rows until capture_rows; returns how many rows of this batch it took."""
        want = self.cfg.reference.capture_rows - self._captured_rows
        take = min(want, rows)
        cols = []
        for s in self.streams:
            v = group_values(s.group, feeds, outputs)
            if v is None:
                return 0  # a batch without a watched output cannot serve as reference
            cols.append(v[:take, max(s.column, 0)].astype(np.float64))
        self._captured.append(np.stack(cols, axis=1))
        self._captured_rows += take
        if self._captured_rows >= self.cfg.reference.capture_rows:
            data = np.concatenate(self._captured)
            self._captured = []
            ref = self.cfg.reference
            profile = build_profile(
                {s.name: (data[:, i], s.categorical) for i, s in enumerate(self.streams)},
                ref.bins, ref.max_categories, source=f"captured from the first {len(data)} rows served",
            )
            try:
                profile.save(self.reference_path)
                self._loaded_mtime = self._reference_mtime()
            except OSError as exc:
                alerts.error("drift reference of model %s version %s not saved: %s", self.model, self.version, exc)
            alerts.info("drift reference of model %s version %s captured from %d rows", self.model, self.version, len(data))
            self._use(profile)
        return take

    def _monitoring(self) -> tuple[PaneWindow, HistogramLayout]:
        """The window and layout of state "monitoring" (``_use`` sets the three together)."""
        assert self.state == "monitoring" and self.window is not None and self.layout is not None
        return self.window, self.layout

    # -- the drift thread ---------------------------------------------------------------

    def observe(self, feeds: dict[str, np.ndarray], outputs: dict[str, np.ndarray]) -> None:
        """Count the rows of one batch (or of several joined)."""
        first = next(iter(feeds.values()), None)
        if first is None:
            return
        rows = first.shape[0] if first.ndim else 1
        self.rows_seen += rows
        if self.ph is not None:
            self._page_hinkley(self.ph, outputs)
        start = 0
        if self.state == "capturing":
            start = self._capture(feeds, outputs, rows)
        if self.state != "monitoring" or start >= rows:
            return
        now = self.clock()
        window, layout = self._monitoring()
        closed = window.advance(now)
        values = layout.batch_values(feeds, outputs)
        while start < rows:
            room = window.room()
            stop = rows if room is None else min(rows, start + room)
            layout.count(values, start, stop, window.current)
            closed += window.add_rows(stop - start, now)
            start = stop
        for w in closed:
            self._judge(w, layout)

    def tick(self) -> None:
        """Close time windows that ended while no batch came; pick up a new or changed profile."""
        if self.state != "capturing" and self._reference_mtime() != self._loaded_mtime:
            alerts.info("drift reference of model %s version %s changed: reloading", self.model, self.version)
            self.latest = None
            self.edges.clear()
            self._load_reference()
        if self.state == "monitoring":
            window, layout = self._monitoring()
            if window.pane_ns is not None:
                for w in window.advance(self.clock()):
                    self._judge(w, layout)
            self.shared = window.totals()

    def _page_hinkley(self, ph: PageHinkleyConfig, outputs: dict[str, np.ndarray]) -> None:
        array = outputs.get(ph.output)
        if array is None:
            return
        flat = tensor_rows(array)
        if ph.column >= flat.shape[1]:
            return
        values = np.ascontiguousarray(flat[:, ph.column], dtype=np.float64)
        raised = native.page_hinkley_update(values, self.ph_state, ph.delta, ph.threshold, ph.min_instances, ph.alpha)
        if raised:
            self.ph_alarms += raised
            alerts.error(
                "drift alarm: model %s version %s stream %s_%d page_hinkley change detected (%d alarms in all)",
                self.model, self.version, ph.output, ph.column, self.ph_alarms,
                extra={"model": self.model, "version": self.version, "feature": f"{ph.output}_{ph.column}",
                       "statistic": "page_hinkley", "value": float(self.ph_alarms), "severity": "critical"},
            )

    def _judge(self, w: ClosedWindow, layout: HistogramLayout) -> None:
        self.windows_closed = w.index
        verdict = judge_window(w, layout, self.cfg)
        if verdict is not None:
            self.latest = verdict
            self.edges.update(verdict, log=self.alerting)

    # -- readers ---------------------------------------------------------------------------

    def flat_metrics(self) -> dict[str, float]:
        """``drift.<stream>.<statistic>`` and ``drift.<stream>.severity`` (0/1/2) of the latest judged window."""
        out: dict[str, float] = {}
        fleet, verdict = self.fleet, self.latest
        if fleet is not None:
            if fleet.latest is not None:
                out = flat_verdict(fleet.latest["streams"])
        elif verdict is not None:
            out = flat_verdict(verdict_streams(verdict))
        ph = self.ph
        if ph is not None and self.state != "invalid_reference":
            out[f"drift.{ph.output}_{ph.column}.page_hinkley_alarms"] = float(self.ph_alarms)
        return out

    def report(self) -> dict:
        w = self.cfg.window
        doc: dict = {
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "reason": self.reason,
            "window": {"kind": w.kind, **w.model_dump(exclude={"kind", "min_rows"}, exclude_none=True),
                       "min_rows": w.judged_rows, "panes": w.panes},
            "reference": None,
            "rows_seen": self.rows_seen,
            "batches": self.processed,
            "dropped_batches": self.dropped,
            "errors": self.errors,
            "windows_closed": self.windows_closed,
            "latest": None,
        }
        if self.profile is not None:
            doc["reference"] = {"file": self.reference_path, "rows": self.profile.rows, "source": self.profile.source,
                                "created": self.profile.created}
        elif self.state == "capturing":
            doc["reference"] = {"captured_rows": self._captured_rows, "capture_rows": self.cfg.reference.capture_rows}
        verdict = self.latest
        if verdict is not None:
            doc["latest"] = {
                "window": verdict.index,
                "rows": verdict.rows,
                "age_s": round((self.clock() - verdict.closed_ns) / 1e9, 3),
                "severity": SEVERITY_NAMES[verdict.severity],
                "streams": verdict_streams(verdict),
            }
        fleet = self.fleet
        if fleet is not None:
            # Every member answers with the leader's merged windows; its own are under "member".
            doc["member"] = {"rows_seen": self.rows_seen, "windows_closed": self.windows_closed, "latest": doc["latest"]}
            doc["fleet"] = {"scope": fleet.scope, "member": fleet.member, "leader": fleet.leader,
                            "members": fleet.members, "rows": fleet.rows}
            doc["windows_closed"] = fleet.windows_closed
            doc["latest"] = None
            if fleet.latest is not None:
                latest = {k: v for k, v in fleet.latest.items() if k != "closed_unix"}
                latest["age_s"] = round(max(0.0, time.time() - fleet.latest["closed_unix"]), 3)
                doc["latest"] = latest
        ph = self.ph
        if ph is not None:
            st = self.ph_state
            doc["page_hinkley"] = {
                "stream": f"{ph.output}_{ph.column}",
                "alarms": self.ph_alarms,
                "observations": int(st[0]),
                "mean": float(st[1]),
                "statistic": float(max(st[2] - st[3], st[5] - st[4])),
                "threshold": ph.threshold,
            }
        return doc
