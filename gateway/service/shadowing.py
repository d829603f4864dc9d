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
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar
from dataclasses import dataclass

from gateway.core.errors import GatewayError
from gateway.core.tasks import cancel_and_wait
from gateway.core.generation import GenerationEvent, GenerationRequest, GenerationStream
from gateway.core.types import InferRequest, InferResponse
from gateway.routing.compare import Comparison, compare_generations
from gateway.routing.router import Router, ShadowTarget
from gateway.service.models import LoadedVersion, ModelManager
from gateway.service.validation import validate_request

_log = logging.getLogger(__name__)
T = TypeVar("T")


async def _generate_once(request: GenerationRequest, loaded: LoadedVersion) -> list[tuple[str, list[int]]]:
    """The (text, token ids) of each choice of ``request`` generated on ``loaded``."""
    if loaded.generator is None:
        raise GatewayError(f"shadow target {loaded.name} does not generate text")
    # Not traced, not cached, no sticky key: a copy, not a client's request.
    copy = dataclasses.replace(request, model=loaded.name, trace=None, cache=False, route_key="")
    stream = loaded.generator.submit(copy)
    shadow = _Collector(stream.choices)
    try:
        async for event in stream:
            shadow.add(event)
    finally:
        stream.close()
    return shadow.choices


class _Collector:
    """The (text, token ids) of each choice of a generation, as its events arrive."""

    __slots__ = ("texts", "tokens", "open")

    def __init__(self, choices: int) -> None:
        self.texts = [""] * choices
        self.tokens: list[list[int]] = [[] for _ in range(choices)]
        self.open = choices

    def add(self, event: GenerationEvent) -> None:
        self.texts[event.index] += event.text
        self.tokens[event.index].extend(event.token_ids)
        if event.finish_reason is not None:
            self.open -= 1

    @property
    def complete(self) -> bool:
        return self.open == 0

    @property
    def choices(self) -> list[tuple[str, list[int]]]:
        return list(zip(self.texts, self.tokens))


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
        self._generations: set[asyncio.Task] = set()  # shadow generations running

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
        generations, self._generations = self._generations, set()
        for gen_task in generations:
            gen_task.cancel()
        if generations:
            await asyncio.gather(*generations, return_exceptions=True)

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

    # -- whole-answer calls (embeddings) ----------------------------------------------------

    def offer_call(
        self, router: Router, targets: tuple[ShadowTarget, ...], live_version: str, live: T,
        call: Callable[[LoadedVersion], Awaitable[T]], compare: Callable[[T, T], Comparison],
    ) -> None:
        """Run ``call`` again on each target after the live answer and compare the answers (bounded
        with the other copies); never blocks, never raises."""
        for target in targets:
            if target.model == router.model and target.version == live_version:
                continue
            if self._task is None or self.pending[router.model] >= router.shadow_queue_size:
                router.record_shadow_dropped(live_version, target)
                continue
            self.pending[router.model] += 1
            router.record_shadow_sent(live_version, target)
            self._track(self._call(router, target, live_version, live, call, compare))

    async def _call(self, router: Router, target: ShadowTarget, live_version: str, live: T,
                    call: Callable[[LoadedVersion], Awaitable[T]], compare: Callable[[T, T], Comparison]) -> None:
        try:
            loaded = self.models.get(target.model, target.version)
            shadow = await call(loaded)
        except Exception as exc:  # noqa: BLE001 - a shadow's failure is counted, never raised
            _log.debug("shadow call on %s:%s failed: %s", target.model, target.version, exc)
            router.record_shadow_failed(live_version, target)
            return
        finally:
            self.pending[router.model] -= 1
        router.record_comparison(live_version, target, loaded.version, compare(live, shadow), time.monotonic_ns())

    def _track(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="shadow-copy")
        self._generations.add(task)
        task.add_done_callback(self._generations.discard)

    # -- generations ------------------------------------------------------------------------

    def offer_generation(
        self, router: Router, targets: tuple[ShadowTarget, ...], request: GenerationRequest, live: GenerationStream
    ) -> None:
        """Once the live answer has ended well, generate it again on each target (bounded by
        ``routing.shadow_queue_size`` with the tensor copies) and compare texts and tokens; never
        blocks the live stream, never raises."""
        answer = _Collector(live.choices)
        live.observe(answer.add)

        def ended(error: BaseException | None) -> None:
            if error is None and answer.complete:  # a failed or abandoned answer: nothing to compare
                self.offer_call(router, targets, live.version, answer.choices,
                                functools.partial(_generate_once, request), compare_generations)

        live.add_done_callback(ended)

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
