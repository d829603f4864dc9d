"""Shadow copies: queued after the live answer, run by one worker task, compared, never awaited.

Each model bounds its shadow copies queued or running at once
(``routing.shadow_queue_size``); a copy beyond the bound is dropped and counted.
The worker hands each copy to the target's scheduler at the target's lowest
priority level and goes on: shadow copies batch together like live ones, and
completion callbacks do the comparison.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from gateway.core.errors import GatewayError
from gateway.core.tasks import cancel_and_wait
from gateway.core.types import InferRequest, InferResponse
from gateway.routing.router import Router, ShadowTarget
from gateway.service.models import ModelManager
from gateway.service.validation import validate_request

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class ShadowJob:
    router: Router
    target: ShadowTarget
    live: InferResponse
    request: InferRequest


class ShadowDispatcher:
    """Async context manager owning the shadow queue and its worker task."""

    def __init__(self, manager: ModelManager) -> None:
        self.models = manager
        self.pending: dict[str, int] = defaultdict(int)  # model -> copies queued or running
        self._queue: asyncio.Queue[ShadowJob] | None = None
        self._task: asyncio.Task | None = None
        self._running: set[asyncio.Future] = set()

    @property
    def started(self) -> bool:
        return self._task is not None

    async def __aenter__(self) -> ShadowDispatcher:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._work(), name="shadow-dispatcher")
        return self

    async def __aexit__(self, *exc) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        queue, self._queue = self._queue, None
        while queue is not None and not queue.empty():
            job = queue.get_nowait()
            self._release(job)
            job.router.record_shadow_dropped(job.live.version, job.target)
        # Copies already in a scheduler finish (or fail) with it; nobody waits for them.

    def offer(self, router: Router, targets: tuple[ShadowTarget, ...], request: InferRequest, live: InferResponse) -> None:
        """Queue copies of an answered request; never blocks, never raises."""
        model = router.model
        for target in targets:
            if target.model == live.model and target.version == live.version:
                continue  # the fallback answered as the shadow version: nothing to compare
            if self._queue is None or self.pending[model] >= router.shadow_queue_size:
                router.record_shadow_dropped(live.version, target)
                continue
            self.pending[model] += 1
            router.record_shadow_sent(live.version, target)
            self._queue.put_nowait(ShadowJob(router, target, live, request))

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            try:
                self._submit(job)
            except Exception:  # noqa: BLE001 - a bug in one copy must not stop shadowing
                _log.exception("shadow copy to %s:%s failed to start", job.target.model, job.target.version)
                self._finish_failed(job)

    def _submit(self, job: ShadowJob) -> None:
        target = job.target
        try:
            loaded = self.models.get(target.model, target.version)
            # The client is gone: no transport deadline, no client priority or timeout;
            # every output, so a shadow of another model can be compared too.
            req = dataclasses.replace(job.request, version=loaded.version, outputs=None, deadline_ns=0,
                                      parameters={})
            rows, key = validate_request(loaded, req)
            lowest = loaded.config.dynamic_batching.priority_levels
            fut = loaded.scheduler.submit(req, rows, key, lowest)
        except GatewayError as exc:
            _log.debug("shadow copy to %s:%s refused: %s", target.model, target.version, exc)
            self._finish_failed(job)
            return
        self._running.add(fut)
        fut.add_done_callback(functools.partial(self._done, job, loaded.version))

    def _done(self, job: ShadowJob, version: str, fut: asyncio.Future) -> None:
        self._running.discard(fut)
        if fut.cancelled() or fut.exception() is not None:
            self._finish_failed(job)
            return
        self._release(job)
        try:
            job.router.record_shadow(job.live.version, job.target, version, job.live.outputs, fut.result(),
                                     time.monotonic_ns())
        except Exception:  # noqa: BLE001 - comparison is best effort, off the response path
            _log.exception("comparing shadow %s:%s failed", job.target.model, version)

    def _finish_failed(self, job: ShadowJob) -> None:
        self._release(job)
        job.router.record_shadow_failed(job.live.version, job.target)

    def _release(self, job: ShadowJob) -> None:
        self.pending[job.router.model] -= 1
