"""--workers N, in-process: max_concurrent_requests split between the workers (the shares sum to the
configured limit), the refusal naming the share, and the scheduler gauges summed over the workers'
snapshots (a stale snapshot adds nothing)."""

from __future__ import annotations

import json
import os
import time

import pytest

from gateway.api.limits import ConcurrencyGate, RequestLimits, concurrency_shares
from gateway.core.errors import TooManyRequestsError
from gateway.core.settings import ServerSettings
from gateway.service.worker_stats import GAUGE_MAX_AGE_S, WorkerStats


@pytest.mark.parametrize(
    ("limit", "workers", "shares"),
    [
        (4, 2, (2, 2)),
        (5, 2, (3, 2)),
        (7, 3, (3, 2, 2)),
        (8, 3, (3, 3, 2)),
        (4, 1, (4,)),
        (0, 3, (0, 0, 0)),  # no limit stays no limit
        (2, 3, (1, 1, 1)),  # at least one each: the host admits 3, not 2 (the supervisor warns)
    ],
)
def test_shares_of_the_host_limit(limit, workers, shares):
    assert concurrency_shares(limit, workers) == shares
    if limit >= workers:
        assert sum(shares) == limit
    assert max(shares) - min(shares) <= 1


def test_shares_sum_to_the_limit_for_every_split():
    for workers in range(1, 17):
        for limit in range(workers, 200):
            shares = concurrency_shares(limit, workers)
            assert sum(shares) == limit and len(shares) == workers and min(shares) >= 1
    with pytest.raises(ValueError):
        concurrency_shares(4, 0)


def test_each_worker_admits_its_share_and_says_so():
    settings = ServerSettings(max_concurrent_requests=5, workers=2)
    alone = RequestLimits.from_settings(settings)
    assert alone.max_concurrent_requests == 5 and alone.concurrency_words() == "max_concurrent_requests 5"
    first, second = (RequestLimits.from_settings(settings, i, 2) for i in range(2))
    assert (first.max_concurrent_requests, second.max_concurrent_requests) == (3, 2)
    gate = ConcurrencyGate(second.max_concurrent_requests, second.concurrency_words())
    gate.enter()
    gate.enter()
    with pytest.raises(TooManyRequestsError) as err:
        gate.enter()
    assert "this worker's share 2 of max_concurrent_requests 5 (2 workers)" in str(err.value)
    assert gate.refused == 1 and gate.active == 2


def _publish(directory, index: int, gauges: dict, at: float) -> None:
    with open(os.path.join(directory, f"worker-{index}.json"), "w", encoding="utf-8") as fh:
        json.dump({"pid": 1, "at": at, "models": {}, "gauges": gauges}, fh)


def test_peer_gauges_sum_the_other_workers_fresh_snapshots(tmp_path):
    now = time.monotonic()
    _publish(tmp_path, 0, {"m": {"1": [9, 9, 9]}}, now)  # this worker's own file: never counted
    _publish(tmp_path, 1, {"m": {"1": [3, 1, 1]}}, now)
    _publish(tmp_path, 2, {"m": {"1": [2, 1, 0]}, "other": {"1": [5, 5, 5]}}, now)
    _publish(tmp_path, 3, {"m": {"1": [7, 1, 1]}}, now - GAUGE_MAX_AGE_S - 1)  # a dead worker's last word
    _publish(tmp_path, 4, {"m": {"2": [4, 1, 1]}}, now)  # serves another version only
    (tmp_path / "worker-5.json").write_text("{not json")  # half a write never happens (os.replace), but be safe
    stats = WorkerStats(str(tmp_path), 0)
    assert stats.peer_gauges("m", "1") == (5, 2, 1)
    assert stats.peer_gauges("m", "2") == (4, 1, 1)
    assert stats.peer_gauges("absent", "1") == (0, 0, 0)


def test_fresh_statistics_never_signal_a_process_that_is_not_a_sibling_worker(tmp_path):
    """A statistics request asks the other workers for a snapshot with SIGUSR1, whose default action
    ends a process: a pid from a stale snapshot, or one whose parent is not this worker's supervisor
    (a reused pid), is never signalled; the request then answers with what it has, within its bound."""
    import asyncio
    import subprocess

    from gateway.service.worker_stats import FRESH_WAIT_S

    # Our children: their parent is this process, not our parent (the supervisor's place).
    children = [subprocess.Popen(["sleep", "30"]) for _ in range(2)]
    try:
        now = time.monotonic()
        for index, (child, at) in enumerate(zip(children, (now, now - GAUGE_MAX_AGE_S - 1)), start=1):
            with open(os.path.join(tmp_path, f"worker-{index}.json"), "w", encoding="utf-8") as fh:
                json.dump({"pid": child.pid, "at": at, "models": {}, "gauges": {}}, fh)
        started = time.monotonic()
        docs = asyncio.run(WorkerStats(str(tmp_path), 0).fresh_peer_docs())
        assert time.monotonic() - started < FRESH_WAIT_S  # nobody was asked, so nothing was waited for
        assert sorted(d["pid"] for d in docs) == sorted(c.pid for c in children)
        assert [c.poll() for c in children] == [None, None]  # not signalled: still running
    finally:
        for child in children:
            child.kill()
            child.wait()
