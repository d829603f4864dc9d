"""Drift merged over fleet members, stepped by hand: members' published counts (through JSON, as the
channel carries them) summed into one member's windows, judged as one process seeing all rows."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.spatial.distance

from gateway.core.drift_config import DriftConfig
from gateway.core.types import TensorSpec
from gateway.monitoring.drift.fleet import FleetWindow, MemberCounts, leader_of, member_entry, parse_entry
from gateway.monitoring.drift.monitor import VersionDrift
from gateway.monitoring.drift.profile import ReferenceProfile, build_profile
from gateway.monitoring.drift.streams import resolve_streams

EPS = 1e-4


class FakeClock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def make_monitor(path: str, window: dict, name: str = "1") -> VersionDrift:
    cfg = DriftConfig.model_validate({"features": [{"input": "X", "columns": [0, 1]}], "window": window,
                                      "epsilon": EPS})
    streams = resolve_streams(cfg, (TensorSpec("X", "FP32", (2,)),), (), "model.yaml")
    return VersionDrift("m", name, cfg, streams, path, clock=FakeClock())


@pytest.fixture
def reference(tmp_path) -> str:
    ref = np.random.default_rng(0).standard_normal((4000, 2))
    path = str(tmp_path / "reference.json")
    build_profile({"X_0": (ref[:, 0], False), "X_1": (ref[:, 1], False)}, 10, 100, "test").save(path)
    return path


def rows(n: int, shift: float, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)
    x[:, 1] += shift
    return x


def published(monitor: VersionDrift, member: str, index: int) -> MemberCounts:
    """What a peer reads of ``monitor``: the entry through JSON, parsed back."""
    monitor.tick()  # the drift thread refreshes the shared counts
    doc = json.loads(json.dumps(member_entry(monitor, None)))
    assert monitor.layout is not None
    got = parse_entry(member, index, doc, monitor.layout.width)
    assert got is not None
    return got


def merged_window(monitor: VersionDrift) -> FleetWindow:
    assert monitor.layout is not None
    return FleetWindow("m", "1", monitor.cfg, monitor.layout, monitor.share_key, 0)


def numpy_bins(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)


def numpy_psi(ref: np.ndarray, cur: np.ndarray) -> float:
    p, q = ref / ref.sum(), cur / cur.sum()
    p, q = np.where(p == 0, EPS, p), np.where(q == 0, EPS, q)
    return float(((q - p) * np.log(q / p)).sum())


def test_merged_window_is_one_window_of_all_rows_and_equals_numpy_scipy_pooled(reference):
    window = {"size_rows": 1000, "min_rows": 100}
    a, b, alone = (make_monitor(reference, window, n) for n in ("a", "b", "alone"))
    assert a.share_key == b.share_key and a.epoch != b.epoch
    merged = merged_window(a)
    merged.feed([published(a, "worker 0", 0), published(b, "worker 1", 1)], 0, log_alerts=False)  # starting points

    # 1,000 rows in all, unevenly split: neither member's own window closes, the merged one does.
    parts = [(a, rows(300, 2.0, 1)), (b, rows(450, 2.0, 2)), (a, rows(250, 2.0, 3))]
    for monitor, x in parts:
        monitor.observe({"X": x}, {})
        alone.observe({"X": x}, {})
    assert a.windows_closed == b.windows_closed == 0 and alone.windows_closed == 1
    merged.feed([published(a, "worker 0", 0), published(b, "worker 1", 1)], 0, log_alerts=False)
    assert merged.windows_closed == 1 and merged.latest is not None and merged.latest["rows"] == 1000

    # The same statistics as one process that saw every row ...
    assert alone.latest is not None
    expected = {r.name: r.statistics for r in alone.latest.streams}
    for name, doc in merged.latest["streams"].items():
        for statistic, value in expected[name].items():
            assert doc[statistic] == pytest.approx(value, rel=1e-12, abs=1e-15), (name, statistic)
    assert merged.latest["streams"]["X_1"]["severity"] == "critical"
    assert merged.latest["streams"]["X_0"]["severity"] == "none"

    # ... and as numpy/scipy on the pooled rows, binned independently.
    pooled = np.concatenate([x for _, x in parts])
    profile = ReferenceProfile.load(reference)
    for column, name in enumerate(("X_0", "X_1")):
        p = profile.streams[name]
        cur = numpy_bins(pooled[:, column].astype(np.float64), p.edges)
        assert merged.latest["streams"][name]["psi"] == pytest.approx(numpy_psi(p.counts, cur), rel=1e-9)
        jsd = scipy.spatial.distance.jensenshannon(p.counts, cur, base=2)
        assert merged.latest["streams"][name]["jsd"] == pytest.approx(jsd, rel=1e-9)


def test_growth_is_counted_once_and_a_restarted_member_counts_whole(reference):
    window = {"size_rows": 1000, "min_rows": 100}
    a, b = make_monitor(reference, window, "a"), make_monitor(reference, window, "b")
    merged = merged_window(a)
    merged.feed([published(a, "worker 0", 0), published(b, "worker 1", 1)], 0, log_alerts=False)
    a.observe({"X": rows(400, 0.0, 1)}, {})
    for _ in range(3):  # the same reading again adds nothing
        merged.feed([published(a, "worker 0", 0), published(b, "worker 1", 1)], 0, log_alerts=False)
    assert merged.rows == 400 and merged.window.current_rows == 400
    # worker 1 restarts: a new epoch, its rows since then are all new
    b2 = make_monitor(reference, window, "b")
    b2.observe({"X": rows(100, 0.0, 2)}, {})
    merged.feed([published(a, "worker 0", 0), published(b2, "worker 1", 1)], 0, log_alerts=False)
    assert merged.rows == 500
    # a member with another reference (its own capture) is not added
    other = published(b2, "worker 2", 2)
    foreign = MemberCounts(other.member, other.index, "another-layout", other.epoch, 10**6, other.counts, None, 0)
    merged.feed([published(a, "worker 0", 0), foreign], 0, log_alerts=False)
    merged.feed([published(a, "worker 0", 0), foreign], 0, log_alerts=False)
    assert merged.rows == 500


def test_time_windows_close_on_the_merging_members_clock(reference):
    s = 1_000_000_000
    a, b = (make_monitor(reference, {"size_s": 10, "min_rows": 10}, n) for n in ("a", "b"))
    merged = merged_window(a)
    merged.feed([published(a, "w0", 0), published(b, "w1", 1)], 0, log_alerts=False)
    a.observe({"X": rows(60, 0.0, 1)}, {})
    b.observe({"X": rows(40, 0.0, 2)}, {})
    merged.feed([published(a, "w0", 0), published(b, "w1", 1)], 5 * s, log_alerts=False)
    assert merged.windows_closed == 0
    merged.feed([published(a, "w0", 0), published(b, "w1", 1)], 10 * s, log_alerts=False)
    assert merged.windows_closed == 1 and merged.latest is not None and merged.latest["rows"] == 100


def test_malformed_peer_entries_are_ignored_and_the_leader_is_the_lowest_index(reference):
    a = make_monitor(reference, {"size_rows": 100})
    assert a.layout is not None
    width = a.layout.width
    assert parse_entry("w1", 1, {"key": "k", "epoch": "e", "rows": 1, "counts": [1, 2]}, width) is None
    assert parse_entry("w1", 1, {"key": "k", "epoch": "e", "rows": "x", "counts": [0] * width}, width) is None
    assert parse_entry("w1", 1, {"epoch": "e", "rows": 1, "counts": [0] * width}, width) is None
    good = parse_entry("w1", 1, {"key": "k", "epoch": "e", "rows": 1, "counts": [0] * width}, width)
    assert good is not None
    zero = MemberCounts("w0", 0, "k", "e", 0, good.counts, None, 0)
    replica = MemberCounts("replica b", 0, "k", "e", 0, good.counts, None, 0)
    assert leader_of([good, replica, zero]).member == "replica b"
    assert leader_of([good, zero]).member == "w0"
