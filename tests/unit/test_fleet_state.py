"""The fleet's routing state (--workers N), in-process: the guard on summed windows (fake clock),
the versioned records and how a router applies them, and two TrafficRouters on one directory."""

from __future__ import annotations

import asyncio
import json
import re
import random

import pytest

from gateway.core.routing_config import RollbackConfig, RoutingConfig
from gateway.routing.guard import RollbackGuard, WindowCounts
from gateway.routing.router import Router, Trip
from gateway.service.fleet_state import (
    FleetState,
    RoutingRecord,
    apply_record,
    fingerprint,
    peer_counters,
    peer_windows,
    worker_entry,
)
from traffic_helpers import WAIT_S, FakeExecutor, close, make_service, req, until

S = 1_000_000_000
ROUTING = {"weights": {1: 50, 2: 50}, "champion": 1, "fallback": 1,
           "rollback": {"min_requests": 10, "max_error_rate": 0.5, "window_s": 60}}


def guarded_router() -> Router:
    return Router("m", RoutingConfig.model_validate(ROUTING), random.Random(0))


# ------------------------------------------------------------------ the guard on summed windows


def test_the_verdict_is_on_the_sum_of_this_window_and_the_peers():
    guard = RollbackGuard(RollbackConfig(min_requests=10, max_error_rate=0.5, window_s=60))
    for i in range(6):
        assert guard.record_result("2", i, False, 0) is None  # 6 < min_requests here
    guard.set_peer_counts("2", WindowCounts(requests=4, errors=4))
    reason = guard.judge("2", 10)
    assert reason and "(10 of 10 requests" in reason
    assert guard.counts("2", 10).requests == 6 and guard.fleet_counts("2", 10).requests == 10
    # Peers that answer well dilute the error rate: the fleet's rate is judged, not this share.
    guard.set_peer_counts("2", WindowCounts(requests=30, errors=0))
    assert guard.judge("2", 10) is None and guard.record_result("2", 11, False, 0) is None
    guard.clear("2")
    assert guard.fleet_counts("2", 12) == WindowCounts()


def test_window_counts_round_trip_and_sum():
    c = WindowCounts(1, 2, 3, 4, 5)
    assert WindowCounts.from_json(json.loads(json.dumps(c.to_json()))) == c
    assert WindowCounts.total([c, c]) == WindowCounts(2, 4, 6, 8, 10) and c.plus(None) == c


def test_judge_fleet_trips_on_peer_counts_and_announces_only_its_own_trips():
    r = guarded_router()
    announced: list[tuple[str, Trip]] = []
    r.on_trip = lambda v, trip: announced.append((v, trip))
    for _ in range(3):
        r.record_result("2", False, 0, 1 * S)
    assert r.guard_windows(1 * S)["2"].requests == 3
    r.judge_fleet({"2": WindowCounts(requests=7, errors=7)}, 2 * S)
    assert set(r.tripped) == {"2"} and r.rollbacks == 1
    assert [v for v, _ in announced] == ["2"] and "(10 of 10 requests" in announced[0][1].reason
    assert r.guard_windows(3 * S) == {}  # a tripped canary is no longer published
    other = guarded_router()
    other.on_trip = lambda v, trip: announced.append((v, trip))
    other.trip("2", "decided elsewhere", 2 * S, announce=False)
    assert len(announced) == 1 and other.rollbacks == 1


# ------------------------------------------------------------------ records and their application


def record_with(**changes) -> RoutingRecord:
    rec = RoutingRecord(file=fingerprint(RoutingConfig.model_validate(ROUTING)))
    for k, v in changes.items():
        setattr(rec, k, v)
    return rec


def test_a_record_round_trips_the_first_trip_stands_and_a_reset_removes_it():
    rec = record_with(version=4)
    assert rec.add_trip("2", Trip("first", 5)) and not rec.add_trip("2", Trip("second", 6))
    assert rec.trips["2"]["reason"] == "first" and rec.trips["2"]["record"] == 5
    again = RoutingRecord.from_json(json.loads(json.dumps(rec.to_json())))
    assert again == rec
    rec.reset(None)
    assert rec.trips == {} and rec.resets == {"2": 5}
    rec.admin = {"weights": {"2": 1.0}}
    rec.voided_for(None)  # another model.yaml routing section: nothing of the old one holds
    assert rec.admin is None and rec.resets == {} and rec.file is None and rec.version == 4


