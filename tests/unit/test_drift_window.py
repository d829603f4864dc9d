"""Window semantics, stepped by hand: explicit row counts and a fake monotonic clock, no sleeps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gateway.core.drift_config import DriftConfig
from gateway.core.types import TensorSpec
from gateway.monitoring.drift.monitor import VersionDrift
from gateway.monitoring.drift.profile import build_profile
from gateway.monitoring.drift.streams import resolve_streams
from gateway.monitoring.drift.window import PaneWindow

S = 1_000_000_000


def fill(w: PaneWindow, rows: int, now: int = 0, value: int = 1):
    """Count ``rows`` rows (each adding ``value`` to slot 0), split at pane boundaries as the monitor does."""
    closed = []
    while rows:
        room = w.room()
        take = rows if room is None else min(rows, room)
        w.current[0] += take * value
        closed += w.add_rows(take, now)
        rows -= take
    return closed


def test_tumbling_count_window_closes_every_size_and_starts_empty():
    w = PaneWindow(2, panes=1, pane_rows=100)
    assert fill(w, 99) == []
    closed = fill(w, 31)  # crosses the boundary: 1 row closes window 1, 30 start window 2
    assert [(c.index, c.rows, c.counts[0]) for c in closed] == [(1, 100, 100)]
    assert w.current_rows == 30 and w.current[0] == 30
    closed = fill(w, 170)
    assert [(c.index, c.rows, c.counts[0]) for c in closed] == [(2, 100, 100), (3, 100, 100)]
    assert w.current_rows == 0


def test_sliding_count_window_judges_every_step_over_the_last_size():
    w = PaneWindow(1, panes=4, pane_rows=25)  # size 100 rows, step 25
    assert fill(w, 75) == []  # not full yet
    closed = fill(w, 25, value=2)
    assert [(c.index, c.rows, c.counts[0]) for c in closed] == [(1, 100, 75 + 50)]
    closed = fill(w, 50, value=3)  # two steps: the two oldest panes slide out
    assert [(c.index, c.rows, int(c.counts[0])) for c in closed] == [(2, 100, 50 + 50 + 75), (3, 100, 25 + 50 + 150)]


def test_tumbling_time_window_closes_at_the_first_advance_after_its_end():
    w = PaneWindow(1, panes=1, pane_ns=10 * S, start_ns=0)
    fill(w, 40, now=1 * S)
    assert w.advance(9 * S) == []
    fill(w, 10, now=9 * S)
    closed = w.advance(10 * S)
    assert [(c.index, c.rows, c.closed_ns) for c in closed] == [(1, 50, 10 * S)]
    fill(w, 5, now=12 * S)
    # 25 s of silence: window 2 (5 rows) and window 3 (empty) close; window 4 is open until 40 s.
    closed = w.advance(35 * S)
    assert [(c.index, c.rows) for c in closed] == [(2, 5), (3, 0)]
    assert w.advance(39 * S) == []


def test_sliding_time_window_and_a_gap_longer_than_the_window():
    w = PaneWindow(1, panes=3, pane_ns=1 * S, start_ns=0)  # 3 s window, 1 s step
    for t in range(3):
        fill(w, 10 * (t + 1), now=t * S + S // 2)
        closed = w.advance((t + 1) * S)
    assert [(c.index, c.rows) for c in closed] == [(1, 60)]
    fill(w, 100, now=3 * S + 1)
    closed = w.advance(4 * S)
    assert [(c.index, c.rows) for c in closed] == [(2, 20 + 30 + 100)]
    # A 1000 s gap closes the open pane and at most one window's worth of empty panes.
    closed = w.advance(1004 * S)
    assert len(closed) == 1 + 3 and closed[-1].rows == 0
    assert w.advance(1004 * S + 1) == []


def test_a_window_is_count_or_time_based():
    with pytest.raises(ValueError):
        PaneWindow(1, panes=1)
    with pytest.raises(ValueError):
        PaneWindow(1, panes=1, pane_rows=10, pane_ns=S)
    w = PaneWindow(1, panes=1, pane_rows=10)
    with pytest.raises(ValueError, match="do not fit"):
        w.add_rows(11, 0)


# -- the monitor over windows: batches split at window boundaries, judged windows ----------

class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def make_monitor(tmp_path, window: dict, clock) -> VersionDrift:
    cfg = DriftConfig.model_validate({"features": [{"input": "X", "columns": [0, 1]}], "window": window})
    streams = resolve_streams(cfg, (TensorSpec("X", "FP32", (2,)),), (), "model.yaml")
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((4000, 2))
    build_profile({"X_0": (ref[:, 0], False), "X_1": (ref[:, 1], False)}, 10, 100, "test").save(str(tmp_path / "reference.json"))
    return VersionDrift("m", "1", cfg, streams, str(tmp_path / "reference.json"), clock=clock)


def batch(rows: int, shift: float = 0.0, seed: int = 1):
    x = np.random.default_rng(seed).standard_normal((rows, 2)).astype(np.float32)
    x[:, 1] += shift
    return {"X": x}


def test_monitor_tumbling_count_window_splits_batches_at_the_boundary(tmp_path):
    m = make_monitor(tmp_path, {"size_rows": 500, "min_rows": 100}, FakeClock())
    assert m.state == "monitoring"
    for i in range(4):
        m.observe(batch(120, seed=i), {})  # 480 rows: no window yet
    assert m.latest is None and m.windows_closed == 0
    m.observe(batch(120, shift=3.0, seed=9), {})  # 20 rows finish window 1; 100 shifted rows open window 2
    assert m.windows_closed == 1 and m.latest.rows == 500
    by_name = {r.name: r for r in m.latest.streams}
    assert by_name["X_0"].rows == 500 and by_name["X_1"].rows == 500
    m.observe(batch(400, shift=3.0, seed=10), {})
    assert m.windows_closed == 2
    by_name = {r.name: r for r in m.latest.streams}
    assert by_name["X_1"].severity == 2 and by_name["X_0"].severity == 0
    flat = m.flat_metrics()
    assert flat["drift.X_1.severity"] == 2.0 and flat["drift.X_0.severity"] == 0.0
    assert {"drift.X_1.psi", "drift.X_1.ks", "drift.X_1.ks_pvalue", "drift.X_1.jsd"} <= set(flat)


def test_monitor_sliding_count_window_reacts_within_one_step(tmp_path):
    m = make_monitor(tmp_path, {"kind": "sliding", "size_rows": 1000, "step_rows": 200}, FakeClock())
    assert m.cfg.window.judged_rows == 500
    m.observe(batch(1000), {})
    assert m.windows_closed == 1 and m.latest.severity == 0
    m.observe(batch(200, shift=3.0, seed=2), {})  # one step: 20 % of the window is shifted
    assert m.windows_closed == 2
    x1 = {r.name: r for r in m.latest.streams}["X_1"]
    assert x1.rows == 1000 and x1.statistics["psi"] > 0.2


def test_monitor_time_window_judged_on_tick_and_quiet_windows_are_not_judged(tmp_path):
    clock = FakeClock()
    m = make_monitor(tmp_path, {"size_s": 60, "min_rows": 100}, clock)
    clock.now = 10 * S
    m.observe(batch(300), {})
    clock.now = 59 * S
    m.tick()
    assert m.windows_closed == 0
    clock.now = 60 * S
    m.tick()
    assert m.windows_closed == 1 and m.latest.rows == 300
    clock.now = 100 * S
    m.observe(batch(50, shift=3.0), {})  # under min_rows by the end of window 2
    clock.now = 121 * S
    m.tick()
    assert m.windows_closed == 2 and m.latest.index == 1  # window 2 not judged: too few rows


def test_monitor_captures_its_reference_from_the_first_rows(tmp_path):
    cfg = DriftConfig.model_validate({"features": [{"input": "X", "columns": [0, 1]}],
                                      "window": {"size_rows": 200}, "reference": {"capture_rows": 500}})
    streams = resolve_streams(cfg, (TensorSpec("X", "FP32", (2,)),), (), "model.yaml")
    path = tmp_path / "reference.json"
    m = VersionDrift("m", "1", cfg, streams, str(path), clock=FakeClock())
    assert m.state == "capturing"
    m.observe(batch(300), {})
    assert m.state == "capturing" and not path.exists()
    m.observe(batch(300, seed=2), {})  # 200 rows finish the reference, 100 go to window 1
    assert m.state == "monitoring"
    doc = json.loads(path.read_text())
    assert doc["rows"] == 500 and set(doc["streams"]) == {"X_0", "X_1"}
    assert m.window.current_rows == 100
    m.tick()  # the profile it wrote is not taken for a new one
    assert m.state == "monitoring" and m.window.current_rows == 100


def test_monitor_without_reference_waits_and_picks_one_up(tmp_path):
    cfg = DriftConfig.model_validate({"features": [{"input": "X", "columns": [0]}]})
    streams = resolve_streams(cfg, (TensorSpec("X", "FP32", (2,)),), (), "model.yaml")
    path = tmp_path / "reference.json"
    m = VersionDrift("m", "1", cfg, streams, str(path), clock=FakeClock())
    m.observe(batch(100), {})
    assert m.state == "no_reference" and m.flat_metrics() == {} and "gateway drift profile" in m.reason
    build_profile({"X_0": (np.arange(100.0), False)}, 10, 100, "t").save(str(path))
    m.tick()
    assert m.state == "monitoring"
    path.write_text("{not json")
    import os
    os.utime(path, ns=(1, 1))
    m.tick()
    assert m.state == "invalid_reference" and str(path) in m.reason


def test_alerts_are_logged_when_a_severity_changes_not_every_window(tmp_path, caplog):
    m = make_monitor(tmp_path, {"size_rows": 500}, FakeClock())
    caplog.set_level("INFO", logger="gateway.drift")

    def events():
        out = [(r.feature, r.statistic, r.severity, r.levelname) for r in caplog.records if hasattr(r, "statistic")]
        caplog.clear()
        return out

    m.observe(batch(500), {})
    assert events() == []
    m.observe(batch(500, shift=3.0), {})
    assert sorted(events()) == [("X_1", s, "critical", "ERROR") for s in ("jsd", "ks", "psi")]
    m.observe(batch(1000, shift=3.0, seed=3), {})  # two more drifted windows: nothing new to say
    assert m.windows_closed == 4 and events() == []
    m.observe(batch(500, seed=4), {})
    assert sorted(events()) == [("X_1", s, "none", "INFO") for s in ("jsd", "ks", "psi")]
    rec = caplog  # the structured fields ride on the record
    m.observe(batch(500, shift=3.0, seed=5), {})
    psi = next(r for r in rec.records if getattr(r, "statistic", "") == "psi")
    assert (psi.model, psi.version, psi.feature, psi.severity) == ("m", "1", "X_1", "critical")
    assert psi.value == pytest.approx({r.name: r for r in m.latest.streams}["X_1"].statistics["psi"])


# -- the hand-over: the loop appends, the drift thread joins and counts (drained by hand here) --

def test_worker_joins_piled_batches_and_drops_beyond_the_backlog(tmp_path):
    from gateway.monitoring.drift.worker import DriftWorker, coalesce

    cfg = DriftConfig.model_validate({"features": [{"input": "X", "columns": [0, 1]}], "window": {"size_rows": 500},
                                      "queue_batches": 30})
    streams = resolve_streams(cfg, (TensorSpec("X", "FP32", (2,)),), (), "model.yaml")
    make_monitor(tmp_path, {"size_rows": 500}, FakeClock())  # writes reference.json
    m = VersionDrift("m", "1", cfg, streams, str(tmp_path / "reference.json"), clock=FakeClock())
    worker = DriftWorker()
    worker._monitors.add(m)  # no thread: drained below
    for i in range(32):
        worker.submit(m, batch(20, seed=i), {})
    assert len(m.pending) == 30 and m.dropped == 2
    worker.drain()
    assert m.processed == 30 and m.rows_seen == 600 and m.windows_closed == 1 and not m.pending
    assert m.window.current_rows == 100

    a, b = batch(3), batch(2, seed=2)
    joined = coalesce([(a, {}), (b, {})])
    assert len(joined) == 1 and joined[0][0]["X"].shape == (5, 2)
    np.testing.assert_array_equal(joined[0][0]["X"][3:], b["X"])
    ragged = [({"X": np.zeros((1, 2))}, {}), ({"X": np.zeros((1, 3))}, {})]
    assert coalesce(ragged) == ragged
    other_outputs = [(a, {}), (b, {"Y": np.zeros((2, 1))})]
    assert coalesce(other_outputs) == other_outputs


def test_worker_thread_counts_without_being_woken_per_batch(tmp_path):
    from gateway.monitoring.drift.worker import DriftWorker

    m = make_monitor(tmp_path, {"size_rows": 500}, FakeClock())
    worker = DriftWorker(interval_s=0.01)
    worker.register(m)
    try:
        for i in range(25):
            worker.submit(m, batch(20, seed=i), {})
        for _ in range(3000):  # bounded: 30 s
            if m.processed == 25:
                break
            worker._stop.wait(0.01)
        assert m.processed == 25 and m.windows_closed == 1
    finally:
        worker.close()
    assert worker._thread is None
