"""The replicas' routing state on a real redis-server (gateway.service.fleet_redis): records round
trip and announce themselves, concurrent writers lose nothing, a dead member's counts expire,
Redis down queues changes and answers with a clear error, Redis restarted empty gets the records
back; and two TrafficRouters on one Redis follow each other."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
import redis as redis_sync

from gateway.core.errors import FleetStateUnavailableError
from gateway.core.routing_config import RoutingConfig
from gateway.routing.router import Trip
from gateway.service.fleet_redis import RedisFleetState
from gateway.service.fleet_state import Snapshot
from traffic_helpers import WAIT_S, FakeExecutor, close, make_service, req, until

ROUTING = {"weights": {1: 50, 2: 50}, "champion": 1, "fallback": 1,
           "rollback": {"min_requests": 10, "max_error_rate": 0.5, "window_s": 60}}


def channel(server, **kw) -> RedisFleetState:
    return RedisFleetState(server.url, **{"exchange_s": 0.05, **kw})


async def started(ch: RedisFleetState, doc=dict) -> list[Snapshot]:
    seen: list[Snapshot] = []
    await ch.start(doc, seen.append)
    return seen


def admin(weights: dict) -> RoutingConfig:
    return RoutingConfig.model_validate({"weights": weights})


def test_a_record_round_trips_and_is_announced_to_the_other_member(redis_server):
    async def main():
        a, b = channel(redis_server), channel(redis_server)
        await started(a)
        seen_by_b = await started(b)
        try:
            t0 = time.monotonic()
            written = await a.update("with space/and slash", lambda rec: rec.set_admin(admin({2: 1})))
            assert written.version == 1 and written.writer == a.member and written.admin["weights"] == {"2": 1.0}
            await until(lambda: "with space/and slash" in b.records, "b to read the record")
            took = time.monotonic() - t0
            assert b.records["with space/and slash"] == written  # every field, as written
            assert any("with space/and slash" in s.records for s in seen_by_b)
            assert took < 1.0, took
            unchanged = await b.update("with space/and slash", lambda rec: False)
            assert unchanged.version == 1
            second = await b.update("with space/and slash", lambda rec: rec.set_admin(None))
            assert second.version == 2 and second.admin is None
            await until(lambda: a.records["with space/and slash"].version == 2, "a to read version 2")
            assert a.health()["reachable"] and a.health()["failures"] == 0
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_concurrent_writers_lose_no_change_and_versions_only_grow(redis_server):
    async def main():
        members = [channel(redis_server) for _ in range(3)]
        for m in members:
            await started(m)
        try:
            async def writer(i: int, m: RedisFleetState) -> list[int]:
                versions = []
                for n in range(15):
                    rec = await m.update("m", lambda rec, n=n: rec.add_trip(f"{i}-{n}", Trip(f"from {i}", n)))
                    versions.append(rec.version)
                return versions

            got = await asyncio.wait_for(asyncio.gather(*(writer(i, m) for i, m in enumerate(members))), WAIT_S)
            for versions in got:
                assert versions == sorted(versions) and len(set(versions)) == 15
            final = redis_sync.Redis.from_url(redis_server.url).get("gw:routing:model:m")
            assert final is not None
            await until(lambda: all(m.records.get("m") and m.records["m"].version == 45 for m in members),
                        "every member to read the 45th version")
            assert len(members[0].records["m"].trips) == 45  # every writer's every change is there
            assert sorted(v for vs in got for v in vs) == list(range(1, 46))
        finally:
            for m in members:
                await m.stop()

    asyncio.run(main())


def test_a_dead_members_counts_expire_and_a_stopped_ones_leave_at_once(redis_server):
    async def main():
        doc = {"m": {"record": 0, "windows": {"2": {"requests": 3, "errors": 3, "slow": 0, "compared_rows": 0,
                                                    "disagreed_rows": 0}}, "counters": {}}}
        # Only the dying one's counts may expire in this test: the leaving one's would outlive it.
        dying, leaving, watcher = (channel(redis_server, member_ttl_s=ttl) for ttl in (1.5, 30.0, 30.0))
        await started(dying, lambda: doc)
        await started(leaving, lambda: doc)
        await started(watcher)
        try:
            await until(lambda: len(watcher.peers) == 2, "both members' documents")
            assert {p["member"] for p in watcher.peers} == {dying.member_id, leaving.member_id}
            assert watcher.peers[0]["models"] == doc
            # "Dies": its loops stop without a goodbye, its key outlives it by the TTL only.
            for task in dying._tasks:
                task.cancel()
            await leaving.stop()
            await until(lambda: [p["member"] for p in watcher.peers] == [dying.member_id], "the stopped one gone")
            t0 = time.monotonic()
            await until(lambda: watcher.peers == [], "the dead one's counts to expire")
            assert time.monotonic() - t0 < 1.5 + 1.0  # the TTL at most, give or take a round
            members = redis_sync.Redis.from_url(redis_server.url).smembers("gw:routing:members")
            assert members == {watcher.member_id.encode()}  # pruned
        finally:
            await dying.stop()
            await watcher.stop()

    asyncio.run(main())


def test_redis_down_queues_the_change_with_a_clear_error_and_restarted_empty_gets_the_records_back(redis_server):
    async def main():
        a, b = channel(redis_server, timeout_s=0.3), channel(redis_server, timeout_s=0.3)
        await started(a)
        await started(b)
        try:
            await a.update("m", lambda rec: rec.set_admin(admin({1: 1})))
            await until(lambda: "m" in b.records, "b to read record 1")
            redis_server.stop()
            t0 = time.monotonic()
            with pytest.raises(FleetStateUnavailableError) as err:
                await a.update("m", lambda rec: rec.set_admin(admin({2: 1})))
            assert time.monotonic() - t0 < 0.3 + 0.2  # bounded
            assert "in force on this replica only" in err.value.message and "queued" in err.value.message
            assert "redis://127.0.0.1" in err.value.message
            await until(lambda: not b.reachable and b.peers == [], "b to notice the outage")
            assert a.health()["pending_writes"] == 1 and b.records["m"].version == 1  # last known stays

            redis_server.start()  # same port, empty
            await until(lambda: b.records["m"].version == 2 and b.records["m"].admin["weights"] == {"2": 1.0},
                        "the queued change to reach b")
            assert a.pending == [] and a.reachable and b.reachable
            stored = redis_sync.Redis.from_url(redis_server.url).get("gw:routing:model:m")
            assert b"\"version\": 2" in stored
            assert a.health()["outages"] == 1 and a.health()["failures"] >= 1
        finally:
            await a.stop()
            await b.stop()

    asyncio.run(main())


def test_a_record_redis_lost_is_written_back_so_versions_never_go_backwards(redis_server):
    async def main():
        a = channel(redis_server)
        await started(a)
        try:
            for n in range(3):
                await a.update("m", lambda rec, n=n: rec.set_admin(admin({1: n + 1})))
            redis_sync.Redis.from_url(redis_server.url).flushdb()  # Redis restarted without persistence
            b = channel(redis_server)
            await started(b)
            try:
                await until(lambda: b.records.get("m") is not None and b.records["m"].version == 3,
                            "b to read the written-back record")
                written = await b.update("m", lambda rec: rec.set_admin(None))
                assert written.version == 4  # not 1: a's members would ignore a version 1
                await until(lambda: a.records["m"].version == 4, "a to read version 4")
            finally:
                await b.stop()
        finally:
            await a.stop()

    asyncio.run(main())


def test_starting_while_redis_is_down_is_bounded_and_the_member_joins_when_it_is_back(redis_server):
    async def main():
        redis_server.stop()
        a = channel(redis_server, timeout_s=0.3)
        t0 = time.monotonic()
        await started(a)
        assert time.monotonic() - t0 < 1.0 and not a.reachable and a.records == {}
        try:
            redis_server.start()
            await until(lambda: a.reachable, "a to reach Redis")
            written = await a.update("m", lambda rec: rec.set_admin(None))
            assert written.version == 1
        finally:
            await a.stop()

    asyncio.run(main())


def test_two_traffic_routers_on_one_redis_follow_each_others_changes_and_trip_once(redis_server):
    async def main():
        services = [make_service({"1": FakeExecutor(2.0), "2": FakeExecutor(fails=True)}, ROUTING) for _ in range(2)]
        for service in services:
            await service.routing.join_fleet(channel(redis_server))
        one, two = services
        r1, r2 = one.routing.router_for("m"), two.routing.router_for("m")
        try:
            doc = await one.routing.admin_set("m", {"weights": {"1": 1, "2": 3}})
            assert doc["source"] == "admin" and doc["worker"]["fleet"]["store"] == "redis"
            await until(lambda: r2.source == "admin" and r2.config.weights == {1: 1.0, 2: 3.0}, "replica 2 to follow")
            to_canary = [k for k in (f"k{i}" for i in range(200)) if r1.choose(k, {"1", "2"}, "2") == "2"][:6]
            for key in to_canary:
                for service in services:
                    resp = await asyncio.wait_for(service.infer(req(key=key)), WAIT_S)
                    assert resp.version == "1"
            await until(lambda: "2" in r1.tripped and "2" in r2.tripped, "one rollback on both")
            assert r1.rollbacks == r2.rollbacks == 1 and r1.tripped["2"] == r2.tripped["2"]
            await two.routing.admin_reset("m", ["2"])
            await until(lambda: not r1.tripped, "the reset on replica 1")
            await two.routing.admin_clear("m")
            await until(lambda: r1.source == "file" and r2.source == "file", "both back to the file")
        finally:
            for service in services:
                await service.routing.leave_fleet()
                await close(service)

    asyncio.run(main())


def test_the_password_of_state_url_never_shows():
    async def main():
        ch = RedisFleetState("redis://:hunter2@127.0.0.1:1/0", timeout_s=0.2)
        doc = ch.health()
        assert "hunter2" not in json.dumps(doc) and doc["url"] == "redis://***@127.0.0.1:1/0"
        with pytest.raises(FleetStateUnavailableError) as err:
            await ch.update("m", lambda rec: None)
        assert "hunter2" not in err.value.message and "***@127.0.0.1:1" in err.value.message
        await ch.stop()

    asyncio.run(main())
