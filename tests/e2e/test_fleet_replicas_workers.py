"""Two replicas, each ``--workers 2``, on one redis-server (four workers, two hosts' worth): an admin
routing change answered by one worker of replica a is in force on every worker of replica b (and on
a's other worker) within a bounded time, measured here.

Each worker is a member of the fleet on its own (its own Redis connections, pub/sub subscription and
member key), so a change reaches every process in one hop; no worker relays for another.
"""

from __future__ import annotations

import json
import re
import time
import urllib.request

import make_models
from test_fleet_replicas import AUTH, TOKEN, admin, status
from test_routing import ALL, write_model

WAIT_S = 30
MODEL = "mlp_admin"
PATH = f"/v2/admin/models/{MODEL}/routing"
# "[worker 1] gateway.service.traffic: fleet: model mlp_admin routing record 3 of replica h/1/ab applied 0.004 s after ..."
_APPLIED = re.compile(r"\[worker (\d)\] \S+: fleet: model mlp_admin routing record (\d+) of replica \S+ applied "
                      r"([\d.]+) s after it was written")


def routing_on_a_new_connection(gw) -> dict:
    """GET /v2/models/{m}/routing on a connection of its own (the kernel picks the worker)."""
    req = urllib.request.Request(f"http://{gw.http_url}/v2/models/{MODEL}/routing", headers={"Connection": "close"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def every_worker(gw, predicate, what: str, workers: int = 2) -> dict[int, dict]:
    """Status documents from each worker of ``gw`` (by pid), each satisfying ``predicate``."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + WAIT_S
    while len(seen) < workers:
        doc = routing_on_a_new_connection(gw)
        if predicate(doc):
            seen[doc["worker"]["pid"]] = doc
        assert time.monotonic() < deadline, f"{what}: only {len(seen)} of {workers} workers after {WAIT_S}s"
    return seen


def applied_lines(gw, start: int) -> dict[int, tuple[int, float]]:
    """worker index -> (record version, delay it logged) of the records applied since line ``start``."""
    out = {}
    for line in gw.lines[start:]:
        m = _APPLIED.search(line)
        if m:
            out[int(m.group(1))] = (int(m.group(2)), float(m.group(3)))
    return out


def test_an_admin_change_on_one_replica_is_in_force_on_every_worker_of_the_other(tmp_path, start_gateway, redis_server):
    root = tmp_path / "models"
    write_model(root, MODEL, {1: make_models.mlp_graph(0), 2: make_models.mlp_graph(1)},
                "max_batch_size: 32\n" + ALL + "routing:\n  weights: {1: 1}\n")
    flags = ("--workers", "2", "--state-url", redis_server.url, "--admin-token", TOKEN)
    a, b = start_gateway(root, *flags), start_gateway(root, *flags)
    for gw in (a, b):  # four members of one fleet, seen from every worker
        every_worker(gw, lambda d: d["worker"]["workers"] == 4 and d["worker"]["fleet"]["store"] == "redis",
                     "four members")

    seen_by_test, logged = [], []
    for n, weights in enumerate([{"2": 1}, {"1": 1, "2": 2}, {"1": 3, "2": 1}, {"2": 1}, {"1": 1}]):
        start_a, start_b = len(a.lines), len(b.lines)
        t0 = time.monotonic()
        code, doc = admin(a, "PUT", PATH, {"weights": weights})
        assert code == 200 and doc["source"] == "admin", doc
        writer = doc["worker"]["index"]
        # Both workers of b say they applied it (each logs once per record it applies).
        deadline = t0 + WAIT_S
        while True:
            mark = len(b.lines)  # a line after this wakes the wait; one before it is in on_b
            on_b = applied_lines(b, start_b)
            if len(on_b) == 2:
                break
            assert time.monotonic() < deadline, f"change {n}: applied on b's workers {sorted(on_b)} only"
            b.wait_for_log(_APPLIED, timeout=max(0.1, deadline - time.monotonic()), start=mark)
        seen_by_test.append(time.monotonic() - t0)
        assert len({version for version, _ in on_b.values()}) == 1, on_b  # one record, the same on both
        logged.extend(delay for _, delay in on_b.values())
        # a's other worker too (the one that took the call logs nothing: the record is its own).
        other = a.wait_for_log(re.compile(rf"\[worker {1 - writer}\] \S+: fleet: model {MODEL} routing record"),
                               WAIT_S, start_a)
        assert other
        # And it is what every worker of b answers with.
        want = {k: float(v) for k, v in weights.items()}
        docs = every_worker(b, lambda d: d["config"]["weights"] == want and d["source"] == "admin", f"change {n} on b")
        assert {d["worker"]["index"] for d in docs.values()} == {0, 1}

    seen_by_test.sort()
    logged.sort()
    print(f"\nadmin change on replica a (--workers 2) in force on both workers of replica b (--workers 2): "
          f"as logged by b's workers: median {logged[len(logged) // 2] * 1000:.1f} ms, max {logged[-1] * 1000:.1f} ms "
          f"over {len(logged)} applications; seen by the test (from sending the PUT to both log lines read): median "
          f"{seen_by_test[len(seen_by_test) // 2] * 1000:.0f} ms, max {seen_by_test[-1] * 1000:.0f} ms")
    assert logged[-1] < 1.0 and seen_by_test[-1] < 2.0, (logged, seen_by_test)

    code, doc = admin(b, "DELETE", PATH)
    assert code == 200 and doc["source"] == "file"
    for gw in (a, b):
        every_worker(gw, lambda d: d["source"] == "file", "the file's routing again")
    assert a.terminate() == 0 and b.terminate() == 0