def test_apply_record_sets_and_clears_the_admin_config_and_applies_trips_and_resets_once():
    r = guarded_router()
    admin = RoutingConfig.model_validate({**ROUTING, "weights": {1: 10, 2: 90}})
    rec = record_with(version=1, admin=admin.model_dump(mode="json"))
    assert apply_record(r, rec, 0) and r.source == "admin" and r.effective_weights() == {"1": 10.0, "2": 90.0}
    assert not apply_record(r, rec, 1)  # nothing new
    rec.version = 2
    rec.add_trip("2", Trip("tripped on worker 1", 7 * S))
    assert apply_record(r, rec, 1)
    assert r.tripped["2"] == Trip("tripped on worker 1", 7 * S) and r.rollbacks == 1
    assert not apply_record(r, rec, 2) and r.rollbacks == 1  # applied once
    rec.reset(["2"])
    rec.version = 3
    rec.admin = None
    assert apply_record(r, rec, 2) and not r.tripped and r.source == "file"
    # A reset this router has already applied does not undo a later trip of its own guard.
    r.trip("2", "own guard", 9 * S)
    assert not apply_record(r, rec, 3) and "2" in r.tripped


def test_two_trips_at_once_end_as_one_rollback_with_the_records_reason():
    r = guarded_router()
    r.trip("2", "this worker's verdict", 5 * S)
    rec = record_with(version=1)
    rec.add_trip("2", Trip("the other worker's verdict, written first", 4 * S))
    assert apply_record(r, rec, 0)
    assert r.tripped["2"].reason == "the other worker's verdict, written first" and r.rollbacks == 1


# ------------------------------------------------------------------ the channel


def test_updates_are_versioned_and_each_worker_reads_the_others(tmp_path):
    a, b = FleetState(str(tmp_path), 0), FleetState(str(tmp_path), 1)
    first = a.update_blocking("m", lambda rec: rec.set_admin(RoutingConfig.model_validate({"weights": {2: 1}})))
    assert first.version == 1 and first.written_by == 0
    unchanged = b.update_blocking("m", lambda rec: False)
    assert unchanged.version == 1
    second = b.update_blocking("m", lambda rec: rec.set_admin(None))
    assert second.version == 2 and second.admin is None and second.written_by == 1
    r = guarded_router()
    for _ in range(4):
        r.record_result("2", False, 0, 1 * S)
    a._poll_blocking({"pid": 1, "index": 0, "models": {"m": worker_entry(r, 1, 1 * S)}})
    seen_by_b = b._poll_blocking({"pid": 2, "index": 1, "models": {"m": worker_entry(r, 2, 1 * S)}})
    seen_by_a = a._poll_blocking({"pid": 1, "index": 0, "models": {"m": worker_entry(r, 1, 1 * S)}})
    assert seen_by_a.records["m"].version == 2 and [p["index"] for p in seen_by_a.peers] == [1]
    assert [p["index"] for p in seen_by_b.peers] == [0]
    # Only peers that have applied the record this worker has count: b applied 2, a only 1.
    assert peer_windows(seen_by_a.peers, "m", 2)["2"] == WindowCounts(requests=4, errors=4)
    assert peer_windows(seen_by_b.peers, "m", 2) == {}
    assert peer_counters(seen_by_a.peers, "m")["2"]["failed"] == 4
    assert not (tmp_path / "routing" / "worker-0.json.tmp").exists()


