"""Asyncio glue around the synchronous DynamicBatcher for one model version.

There is no background task: ``submit`` and each batch completion "pump" the
batcher directly, and a single loop timer covers queue-delay and deadline
wake-ups. Each batch crosses to a worker thread exactly once: gather, run and
scatter all happen there, and the results come back in one callback. A model
measured faster than those two hand-offs (``inline_execute_us``) runs on the
loop instead, a lone request or a whole batch, when no run is in progress.

Each instance has a thread of its own and may hold a prepared batch behind the
one it runs, so it goes from one run to the next without waiting for the loop.
Why: a worker thread needs the GIL to start a batch, and the loop holds it
while it answers the batch just finished; measured on the cnn (h2load, 2 cores),
an instance waited ~1 ms between batches and was busy 91 % of the time, 98 %
with a prepared batch. Which batches are prepared: a full one; with the adaptive
window, also a partial one the batcher releases (its window, about one run for a
busy instance, has passed) that has at least the rows of the batch running, so
later arrivals are not split off into ever smaller batches. Otherwise (a fixed
window, as Triton's, with ``max_queue_delay_us: 0`` meaning "what accumulated
by the time an instance is free") rows wait in the queue, where later arrivals
can still join them. Until its run starts, a prepared batch counts as queued:
a caller that leaves takes its request out of it, and a request past its
deadline fails without running. Nothing is prepared with ``execute_timeout_s``
(the timeout is of one run, not of a wait behind another) nor with several
priority levels (a higher-priority arrival must not wait behind it).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from gateway import native
from gateway.core.errors import (
    DeadlineExceededError,
    ExecuteTimeoutError,
    ExecutorError,
    GatewayError,
    ModelNotReadyError,
    QueueFullError,
    VersionRetiredError,
)
from gateway.core.stats import ModelStats
from gateway.core.types import InferRequest
from gateway.executors.base import Abortable, Executor
from gateway.scheduler.adaptive import AdaptiveDelay, smooth
from gateway.scheduler.batcher import DynamicBatcher
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.queue import QueuedRequest

_log = logging.getLogger(__name__)

# Inline runs longer than INLINE_SLOW times inline_execute_ns are strikes; strikes decay by
# INLINE_STRIKE_DECAY per inline run, and at INLINE_STRIKES (about three slow runs among the last
# hundred) inlining is off for the version; one run over INLINE_HARD_NS is enough. Strikes, not
# one slow run: a run that paid for a full garbage collection (8.6 ms of the loop's CPU here, about
# once in two thousand requests) or was preempted had switched inlining off for good, and c=1
# then paid the thread hand-off on every request (0.49 ms of CPU per request instead of 0.37).
# Wall time, not CPU time: a device model waits without using the CPU, and the loop waits with it.
INLINE_SLOW = 10
INLINE_STRIKES = 2.5
INLINE_STRIKE_DECAY = 0.99
INLINE_HARD_NS = 100_000_000


@dataclass(slots=True)
class Pending:
    request: InferRequest
    future: asyncio.Future
    rows: int
    enqueue_ns: int
    dispatch_ns: int = 0
    # When it must fail rather than run (its client's deadline, or the queue timeout under
    # "reject"; 0 = never): checked again when a prepared batch starts.
    expire_ns: int = 0


@dataclass(slots=True)
class _Dispatch:
    """One batch on one instance. ``timed_out`` and ``abandoned`` are set on the loop and read by
    the worker thread; ``started``, ``finished`` and ``aborted`` change under the instance's
    ``lock``, so an abort reaches this batch's run and never the instance's next one."""

    executor: Executor
    pending: list[Pending]
    lock: threading.Lock
    # The executor, when it can abort a run.
    abortable: Abortable | None = None
    # Its rows, summed once: every arrival while it runs compares them with the queue's.
    rows: int = 0
    timed_out: bool = False
    # Every caller went away (cancelled): the run is aborted, or skipped if it has not started.
    abandoned: bool = False
    # Its result reached the loop.
    completed: bool = False
    started: bool = False  # the worker took it (it runs, or skips it)
    finished: bool = False  # its run returned
    aborted: bool = False  # the executor was told to abort this run: it is rearmed when the run returns
    timer: asyncio.TimerHandle | None = None

    def abort(self) -> None:
        """Abort the run if it is running; one not started yet is skipped by the worker (the caller
        set ``abandoned`` or ``timed_out`` first)."""
        if self.abortable is None:
            return
        with self.lock:
            if self.started and not self.finished:
                self.abortable.abort()
                self.aborted = True


@dataclass(slots=True)
class _RunTimes:
    """What the scheduler has measured of one kind of run (a lone request, or a batch of several):
    its smoothed execute time (0: not measured yet) and the most input bytes of one that ran faster
    than the inline bound."""

    ns: float = 0.0
    fast_bytes: int = 0

    def observe(self, took_ns: int, bound_ns: int, pending: list[Pending]) -> None:
        self.ns = smooth(self.ns, took_ns)
        if took_ns < bound_ns:
            self.fast_bytes = max(self.fast_bytes, sum(map(_input_bytes, pending)))

    def fast(self, bound_ns: int, pending: list[Pending]) -> bool:
        """Measured faster than the bound, for inputs no larger than one that ran that fast."""
        return 0 < self.ns < bound_ns and sum(map(_input_bytes, pending)) <= self.fast_bytes


@dataclass(slots=True)
class _BatchResult:
    outputs: Sequence[dict[str, np.ndarray] | BaseException]
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    # (feeds, outputs by name) of a batch that ran whole, for observers such as drift monitoring.
    batch: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None


@dataclass(frozen=True, slots=True)
class SchedulerSpec:
    """What the scheduler must know of the model, beyond the batching policy."""

    name: str
    version: str
    batching: bool  # max_batch_size > 0: dim 0 of every input is the batch dim
    output_names: tuple[str, ...]
    # input name -> pad value, for inputs whose trailing dims may differ per request
    ragged_inputs: dict[str, float] = field(default_factory=dict)
    # Size the queue delay from observed load (max_queue_delay stays the cap).
    adaptive_delay: bool = False
    # A batch running longer fails its requests and its instance is told to abort (0 = none).
    execute_timeout_s: float = 0.0
    # A lone request on an idle model runs on the loop when one request measures below this (0 = never).
    inline_execute_ns: int = 0


class ModelScheduler:
    def __init__(self, spec: SchedulerSpec, policy: BatchingPolicy, executors: list[Executor], stats: ModelStats) -> None:
        if not executors:
            raise ValueError("a scheduler needs at least one executor instance")
        self.spec = spec
        self.stats = stats
        self._batcher = DynamicBatcher(policy)
        self._executors = list(executors)
        self._free: list[Executor] = list(executors)  # instances with no batch
        # Per instance (by id), its batches in the order they run: the first runs, a second is prepared.
        self._batches: dict[int, list[_Dispatch]] = {id(e): [] for e in executors}
        # Not with several priority levels either: a request that came before a higher-priority one
        # would run first once it is in a prepared batch.
        self._prepare = spec.execute_timeout_s <= 0 and policy.priority_levels <= 1
        self._delay_on_timeout = policy.timeout_action == "delay"
        # Looked up once: a runtime protocol check costs microseconds, too much per batch.
        self._abortable: dict[int, Abortable] = {id(e): e for e in executors if isinstance(e, Abortable)}
        # One thread per instance: its batches run in order, and a prepared one starts as soon as
        # the one before returns.
        self._pools = {id(e): ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"exec-{spec.name}-{spec.version}-{i}")
                       for i, e in enumerate(executors)}
        self._locks = {id(e): threading.Lock() for e in executors}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._in_flight = 0
        self._accepting = True
        self._idle = asyncio.Event()
        self._idle.set()
        self._adaptive = AdaptiveDelay() if spec.adaptive_delay else None
        # Called on the loop with (feeds, outputs) of each batch that ran whole, after its
        # futures are resolved: must only hand the arrays over (drift monitoring's queue).
        self.observer: Callable[[dict[str, np.ndarray], dict[str, np.ndarray]], None] | None = None
        # Instances whose batch passed execute_timeout_s and whose thread has not returned yet.
        self._stuck: set[int] = set()
        # Execute times of one-request batches and of batches of several, for inline_execute_ns.
        self._lone = _RunTimes()
        self._batched = _RunTimes()
        # A run on the loop blocks every connection of the daemon until it returns, and nothing can
        # abort it there: only models whose cost follows their input size (no Loop or If whose work
        # depends on input values) run inline, only for inputs no larger than a lone request (or a
        # batch) measured fast, and never again once inline runs took far longer than the bound too
        # often (strikes, INLINE_STRIKES) or once too long (INLINE_HARD_NS).
        self._inline_ns = 0 if any(getattr(e, "data_dependent_cost", False) for e in executors) else spec.inline_execute_ns
        self._inline_strikes = 0.0

    # -- intake ---------------------------------------------------------------

    def waiting_deadline(self, request: InferRequest, timeout_deadline_ns: int, now_ns: int) -> int:
        """How long a request may wait for an identical request's answer (0: no bound): as long as
        the queue would have kept it (under "reject"; under "delay" a timed-out request is still
        served), and never past its transport deadline."""
        policy = self._batcher.policy
        queue = policy.queue_deadline(now_ns, timeout_deadline_ns) if policy.timeout_action == "reject" else 0
        hard = request.deadline_ns
        return min(queue, hard) if queue and hard else queue or hard

    def submit(
        self, request: InferRequest, rows: int, shape_key: object, priority: int, timeout_deadline_ns: int = 0
    ) -> asyncio.Future:
        """Queue a validated request; raises QueueFullError etc. at once.

        ``timeout_deadline_ns`` comes from the request's ``timeout`` parameter and
        follows the queue policy (reject or delay); ``request.deadline_ns`` is the
        transport's deadline, after which nobody waits for the answer.
        """
        if not self._accepting:
            raise VersionRetiredError(f"model '{self.spec.name}' version {self.spec.version} is unloading")
        if self.wedged:
            raise ModelNotReadyError(self._wedged_reason())
        loop = self._loop or self._bind_loop()
        now = time.monotonic_ns()
        fut = loop.create_future()
        pending = Pending(request, fut, rows, now)
        item = QueuedRequest(
            rows=rows,
            shape_key=shape_key,
            priority=priority,
            enqueue_ns=now,
            deadline_ns=timeout_deadline_ns,
            hard_deadline_ns=request.deadline_ns,
            payload=pending,
        )
        if self._adaptive is not None:
            self._adaptive.observe_arrival(now, rows)
        try:
            self._batcher.add(item, now, self._prepared_requests())
        except QueueFullError:
            self.stats.rejected_queue_full += 1
            raise
        # The queue timeout as the batcher set it (under "delay" it only reorders), and the client's deadline.
        deadlines = [d for d in (0 if self._delay_on_timeout else item.deadline_ns, item.hard_deadline_ns) if d]
        pending.expire_ns = min(deadlines, default=0)
        self._idle.clear()
        self._pump()
        return fut

    def _bind_loop(self) -> asyncio.AbstractEventLoop:
        self._loop = asyncio.get_running_loop()
        return self._loop

    @property
    def _bound_loop(self) -> asyncio.AbstractEventLoop:
        """The loop of the first submit(): every timer, dispatch and completion comes after one."""
        assert self._loop is not None, "no request was submitted yet"
        return self._loop

    # -- the pump: runs on the loop, never blocks ------------------------------

    def _pump(self) -> None:
        now = time.monotonic_ns()
        for item in self._batcher.expire(now):
            self._fail_expired(_pending(item))
        # Called on every arrival: the slot is looked up once per decision, not once per question.
        executor = self._free[-1] if self._free else self._preparable()
        if self._adaptive is not None and executor is not None:
            b = self._batcher
            b.set_queue_delay(self._adaptive.delay_ns(b.queued_rows, b.target_rows, not self._in_flight, now,
                                                      b.oldest_enqueue_ns()))
        while executor is not None:
            batch = self._batcher.next_batch(now)
            if not batch:
                break
            pending = [p for p in map(_pending, batch) if not p.future.done()]
            if pending:
                self._dispatch(pending, now, executor)
            executor = self._free[-1] if self._free else self._preparable()
        self._arm_timer(now, executor is not None)
        if not self._in_flight and not len(self._batcher):
            self._idle.set()

    def _preparable(self) -> Executor | None:
        """A running instance that may take a prepared batch now (see the module's docstring for
        which batches are worth preparing), or None."""
        if not self._prepare or not len(self._batcher):
            return None
        queued = self._batcher.queued_rows
        full = queued >= self._batcher.target_rows
        if not full and self._adaptive is None:
            return None
        for executor in self._executors:
            batches = self._batches[id(executor)]
            if len(batches) == 1 and (full or batches[0].rows <= queued):
                return executor
        return None

    def _arm_timer(self, now: int, has_slot: bool) -> None:
        if not len(self._batcher):
            return
        # With every instance busy, only a deadline can change anything before a
        # completion pumps again; a "ready now" wake-up would spin the loop.
        wake = self._batcher.next_wakeup(now) if has_slot else self._batcher.next_deadline()
        if wake is None:
            return
        if self._timer is not None:
            if self._timer_at <= wake:
                return
            self._timer.cancel()
        self._timer_at = wake
        self._timer = self._bound_loop.call_later(max(0, wake - now) / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._pump()

    def _fail_expired(self, p: Pending) -> None:
        self.stats.rejected_deadline += 1
        if not p.future.done():
            p.future.set_exception(
                DeadlineExceededError(f"request to model '{self.spec.name}' timed out in the queue before execution")
            )

    def _runs_inline(self, pending: list[Pending]) -> bool:
        """Nothing running, and a run measured faster than the hand-offs: a lone request with nothing
        else queued and an input no larger than one measured that fast, or a batch of several whose
        inputs together are no larger than a batch measured that fast. A batch's requests waited
        for each other anyway; with a model this fast (the mlp's batch of 32 runs in ~35 µs) the two
        thread hand-offs cost more than the loop waits for the run: mlp h2load c=8 +17 %, c=32
        +10 %, perf_analyzer c=8 +24 %, ModelStreamInfer c=32 +14-19 %; c=1 and c=128 the same."""
        if self._in_flight or self.spec.execute_timeout_s:
            return False
        if len(pending) == 1:
            return not len(self._batcher) and self._lone.fast(self._inline_ns, pending)
        return self._batched.fast(self._inline_ns, pending)

    def _dispatch(self, pending: list[Pending], now: int, executor: Executor) -> None:
        inline = self._runs_inline(pending)
        if not self._batches[id(executor)]:  # an idle instance; else this is its prepared batch
            self._free.remove(executor)
        self._in_flight += 1
        for p in pending:
            p.dispatch_ns = now
            self.stats.record_queue(now - p.enqueue_ns)
        dispatch = _Dispatch(executor, pending, self._locks[id(executor)], self._abortable.get(id(executor)),
                             rows=sum(p.rows for p in pending))
        self._batches[id(executor)].append(dispatch)
        loop = self._bound_loop
        if inline:
            # Run at the end of this loop pass: requests arriving in the same pass queue behind
            # it (the instance counts as busy) and go to the executor thread as one batch.
            loop.call_soon(self._execute_inline, dispatch)
            return
        if self.spec.execute_timeout_s > 0:
            dispatch.timer = loop.call_later(self.spec.execute_timeout_s, self._on_execute_timeout, dispatch)
        if dispatch.abortable is not None:
            for p in pending:
                p.future.add_done_callback(functools.partial(self._on_caller_gone, dispatch))
        work = loop.run_in_executor(self._pools[id(executor)], self._execute, dispatch)
        work.add_done_callback(functools.partial(self._complete, dispatch))

    def _execute_inline(self, dispatch: _Dispatch) -> None:
        # Blocks the loop for about inline_execute_ns: less than the loop would spend on the
        # hand-off to an executor thread and back.
        work: asyncio.Future[_BatchResult] = self._bound_loop.create_future()
        started = time.perf_counter_ns()
        work.set_result(self._execute(dispatch))
        took = time.perf_counter_ns() - started
        slow = took > INLINE_SLOW * self._inline_ns
        self._inline_strikes = self._inline_strikes * INLINE_STRIKE_DECAY + slow
        if slow and (self._inline_strikes >= INLINE_STRIKES or took > INLINE_HARD_NS):
            self._inline_ns = 0
            _log.warning("model %s:%s: a lone request took %.1f ms on the event loop (bound %d us), and not once; "
                         "its requests run in the executor thread from now on", self.spec.name, self.spec.version,
                         took / 1e6, self.spec.inline_execute_ns // 1000)
        self._complete(dispatch, work)

    def _on_caller_gone(self, dispatch: _Dispatch, fut: asyncio.Future) -> None:
        """Once every caller of a running batch has cancelled, nobody wants its answer: abort the run."""
        if not fut.cancelled() or dispatch.abandoned or dispatch.timed_out or dispatch.completed:
            return
        if all(p.future.cancelled() for p in dispatch.pending):
            dispatch.abandoned = True
            _log.debug("model %s:%s: every caller of a dispatched batch cancelled; aborting or skipping it",
                       self.spec.name, self.spec.version)
            dispatch.abort()

    def _on_execute_timeout(self, dispatch: _Dispatch) -> None:
        """The batch's callers get their answer now; the instance stays out until its thread returns.

        A Python thread cannot be killed: the executor is asked to abort (onnxruntime's
        terminate flag); one that cannot stays out of the pool, and with every instance
        out the version reports not ready and refuses work instead of queueing it forever.
        """
        dispatch.timed_out = True
        self._stuck.add(id(dispatch.executor))
        self.stats.execute_timeouts += 1
        _log.error("model %s:%s: a batch of %d requests passed execute_timeout_s=%gs; aborting its instance",
                   self.spec.name, self.spec.version, len(dispatch.pending), self.spec.execute_timeout_s)
        error = ExecuteTimeoutError(
            f"model '{self.spec.name}' version {self.spec.version} did not finish within "
            f"execute_timeout_s={self.spec.execute_timeout_s:g}s"
        )
        for p in dispatch.pending:
            if not p.future.done():
                p.future.set_exception(error)
        dispatch.abort()
        if self.wedged:
            reason = self._wedged_reason()
            _log.error("%s", reason)
            for p in map(_pending, self._batcher.drain_all()):
                if not p.future.done():
                    p.future.set_exception(ModelNotReadyError(reason))

    @property
    def wedged(self) -> bool:
        """Every instance is stuck in a batch past its execute timeout."""
        return len(self._stuck) >= len(self._executors)

    def _wedged_reason(self) -> str:
        return (f"model '{self.spec.name}' version {self.spec.version} is not ready: all {len(self._executors)} "
                f"instances are stuck past execute_timeout_s={self.spec.execute_timeout_s:g}s")

    def _complete(self, dispatch: _Dispatch, work: asyncio.Future[_BatchResult]) -> None:
        executor, pending = dispatch.executor, dispatch.pending
        dispatch.completed = True
        if dispatch.timer is not None:
            dispatch.timer.cancel()
        if dispatch.timed_out:
            self._stuck.discard(id(executor))
            _log.warning("model %s:%s: the instance past execute_timeout_s returned and serves again",
                         self.spec.name, self.spec.version)
        batches = self._batches[id(executor)]
        batches.remove(dispatch)
        if not batches:
            self._free.append(executor)
        self._in_flight -= 1
        end = time.monotonic_ns()
        if work.cancelled() or work.exception() is not None:
            exc = work.exception() if not work.cancelled() else None
            result = _BatchResult([ExecutorError(f"batch execution failed: {exc!r}")] * len(pending))
        else:
            result = work.result()
        rows = sum(p.rows for p, o in zip(pending, result.outputs) if not isinstance(o, _NotRun))
        if any(not isinstance(o, BaseException) for o in result.outputs):
            self.stats.record_batch(rows, result.input_ns, result.infer_ns, result.output_ns)
            took = result.input_ns + result.infer_ns + result.output_ns
            if self._adaptive is not None:
                self._adaptive.observe_execution(took, rows)
                self._adaptive.observe_answered(end, rows, self._batcher.target_rows)
            (self._lone if len(pending) == 1 else self._batched).observe(took, self._inline_ns, pending)
        for p, out in zip(pending, result.outputs):
            if p.request.trace is not None:
                p.request.trace.batched(p.enqueue_ns, p.dispatch_ns, end, rows, len(pending))
            if out is _CANCELLED:
                continue
            if out is _EXPIRED:
                self._fail_expired(p)
            elif isinstance(out, BaseException):
                self.stats.fail.add(end - p.enqueue_ns)
                if not p.future.done():
                    p.future.set_exception(out)
            else:
                self.stats.success.add(end - p.enqueue_ns)
                if not p.future.done():
                    p.future.set_result(out)
        self.stats.last_inference_ms = time.time_ns() // 1_000_000
        self._pump()
        if self.observer is not None and result.batch is not None:
            self.observer(*result.batch)

    # -- worker thread ----------------------------------------------------------

    def _execute(self, dispatch: _Dispatch) -> _BatchResult:
        with dispatch.lock:
            dispatch.started = True
            if dispatch.abandoned or dispatch.timed_out:
                # Every caller left (or the batch timed out) before it started: nobody waits for it.
                dispatch.finished = True
                return _BatchResult([_CANCELLED] * len(dispatch.pending))
        try:
            gone = _not_wanted(dispatch.pending, time.monotonic_ns())
            if gone:
                return self._execute_live(dispatch, gone)
            return self._execute_all(dispatch, dispatch.pending)
        finally:
            with dispatch.lock:
                dispatch.finished = True
                if dispatch.aborted and dispatch.abortable is not None:
                    dispatch.abortable.rearm()  # before the instance's next batch starts on this thread

    def _execute_live(self, dispatch: _Dispatch, gone: dict[int, _NotRun]) -> _BatchResult:
        """Run only the requests of the batch still wanted (``gone``: the others, by id)."""
        live = [p for p in dispatch.pending if id(p) not in gone]
        outputs = dict(zip(map(id, live), self._execute_all(dispatch, live).outputs)) if live else {}
        return _BatchResult([gone.get(id(p)) or outputs[id(p)] for p in dispatch.pending])

    def _execute_all(self, dispatch: _Dispatch, pending: list[Pending]) -> _BatchResult:
        executor = dispatch.executor
        names = self._output_names(pending)
        try:
            return self._run_batch(executor, pending, names)
        except Exception as exc:  # noqa: BLE001 - any runtime failure is the batch's, not the daemon's
            # An aborted batch is not retried: its requests were already answered.
            if len(pending) == 1 or dispatch.timed_out or dispatch.abandoned:
                return _BatchResult([_executor_error(self.spec, exc)] * len(pending))
        # One request may be poisoning the batch: run each alone so only it fails.
        outputs: list[dict[str, np.ndarray] | BaseException] = []
        for p in pending:
            try:
                outputs.append(self._run_batch(executor, [p], names).outputs[0])
            except Exception as exc:  # noqa: BLE001
                outputs.append(_executor_error(self.spec, exc))
        return _BatchResult(outputs)

    def _output_names(self, pending: list[Pending]) -> list[str]:
        wanted: set[str] = set()
        for p in pending:
            if p.request.outputs is None:
                return list(self.spec.output_names)
            wanted.update(o.name for o in p.request.outputs)
        return [n for n in self.spec.output_names if n in wanted]

    def _run_batch(self, executor: Executor, pending: list[Pending], names: list[str]) -> _BatchResult:
        t0 = time.perf_counter_ns()
        feeds = self._gather(pending)
        t1 = time.perf_counter_ns()
        arrays = executor.run(feeds, names)
        t2 = time.perf_counter_ns()
        outputs = self._scatter(pending, names, arrays)
        t3 = time.perf_counter_ns()
        return _BatchResult(outputs, t1 - t0, t2 - t1, t3 - t2, (feeds, dict(zip(names, arrays))))

    def _gather(self, pending: list[Pending]) -> dict[str, np.ndarray]:
        first = pending[0].request.inputs
        if len(pending) == 1:
            return dict(first)
        total = sum(p.rows for p in pending)
        feeds = {}
        for name, head in first.items():
            arrays = [p.request.inputs[name] for p in pending]
            if name in self.spec.ragged_inputs:
                trailing = tuple(max(a.shape[d] for a in arrays) for d in range(1, head.ndim))
                out = np.empty((total, *trailing), dtype=head.dtype)
                native.gather_padded(arrays, out, self.spec.ragged_inputs[name])
            else:
                out = np.empty((total, *head.shape[1:]), dtype=head.dtype)
                native.gather_rows(arrays, out)
            feeds[name] = out
        return feeds

    def _scatter(self, pending: list[Pending], names: list[str], arrays: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        if len(pending) == 1:
            return [_select(pending[0], names, arrays)]
        counts = [p.rows for p in pending]
        parts = [native.split_rows(a, counts) for a in arrays]
        return [_select(p, names, [part[i] for part in parts]) for i, p in enumerate(pending)]

    # -- lifecycle ----------------------------------------------------------------

    @property
    def queue_depth(self) -> int:
        """Requests waiting: in the queue, and in prepared batches whose instance still runs another."""
        return len(self._batcher) + self._prepared_requests()

    def _prepared_requests(self) -> int:
        return sum(len(d.pending) for batches in self._batches.values() for d in batches[1:])

    @property
    def instances(self) -> int:
        return len(self._executors)

    @property
    def busy_instances(self) -> int:
        return sum(1 for batches in self._batches.values() if batches)

    @property
    def stuck_instances(self) -> int:
        return len(self._stuck)

    async def drain(self, timeout_s: float) -> None:
        """Stop taking requests, let accepted ones finish (bounded), then fail the rest."""
        self._accepting = False
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
        except TimeoutError:
            _log.warning("model %s:%s drain timed out; failing %d queued requests",
                         self.spec.name, self.spec.version, len(self._batcher))
        for p in map(_pending, self._batcher.drain_all()):
            if not p.future.done():
                p.future.set_exception(ModelNotReadyError(f"model '{self.spec.name}' was unloaded"))
        if self._timer is not None:
            self._timer.cancel()
        for pool in self._pools.values():
            pool.shutdown(wait=False)
        for ex in self._executors:
            ex.close()


class _NotRun(Exception):
    """The output of a request of a dispatched batch that was not run."""


_EXPIRED = _NotRun("passed its deadline while its prepared batch waited")
_CANCELLED = _NotRun("its caller left before the batch started")


def _not_wanted(pending: list[Pending], now: int) -> dict[int, _NotRun]:
    """The requests of a batch that must not run, by id: a prepared batch waited, so callers may have
    left (dropped) and deadlines passed (failed as they would have in the queue) since it was formed.
    Futures are read on the worker thread under the GIL; one cancelled after this still runs, as it
    would once its batch had started."""
    gone: dict[int, _NotRun] = {}
    for p in pending:
        if p.future.cancelled():
            gone[id(p)] = _CANCELLED
        elif p.expire_ns and p.expire_ns <= now:
            gone[id(p)] = _EXPIRED
    return gone


def _input_bytes(p: Pending) -> int:
    return sum(a.nbytes for a in p.request.inputs.values())


def _pending(item: QueuedRequest) -> Pending:
    """The Pending that submit() queued (the queue keeps its payloads opaque)."""
    p = item.payload
    assert isinstance(p, Pending)
    return p


def _select(p: Pending, names: list[str], arrays: list[np.ndarray]) -> dict[str, np.ndarray]:
    if p.request.outputs is None:
        return dict(zip(names, arrays))
    wanted = {o.name for o in p.request.outputs}
    return {n: a for n, a in zip(names, arrays) if n in wanted}


def _executor_error(spec: SchedulerSpec, exc: Exception) -> GatewayError:
    return ExecutorError(f"model '{spec.name}' version {spec.version} failed: {exc}")
