"""The service facade with routing, in-process: real schedulers, fake executors the test gates or breaks."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.core.errors import ExecutorError, InvalidInputError
from gateway.core.model_config import ModelConfig
from gateway.core.types import InferRequest

from traffic_helpers import WAIT_S, FakeExecutor, close, make_service, pair, req, until


def test_a_blocked_shadow_never_delays_live_answers_and_its_full_queue_drops_and_counts():
    async def main():
        shadow = FakeExecutor(scale=3.0, gated=True)
        service = make_service(
            {"1": FakeExecutor(2.0), "2": shadow},
            {"weights": {1: 1}, "shadows": [{"version": 2}], "shadow_queue_size": 2},
        )
        async with service.shadows:
            for i in range(6):
                resp = await asyncio.wait_for(service.infer(req((i, i + 1.0), key=f"k{i}")), WAIT_S)
                assert resp.version == "1" and resp.outputs["y"].tolist() == [[2.0 * i, 2.0 * i + 2]]
            # Every live answer came back while the shadow version has not answered once.
            assert shadow.runs == 0
            p = pair(service, "1", "2")
            assert p["sent"] == 2 and p["dropped"] == 4 and p["compared"] == 0
            assert service.routing.status("m")["shadow_queue"] == {"size": 2, "pending": 2}
            shadow.gate.set()
            await until(lambda: pair(service, "1", "2")["compared"] == 2, "shadow comparisons")
            p = pair(service, "1", "2")
            assert p["agreement_exact"] == 0.0 and p["agreement_argmax"] == 1.0
            assert p["mean_abs_diff"] == pytest.approx(np.mean([0, 1, 1, 2]), rel=1e-6)  # |2x - 3x| for x in 0,1 / 1,2
            assert service.routing.status("m")["shadow_queue"]["pending"] == 0
        await close(service)

    asyncio.run(main())


def test_shadows_are_dropped_and_counted_when_the_dispatcher_is_not_running():
    async def main():
        service = make_service({"1": FakeExecutor(), "2": FakeExecutor()}, {"weights": {1: 1}, "shadows": [{"version": 2}]})
        resp = await asyncio.wait_for(service.infer(req()), WAIT_S)
        assert resp.version == "1"
        assert pair(service, "1", "2")["dropped"] == 1
        await close(service)

    asyncio.run(main())


def test_a_failing_version_is_answered_by_the_fallback_with_the_version_shown():
    async def main():
        service = make_service({"1": FakeExecutor(2.0), "2": FakeExecutor(fails=True)}, {"weights": {2: 1}, "fallback": 1})
        resp = await asyncio.wait_for(service.infer(req((1.0, 5.0))), WAIT_S)
        assert resp.version == "1" and resp.outputs["y"].tolist() == [[2.0, 10.0]]
        st = service.routing.status("m")["versions"]
        assert st["2"]["failed"] == 1 and st["2"]["fell_back"] == 1 and st["1"]["answered_as_fallback"] == 1
        # A request naming its version bypasses routing, fallback included.
        with pytest.raises(ExecutorError, match="broken"):
            await asyncio.wait_for(service.infer(req(version="2")), WAIT_S)
        # Bad input is the request's fault: no fallback, no failure counted against the version.
        with pytest.raises(InvalidInputError):
            await service.infer(InferRequest(model="m", version="", inputs={}, datatypes={}))
        assert service.routing.status("m")["versions"]["2"]["failed"] == 1
        await close(service)

    asyncio.run(main())


def test_without_fallback_the_failure_reaches_the_client():
    async def main():
        service = make_service({"1": FakeExecutor(), "2": FakeExecutor(fails=True)}, {"weights": {2: 1}})
        with pytest.raises(ExecutorError):
            await asyncio.wait_for(service.infer(req()), WAIT_S)
        await close(service)

    asyncio.run(main())


def test_a_hung_version_is_abandoned_after_attempt_timeout_for_the_fallback():
    async def main():
        hung = FakeExecutor(gated=True)
        service = make_service(
            {"1": FakeExecutor(2.0), "2": hung}, {"weights": {2: 1}, "fallback": 1, "attempt_timeout_us": 50_000}
        )
        resp = await asyncio.wait_for(service.infer(req()), WAIT_S)
        assert resp.version == "1"
        assert service.routing.status("m")["versions"]["2"]["fell_back"] == 1
        hung.gate.set()
        await close(service)

    asyncio.run(main())


def test_rollback_guard_takes_a_failing_canary_out_and_leaves_the_champion_alone():
    async def main():
        service = make_service(
            {"1": FakeExecutor(2.0), "2": FakeExecutor(fails=True)},
            {"weights": {1: 50, 2: 50}, "champion": 1, "fallback": 1,
             "rollback": {"min_requests": 5, "max_error_rate": 0.5, "window_s": 300}},
        )
        router = service.routing.router_for("m")
        for i in range(200):
            resp = await asyncio.wait_for(service.infer(req(key=f"user-{i}")), WAIT_S)
            assert resp.version == "1"  # the fallback hides the canary's failures from clients
            if router.tripped:
                break
        assert set(router.tripped) == {"2"}
        routed_to_2 = router.counters["2"].routed
        assert routed_to_2 == 5
        for i in range(200, 260):
            assert (await asyncio.wait_for(service.infer(req(key=f"user-{i}")), WAIT_S)).version == "1"
        st = service.routing.status("m")
        assert st["versions"]["2"]["routed"] == routed_to_2 and st["versions"]["2"]["effective_weight"] == 0
        assert "error rate" in st["versions"]["2"]["rolled_back"]["reason"] and st["rollbacks"] == 1
        champion = st["versions"]["1"]
        assert champion["rolled_back"] is None and champion["effective_weight"] == 50 and champion["failed"] == 0
        # An operator resets it: the canary gets its keys back.
        service.routing.reset("m", None)
        versions = {(await service.infer(req(key=f"user-{i}"))).version for i in range(40)}
        assert router.counters["2"].routed > routed_to_2 and versions == {"1"}
        await close(service)

    asyncio.run(main())


def test_a_canary_that_disagrees_with_the_champion_is_rolled_back():
    async def main():
        # The canary negates: every row's argmax flips against the champion's.
        service = make_service(
            {"1": FakeExecutor(1.0), "2": FakeExecutor(-1.0)},
            {"weights": {1: 50, 2: 50}, "champion": 1,
             "rollback": {"min_requests": 4, "max_disagreement": 0.5, "window_s": 300}},
        )
        router = service.routing.router_for("m")
        async with service.shadows:
            for i in range(400):
                await asyncio.wait_for(service.infer(req((0.0, 1.0), key=f"user-{i}")), WAIT_S)
                if router.counters.get("2") and router.counters["2"].routed >= 4:
                    break
            await until(lambda: bool(router.tripped), "the guard to trip on disagreement")
        assert "disagreement" in router.tripped["2"].reason
        p = pair(service, "2", "1")
        assert p["agreement_argmax"] == 0.0 and p["compared"] >= 4
        preds = service.routing.status("m")["predictions"]
        assert preds["m:1"]["counts"] == [0, p["rows"]] and preds["m:2"]["counts"] == [p["rows"]]
        await close(service)

    asyncio.run(main())


def test_admin_settings_are_validated_against_served_versions_and_survive_an_unchanged_reload():
    async def main():
        service = make_service({"1": FakeExecutor(), "2": FakeExecutor()}, {"weights": {1: 1}})
        with pytest.raises(InvalidInputError, match=r"routing.weights.3: version 3 is not served"):
            service.routing.set_config("m", {"weights": {"1": 1, "3": 1}})
        with pytest.raises(InvalidInputError, match=r"routing.shadows\[0\]: unknown model 'nope'"):
            service.routing.set_config("m", {"shadows": [{"model": "nope"}]})
        st = service.routing.set_config("m", {"weights": {"2": 1}})
        assert st["source"] == "admin" and st["versions"]["2"]["effective_weight"] == 1
        assert (await service.infer(req())).version == "2"
        # A reload whose routing section is unchanged keeps the runtime setting...
        versions = service.models.serving["m"]
        reloaded = ModelConfig.model_validate({"name": "m", "version_policy": {"all": True}, "routing": {"weights": {1: 1}}})
        for lv in versions.values():
            lv.config = reloaded
        assert (await service.infer(req())).version == "2"
        # ...a changed one is the new truth.
        changed = ModelConfig.model_validate({"name": "m", "version_policy": {"all": True}, "routing": {"weights": {1: 2}}})
        for lv in versions.values():
            lv.config = changed
        assert (await service.infer(req())).version == "1"
        assert service.routing.status("m")["source"] == "file"
        assert service.routing.clear_config("m")["source"] == "file"
        await close(service)

    asyncio.run(main())


def test_explicit_versions_bypass_the_split():
    async def main():
        service = make_service({"1": FakeExecutor(), "2": FakeExecutor()}, {"weights": {1: 1}})
        assert {(await service.infer(req(key=f"k{i}"))).version for i in range(20)} == {"1"}
        assert (await service.infer(req(version="2"))).version == "2"
        assert service.routing.status("m")["versions"].get("2", {}).get("routed", 0) == 0
        await close(service)

    asyncio.run(main())