def test_two_traffic_routers_on_one_directory_follow_each_others_admin_changes_resets_and_trips(tmp_path):
    async def main():
        services = [make_service({"1": FakeExecutor(2.0), "2": FakeExecutor(fails=True)}, ROUTING) for _ in range(2)]
        for i, service in enumerate(services):
            await service.routing.join_fleet(FleetState(str(tmp_path), i))
        one, two = services
        r1, r2 = one.routing.router_for("m"), two.routing.router_for("m")
        try:
            doc = await one.routing.admin_set("m", {"weights": {"1": 1, "2": 3}})
            assert doc["source"] == "admin" and doc["worker"]["index"] == 0
            await until(lambda: r2.source == "admin" and r2.config.weights == {1: 1.0, 2: 3.0}, "worker 1 to follow")
            # Canary failures split over both: neither has min_requests (10) alone, the sum has.
            to_canary = [k for k in (f"k{i}" for i in range(200)) if r1.choose(k, {"1", "2"}, "2") == "2"][:6]
            for key in to_canary:
                for service in services:
                    resp = await asyncio.wait_for(service.infer(req(key=key)), WAIT_S)
                    assert resp.version == "1"  # the fallback's answer
            assert r1.counters["2"].failed == r2.counters["2"].failed == 6
            # Both may trip on their own at once; the record's first trip then stands on both.
            await until(lambda: "2" in r1.tripped and "2" in r2.tripped and r1.tripped["2"] == r2.tripped["2"],
                        "one rollback, the same on both")
            assert r1.rollbacks == r2.rollbacks == 1
            judged = int(re.search(r"\((\d+) of \d+ requests", r1.tripped["2"].reason).group(1))
            assert 10 <= judged <= 12  # more than either worker's 6: the verdict was on the sum
            await until(lambda: two.routing.status("m")["versions"]["1"]["routed"]
                        + two.routing.status("m")["versions"]["2"]["routed"] == 12, "summed counters")
            await two.routing.admin_reset("m", ["2"])
            await until(lambda: not r1.tripped, "the reset on worker 0")
            await two.routing.admin_clear("m")
            await until(lambda: r1.source == "file" and r2.source == "file", "both back to the file")
        finally:
            for service in services:
                await service.routing.leave_fleet()
                await close(service)

    asyncio.run(main())


def test_without_a_fleet_the_admin_calls_stay_in_this_process():
    async def main():
        service = make_service({"1": FakeExecutor(), "2": FakeExecutor()}, {"weights": {1: 1}})
        doc = await service.routing.admin_set("m", {"weights": {"2": 1}})
        assert doc["source"] == "admin" and "worker" not in doc and service.routing.fleet is None
        assert (await service.routing.admin_clear("m"))["source"] == "file"
        await close(service)

    asyncio.run(main())


@pytest.mark.parametrize("model", ["m", "with space/and slash"])
def test_record_files_name_any_model(tmp_path, model):
    fleet = FleetState(str(tmp_path), 0)
    fleet.update_blocking(model, lambda rec: rec.set_admin(None))
    assert list(fleet._poll_blocking({"models": {}}).records) == [model]


def test_a_changed_model_yaml_voids_the_fleets_overrides_on_every_worker(tmp_path):
    async def main():
        services = [make_service({"1": FakeExecutor(), "2": FakeExecutor()}, {"weights": {1: 1}}) for _ in range(2)]
        for i, service in enumerate(services):
            await service.routing.join_fleet(FleetState(str(tmp_path), i))
        one, two = services
        try:
            await one.routing.admin_set("m", {"weights": {"2": 1}})
            await until(lambda: two.routing.router_for("m").source == "admin", "worker 1 to follow")
            # model.yaml's routing section changes (each worker sees it at its own scan).
            for service in services:
                changed = service.models.serving["m"]["1"].config.model_copy(
                    update={"routing": RoutingConfig.model_validate({"weights": {1: 1, 2: 1}})})
                for lv in service.models.serving["m"].values():
                    lv.config = changed
            for service in services:
                router = service.routing.router_for("m")
                assert router.source == "file" and router.config.weights == {1: 1.0, 2: 1.0}
            # The old record stays void through later polls, and a new change is for the new file.
            readings = [s.routing.fleet.records for s in services]
            await until(lambda: all(s.routing.fleet.records is not r for s, r in zip(services, readings)),
                        "a poll on both workers")
            assert all(s.routing.router_for("m").source == "file" for s in services)
            await two.routing.admin_set("m", {"weights": {"1": 1}})
            await until(lambda: one.routing.router_for("m").config.weights == {1: 1.0}, "worker 0 to follow")
        finally:
            for service in services:
                await service.routing.leave_fleet()
                await close(service)

    asyncio.run(main())
