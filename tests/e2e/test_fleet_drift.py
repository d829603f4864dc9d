"""Drift merged over the fleet: ``--workers 2`` (one host) and two replicas on one redis-server.

One window's worth of rows in total, spread over the members, closes one merged window whose
verdict every member reports; ``/drift`` answers the same whichever member takes the request;
with Redis killed the replicas judge their own traffic (logged once) and merge again after.
Every HTTP call is a new connection (urllib), which the kernel may hand to either worker.
"""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest

from daemons import Gateway
from test_drift import FEATURES, send, write_repo

WAIT_S = 60
WINDOW_ROWS = 500


def drift(gw) -> dict:
    code, doc = gw.http_json("GET", "/v2/models/mlp/versions/1/drift")
    assert code == 200, doc
    return doc


def verdict(doc: dict) -> dict:
    """What must agree across members: the merged verdict (its age aside) and who gave it. (``fleet.rows``
    is each member's own reading of the others' counts, up to one exchange old: not compared.)"""
    latest = dict(doc["latest"] or {})
    latest.pop("age_s", None)
    return {"latest": latest, "windows_closed": doc["windows_closed"], "leader": doc["fleet"]["leader"],
            "scope": doc["fleet"]["scope"]}


def every_member(gateways, predicate, what: str, members: int = 2) -> dict[str, dict]:
    """The latest /drift of each member (by name), once every member's satisfies ``predicate``."""
    latest: dict[str, dict] = {}
    deadline = time.monotonic() + WAIT_S
    while True:
        for gw in gateways:
            doc = drift(gw)
            if doc.get("fleet"):
                latest[doc["fleet"]["member"]] = doc
        if len(latest) == members and all(predicate(d) for d in latest.values()):
            return latest
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S}s waiting for {what}: "
                                 + repr({m: verdict(d) for m, d in latest.items()}))
        time.sleep(0.05)


def send_window(gateways, rng, rows: int = WINDOW_ROWS, per_request: int = 25) -> None:
    """``rows`` rows with feature INPUT_2 shifted by +3 sd, in small requests over every gateway."""
    for i in range(rows // per_request):
        send(gateways[i % len(gateways)], rng, per_request, shift=3.0)


def check_one_merged_window(members: dict[str, dict]) -> None:
    for doc in members.values():
        latest = doc["latest"]
        assert doc["fleet"]["scope"] == "fleet" and doc["fleet"]["members"] == 2
        assert doc["windows_closed"] == 1 and WINDOW_ROWS <= latest["rows"] < 2 * WINDOW_ROWS, verdict(doc)
        severities = {f: latest["streams"][f]["severity"] for f in FEATURES}
        assert severities["INPUT_2"] == "critical", severities
        assert all(severities[f] != "critical" for f in FEATURES if f != "INPUT_2"), severities
    own = [doc["member"] for doc in members.values()]
    # The window is the fleet's: the members' own rows add up to it, and neither filled one alone.
    assert sum(m["rows_seen"] for m in own) == WINDOW_ROWS
    assert all(m["windows_closed"] == 0 for m in own if m["rows_seen"] < WINDOW_ROWS)
    assert len({json_key(verdict(d)) for d in members.values()}) == 1


def json_key(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True)


def check_identical_answers(gateways, n: int = 20) -> None:
    answers = [json_key(verdict(drift(gateways[i % len(gateways)]))) for i in range(n)]
    assert len(set(answers)) == 1, answers


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    root = write_repo(tmp_path_factory.mktemp("fleet_drift") / "models")
    gw = Gateway(root, "--workers", "2")
    yield gw
    assert gw.terminate() == 0
    assert "Traceback" not in gw.log()


def test_workers_one_window_in_total_is_judged_once_and_every_worker_reports_it(workers):
    every_member([workers], lambda d: d["state"] == "monitoring" and d["fleet"]["members"] == 2, "both workers")
    send_window([workers], np.random.default_rng(1))
    members = every_member([workers], lambda d: d["windows_closed"] >= 1 and d["member"]["rows_seen"] > 0,
                           "the merged window on both workers, each having served rows")
    check_one_merged_window(members)
    check_identical_answers([workers])
    # Only the leader logs the alerts: once for the host (a line per statistic), not once per worker.
    alerts = re.findall(r"\[(worker \d)\] gateway\.drift: drift critical \(fleet\): model mlp version 1 feature "
                        r"INPUT_2 (\w+)=", workers.log())
    statistics = [statistic for _, statistic in alerts]
    assert statistics and len(statistics) == len(set(statistics)), alerts
    assert len({worker for worker, _ in alerts}) == 1, alerts


def test_replicas_merge_on_redis_and_judge_alone_while_it_is_down(tmp_path, start_gateway, redis_server):
    root = write_repo(tmp_path / "models")
    replicas = [start_gateway(root, "--state-url", redis_server.url) for _ in range(2)]
    every_member(replicas, lambda d: d["state"] == "monitoring" and d["fleet"]["members"] == 2, "both replicas")
    send_window(replicas, np.random.default_rng(2))
    members = every_member(replicas, lambda d: d["windows_closed"] >= 1, "the merged window on both replicas")
    check_one_merged_window(members)
    check_identical_answers(replicas)

    redis_server.stop()
    every_member(replicas, lambda d: d["fleet"]["scope"] == "process" and d["fleet"]["members"] == 1,
                 "each replica judging alone")
    rng = np.random.default_rng(3)
    for i in range(20):  # serving goes on
        send(replicas[i % 2], rng, 5)
    for gw in replicas:
        gw.wait_for_log(re.compile(r"drift: the fleet's state store is out of reach"), WAIT_S)

    redis_server.start()  # same port, empty
    t0 = time.monotonic()
    every_member(replicas, lambda d: d["fleet"]["scope"] == "fleet" and d["fleet"]["members"] == 2,
                 "both replicas merging again")
    print(f"\ndrift merged again {time.monotonic() - t0:.2f} s after Redis answered")
    for gw in replicas:
        assert len(re.findall(r"drift: the fleet's state store is out of reach", gw.log())) == 1
    # Each judged alone meanwhile; merged again, both answer with the leader's verdict.
    every_member(replicas, lambda d: d["fleet"]["leader"] == min(members), "the leader's verdict on both")
    check_identical_answers(replicas)
