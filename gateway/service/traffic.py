"""Routed inference: one Router per model, kept in step with its model.yaml; fallback; shadows.

A request that names no version goes through the model's router (when the
model has a ``routing:`` section or an operator set one); the chosen version
answers, or, if it fails for a reason that is the version's and not the
request's, the fallback answers once. Shadow copies go to the dispatcher after
the live answer is produced.

Under ``--workers N`` the routers of every worker follow one fleet state
(gateway.service.fleet_state), and with ``state_url`` those of every replica
(gateway.service.fleet_redis): admin changes, resets and rollbacks are written
there and applied by all; the rollback guard judges the members' summed windows.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gateway.core.errors import (
    DeadlineExceededError,
    ExecutorError,
    FleetStateUnavailableError,
    InvalidInputError,
    ModelNotFoundError,
    ModelNotReadyError,
    QueueFullError,
)
from gateway.core.generation import GenerationRequest, GenerationStream
from gateway.core.routing_config import RoutingConfig, unserved_versions
from gateway.core.types import InferRequest, InferResponse
from gateway.routing.compare import Comparison
from gateway.routing.router import Router, Trip, patched_config
from gateway.service.fleet_state import (
    COUNTER_FIELDS,
    FleetChannel,
    RoutingRecord,
    Snapshot,
    apply_record,
    fingerprint,
    peer_counters,
    peer_windows,
    worker_entry,
)
from gateway.service.models import LoadedVersion, ModelManager
from gateway.service.shadowing import ShadowDispatcher

_log = logging.getLogger(__name__)

# Failures of the version rather than of the request: the fallback may answer these.
VERSION_FAILURES = (ExecutorError, DeadlineExceededError, ModelNotReadyError, QueueFullError, ModelNotFoundError)

Attempt = Callable[[LoadedVersion, InferRequest], Awaitable[InferResponse]]
StartGeneration = Callable[[LoadedVersion, GenerationRequest], Awaitable[GenerationStream]]
T = TypeVar("T")


class _Slot:
    __slots__ = ("source", "router", "applied")

    def __init__(self, source: RoutingConfig | None, router: Router | None) -> None:
        self.source = source  # the file's routing section last seen (compared by identity)
        self.router = router
        self.applied = 0  # the fleet record version this router has applied (--workers)


class TrafficRouter:
    def __init__(self, manager: ModelManager, attempt: Attempt, shadows: ShadowDispatcher,
                 rng: random.Random | None = None) -> None:
        self.models = manager
        self.attempt = attempt
        self.shadows = shadows
        self.rng = rng or random.Random()
        self._slots: dict[str, _Slot] = {}
        self.fleet: FleetChannel | None = None
        self._writes: set[asyncio.Task] = set()

    # -- which models route -------------------------------------------------------------

    def router_for(self, model: str) -> Router | None:
        versions = self.models.serving.get(model)
        if not versions:
            return None
        source = next(iter(versions.values())).config.routing
        slot = self._slots.get(model)
        if slot is not None and slot.source is source:
            return slot.router
        return self._sync(model, source, slot)

    def _sync(self, model: str, source: RoutingConfig | None, slot: _Slot | None) -> Router | None:
        router = slot.router if slot is not None else None
        if slot is not None and router is not None and router.file_config == source:
            slot.source = source  # the file was reloaded but its routing section is the same
            return router
        if router is not None:
            _log.info("model %s: routing changed in model.yaml; runtime overrides and rollbacks cleared", model)
        router = Router(model, source, self.rng) if source is not None else None
        self._new_slot(model, source, router)
        return router

    def _new_slot(self, model: str, source: RoutingConfig | None, router: Router | None) -> _Slot:
        slot = self._slots[model] = _Slot(source, router)
        if router is not None and self.fleet is not None:
            router.on_trip = lambda version, trip: self._publish_trip(model, version, trip)
            record = self.fleet.records.get(model)
            if record is not None:
                self._apply(model, slot, record)  # a new router starts from the fleet's state
        return slot

    # -- inference ------------------------------------------------------------------------

    async def infer(self, router: Router, req: InferRequest) -> InferResponse:
        served = self.models.serving[req.model]
        default = max(served, key=int)
        plan = router.plan(router.key_of(req.route_key, req.parameters), served, default)
        start = time.monotonic_ns()
        try:
            resp = await self._try(req, plan.version, router.attempt_timeout_s)
        except VERSION_FAILURES as exc:
            now = time.monotonic_ns()
            router.record_result(plan.version, False, now - start, now)
            if not plan.fallback or plan.fallback not in served or (req.deadline_ns and now >= req.deadline_ns):
                raise
            _log.debug("model %s version %s failed (%s); trying fallback version %s",
                       req.model, plan.version, exc, plan.fallback)
            router.record_fallback(plan.version, plan.fallback)
            # The last resort: only the request's own deadlines bound it.
            resp = await self._try(req, plan.fallback, 0.0)
        else:
            now = time.monotonic_ns()
            router.record_result(plan.version, True, now - start, now)
        if plan.shadows:
            self.shadows.offer(router, plan.shadows, req, resp)
        return resp

    async def _try(self, req: InferRequest, version: str, timeout_s: float) -> InferResponse:
        loaded = self.models.get(req.model, version)
        if not timeout_s:
            return await self.attempt(loaded, req)
        try:
            return await asyncio.wait_for(self.attempt(loaded, req), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(
                f"model '{req.model}' version {version} did not answer within routing.attempt_timeout_us"
            ) from None

    # -- other calls on a routed version (embeddings) ------------------------------------------

    async def call(
        self, router: Router, model: str, route_key: str, user: str,
        call: Callable[[LoadedVersion], Awaitable[T]], compare: Callable[[T, T], Comparison],
        version_of: Callable[[T], str],
    ) -> T:
        """``call`` on the version the router picks, the fallback on a version failure, and the
        shadows after the answer (compared by ``compare``): what ``infer`` does for tensors, for
        any whole-answer call."""
        served = self.models.serving[model]
        default = max(served, key=int)
        parameters = {router.config.sticky_key_parameter: user} if user else {}
        plan = router.plan(router.key_of(route_key, parameters), served, default)
        start = time.monotonic_ns()
        try:
            answer = await self._call_on(model, plan.version, call, router.attempt_timeout_s)
        except VERSION_FAILURES as exc:
            now = time.monotonic_ns()
            router.record_result(plan.version, False, now - start, now)
            if not plan.fallback or plan.fallback not in served:
                raise
            _log.debug("model %s version %s failed (%s); trying fallback version %s", model, plan.version, exc, plan.fallback)
            router.record_fallback(plan.version, plan.fallback)
            answer = await self._call_on(model, plan.fallback, call, 0.0)
        else:
            now = time.monotonic_ns()
            router.record_result(plan.version, True, now - start, now)
        if plan.shadows:
            self.shadows.offer_call(router, plan.shadows, version_of(answer), answer, call, compare)
        return answer

    async def _call_on(self, model: str, version: str, call: Callable[[LoadedVersion], Awaitable[T]], timeout_s: float) -> T:
        loaded = self.models.get(model, version)
        if not timeout_s:
            return await call(loaded)
        try:
            return await asyncio.wait_for(call(loaded), timeout_s)
        except TimeoutError:
            raise DeadlineExceededError(
                f"model '{model}' version {version} did not answer within routing.attempt_timeout_us"
            ) from None

    # -- generation ------------------------------------------------------------------------

    async def generate(self, router: Router, req: GenerationRequest, start_on: StartGeneration) -> GenerationStream:
        """The routed version's stream, once its first token is out (or the fallback's, when the
        routed version fails before that); shadows generate the same request after the live
        answer has ended. A failure after the first token reaches the client: it cannot be
        taken back."""
        served = self.models.serving[req.model]
        default = max(served, key=int)
        # The sticky key: the X-Route-Key header, then OpenAI's `user` field as the parameter.
        parameters = {router.config.sticky_key_parameter: req.user} if req.user else {}
        plan = router.plan(router.key_of(req.route_key, parameters), served, default)

        def prepare(stream: GenerationStream) -> None:
            if plan.shadows:
                self.shadows.offer_generation(router, plan.shadows, req, stream)

        start = time.monotonic_ns()
        try:
            stream = await self._start(req, plan.version, start_on, router.attempt_timeout_s, prepare)
        except VERSION_FAILURES as exc:
            now = time.monotonic_ns()
            router.record_result(plan.version, False, now - start, now)
            if not plan.fallback or plan.fallback not in served:
                raise
            _log.debug("model %s version %s failed (%s); generating on fallback version %s",
                       req.model, plan.version, exc, plan.fallback)
            router.record_fallback(plan.version, plan.fallback)
            return await self._start(req, plan.fallback, start_on, 0.0, prepare)
        now = time.monotonic_ns()
        router.record_result(plan.version, True, now - start, now)  # latency: to the first token
        return stream

    async def _start(
        self, req: GenerationRequest, version: str, start_on: StartGeneration, timeout_s: float,
        prepare: Callable[[GenerationStream], None],
    ) -> GenerationStream:
        stream = await start_on(self.models.get(req.model, version), req)
        prepare(stream)
        try:
            if timeout_s:
                await asyncio.wait_for(stream.wait_started(), timeout_s)
            else:
                await stream.wait_started()
        except TimeoutError:
            stream.close()
            raise DeadlineExceededError(
                f"model '{req.model}' version {version} gave no token within routing.attempt_timeout_us"
            ) from None
        except BaseException:
            stream.close()
            raise
        return stream

    # -- operators ---------------------------------------------------------------------

    def status(self, model: str) -> dict:
        router = self._existing(model)
        doc = router.status(time.monotonic_ns())
        doc["shadow_queue"] = {"size": router.shadow_queue_size, "pending": self.shadows.pending.get(model, 0)}
        if self.fleet is not None:
            self._fleet_status(model, doc)
        return doc

    def _served(self, model: str) -> dict[str, LoadedVersion]:
        versions = self.models.serving.get(model)
        if versions:
            return versions
        self.models.get(model)  # raises the precise not-found / not-ready error
        raise ModelNotReadyError(f"model '{model}' has no version serving")

    def set_config(self, model: str, patch: Any) -> dict:
        """Apply an operator's change (fields of the routing section); returns the new status."""
        versions = self._served(model)
        router = self.router_for(model)
        current = router.config if router is not None else None
        cfg = patched_config(current, patch)
        served = {int(v) for v in versions}
        for field, reason in unserved_versions(cfg, served, "in force")[:1]:
            raise InvalidInputError(f"{field}: {reason}")
        for i, s in enumerate(cfg.shadows):
            if s.model and s.model != model:
                try:
                    self.models.get(s.model, str(s.version) if s.version else "")
                except (ModelNotFoundError, ModelNotReadyError) as exc:
                    raise InvalidInputError(f"routing.shadows[{i}]: {exc}") from None
        if router is None:
            router = Router(model, None, self.rng)
            self._new_slot(model, next(iter(versions.values())).config.routing, router)
        before = router.config.model_dump(mode="json")
        router.set_admin_config(cfg)
        _log.warning("admin: routing of model %s set to %s (was %s)", model, cfg.model_dump(mode="json"), before)
        return self.status(model)

    def clear_config(self, model: str) -> dict:
        router = self._existing(model)
        if router.admin_config is not None:
            router.set_admin_config(None)
            _log.warning("admin: routing of model %s back to model.yaml", model)
        return self.status(model)

    def reset(self, model: str, versions: list[str] | None) -> dict:
        router = self._existing(model)
        if versions is not None:
            self._check_resettable(model, router, versions)
        done = router.reset(versions)
        _log.warning("admin: rollback reset for model %s: %s", model, done or "nothing was rolled back")
        return self.status(model)

    def _check_resettable(self, model: str, router: Router, versions: list[str]) -> None:
        """Only a served canary can have been rolled back: anything else named is the operator's mistake
        (a typo'd version would otherwise answer 200 and leave the real one at weight 0)."""
        served = self.models.serving.get(model, {})
        weighted = set(router.effective_weights())
        for i, v in enumerate(versions):
            if v not in served:
                raise InvalidInputError(
                    f"versions[{i}]: version {v} of model '{model}' is not served "
                    f"(serving: {', '.join(sorted(served, key=int)) or 'none'})"
                )
            if v == router.champion:
                raise InvalidInputError(f"versions[{i}]: version {v} is the champion of model '{model}': it is never rolled back")
            if v not in weighted:
                raise InvalidInputError(
                    f"versions[{i}]: version {v} has no weight in the routing of model '{model}' "
                    f"(weighted: {', '.join(sorted(weighted, key=int))}): only a canary is rolled back"
                )

    def _existing(self, model: str) -> Router:
        self.models.get(model)  # raises for unknown or unready models
        router = self.router_for(model)
        if router is None:
            raise ModelNotFoundError(f"model '{model}' has no routing (no routing section in its model.yaml)")
        return router

    # -- the fleet (--workers N) --------------------------------------------------------------

    async def join_fleet(self, fleet: FleetChannel, also: Sequence[Callable[[Snapshot], None]] = ()) -> None:
        """Follow and feed the fleet's shared routing state (the host's or the replicas') from now on;
        ``also`` get each reading after the routers (the merged drift rides on the same channel)."""
        self.fleet = fleet
        for model, slot in self._slots.items():
            if slot.router is not None:
                slot.router.on_trip = lambda version, trip, model=model: self._publish_trip(model, version, trip)

        def on_poll(snapshot: Snapshot) -> None:
            self._on_fleet_poll(snapshot)
            for listener in also:
                listener(snapshot)

        await fleet.start(self._fleet_document, on_poll)

    async def leave_fleet(self) -> None:
        if self.fleet is not None:
            await self.fleet.stop()
        for task in list(self._writes):
            await asyncio.wait([task], timeout=1.0)

    async def admin_set(self, model: str, patch: Any) -> dict:
        """``set_config``, for the whole fleet when there is one."""
        doc = self.set_config(model, patch)
        if self.fleet is None:
            return doc
        router = self._slots[model].router
        assert router is not None  # set_config made one
        cfg = router.admin_config
        await self._write(model, lambda record: record.set_admin(cfg))
        return self.status(model)

    async def admin_clear(self, model: str) -> dict:
        doc = self.clear_config(model)
        if self.fleet is None:
            return doc
        await self._write(model, lambda record: record.set_admin(None))
        return self.status(model)

    async def admin_reset(self, model: str, versions: list[str] | None) -> dict:
        doc = self.reset(model, versions)
        if self.fleet is None:
            return doc
        await self._write(model, lambda record: record.reset(versions))
        return self.status(model)

    async def _write(self, model: str, change) -> RoutingRecord:
        """Change the fleet's record of ``model`` (made for this worker's model.yaml routing section),
        then bring this worker to it at once: the answer shows the state every worker converges to."""
        slot = self._slots[model]
        file = fingerprint(slot.router.file_config if slot.router is not None else None)

        def on_record(record: RoutingRecord):
            record.voided_for(file)
            return change(record)

        fleet = self.fleet
        assert fleet is not None  # the admin_* calls write only when the worker is in a fleet
        record = await fleet.update(model, on_record)
        current = self._slots.get(model)  # a model.yaml change may have replaced it meanwhile
        if current is not None and record.version > current.applied:
            self._apply(model, current, record)
        return record

    def _publish_trip(self, model: str, version: str, trip: Trip) -> None:
        """This worker's guard rolled ``version`` back: tell the fleet (the first trip written stands)."""
        async def publish() -> None:
            try:
                await self._write(model, lambda record: record.add_trip(version, trip))
            except OSError as exc:
                _log.error("model %s: cannot tell the other workers of the rollback of version %s: %s", model, version, exc)
            except FleetStateUnavailableError:
                _log.error("model %s: the rollback of version %s is queued for the fleet (its state store does not "
                           "answer)", model, version)

        task = asyncio.get_running_loop().create_task(publish(), name=f"fleet-trip-{model}-{version}")
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    def _apply(self, model: str, slot: _Slot, record: RoutingRecord) -> None:
        router = slot.router
        if router is None or record.file != fingerprint(router.file_config):
            return  # made for another model.yaml routing section: the file in force clears it
        if apply_record(router, record, slot.applied) and (self.fleet is None or record.writer != self.fleet.member):
            _log.info("fleet: model %s routing record %d of %s applied %.3f s after it was written",
                      model, record.version, record.writer or f"worker {record.written_by}",
                      time.time() - record.written_at)
        slot.applied = max(slot.applied, record.version)

    def _on_fleet_poll(self, snapshot: Snapshot) -> None:
        for model, record in snapshot.records.items():
            if model not in self.models.serving:
                continue
            router = self.router_for(model)
            slot = self._slots.get(model)
            if slot is None or record.version <= slot.applied:
                continue
            if router is None:
                if record.admin is None or record.file is not None:
                    continue
                # An operator routed a model without a routing section, on another worker.
                self._new_slot(model, slot.source, Router(model, None, self.rng))
            else:
                self._apply(model, slot, record)
        now = time.monotonic_ns()
        for model, slot in list(self._slots.items()):
            if slot.router is not None and slot.router.guard is not None:
                slot.router.judge_fleet(peer_windows(snapshot.peers, model, slot.applied), now)

    def _fleet_document(self) -> dict:
        now = time.monotonic_ns()
        return {m: worker_entry(slot.router, slot.applied, now)
                for m, slot in self._slots.items() if slot.router is not None}

    def _fleet_status(self, model: str, doc: dict) -> None:
        """Counters summed over the workers (the others' as last published); this worker's own apart."""
        fleet = self.fleet
        assert fleet is not None  # status() adds this part only in a fleet
        versions = doc["versions"]
        doc["worker"] = {
            "index": fleet.index, "pid": fleet.pid, "workers": 1 + len(fleet.peers),
            "versions": {v: {f: d[f] for f in COUNTER_FIELDS} for v, d in versions.items()},
            "fleet": fleet.health(),
        }
        for v, totals in peer_counters(fleet.peers, model).items():
            entry = versions.get(v)
            if entry is None:
                entry = versions[v] = {"weight": 0.0, "effective_weight": 0.0, "champion": False,
                                       **dict.fromkeys(COUNTER_FIELDS, 0), "rolled_back": None}
            for f in COUNTER_FIELDS:
                entry[f] += totals[f]
        if any(v not in doc["worker"]["versions"] for v in versions):
            doc["versions"] = {v: versions[v] for v in sorted(versions, key=int)}
