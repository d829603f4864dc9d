"""The scheduler's asyncio glue with a gated fake executor: ordering is decided by the test."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from gateway.core.errors import DeadlineExceededError, ExecutorError, QueueFullError
from gateway.core.stats import ModelStats
from gateway.core.types import InferRequest, TensorSpec
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.runner import ModelScheduler, SchedulerSpec

WAIT_S = 10  # bound on every wait


class GatedExecutor:
    """Doubles its input; each run blocks until the test opens the gate."""

    inputs = (TensorSpec("x", "FP32", (-1, 2)),)
    outputs = (TensorSpec("y", "FP32", (-1, 2)),)

    def __init__(self, gated: bool = True) -> None:
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.started = threading.Semaphore(0)
        self.batches: list[list[float]] = []
        self.closed = False

    def run(self, feeds, output_names):
        self.started.release()
        assert self.gate.wait(WAIT_S)
        x = feeds["x"]
        if np.any(x < 0):
            raise RuntimeError("negative input")
        self.batches.append(x[:, 0].tolist())
        return [x * 2]

    def close(self):
        self.closed = True


def make(policy: BatchingPolicy, executor: GatedExecutor) -> tuple[ModelScheduler, ModelStats]:
    stats = ModelStats()
    spec = SchedulerSpec(name="m", version="1", batching=True, output_names=("y",))
    return ModelScheduler(spec, policy, [executor], stats), stats


def req(value: float, rows: int = 1, deadline_ns: int = 0) -> InferRequest:
    x = np.full((rows, 2), value, dtype=np.float32)
    return InferRequest(model="m", version="", inputs={"x": x}, datatypes={"x": "FP32"}, deadline_ns=deadline_ns)


async def wait_started(ex: GatedExecutor) -> None:
    assert await asyncio.to_thread(ex.started.acquire, True, WAIT_S)


def test_requests_queued_behind_a_busy_instance_form_one_batch():
    async def main():
        ex = GatedExecutor()
        sched, stats = make(BatchingPolicy(max_batch_size=8), ex)
        first = sched.submit(req(1), 1, (), 0)
        await wait_started(ex)
        rest = [sched.submit(req(v), 1, (), 0) for v in (2, 3, 4)]
        ex.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *rest), WAIT_S)
        assert ex.batches == [[1.0], [2.0, 3.0, 4.0]]
        assert [r["y"][0, 0] for r in results] == [2.0, 4.0, 6.0, 8.0]
        assert stats.execution_count == 2 and stats.inference_count == 4
        assert set(stats.batches) == {1, 3}
        await sched.drain(1)
        assert ex.closed

    asyncio.run(main())


def test_outputs_are_scattered_by_rows():
    async def main():
        ex = GatedExecutor()
        sched, _ = make(BatchingPolicy(max_batch_size=8), ex)
        block = sched.submit(req(9), 1, (), 0)
        await wait_started(ex)
        a = sched.submit(req(1, rows=2), 2, (), 0)
        b = sched.submit(req(5, rows=3), 3, (), 0)
        ex.gate.set()
        ra, rb, _ = await asyncio.wait_for(asyncio.gather(a, b, block), WAIT_S)
        assert ra["y"].shape == (2, 2) and np.all(ra["y"] == 2)
        assert rb["y"].shape == (3, 2) and np.all(rb["y"] == 10)
        await sched.drain(1)

    asyncio.run(main())


def test_priority_levels_are_served_highest_first():
    async def main():
        ex = GatedExecutor()
        sched, _ = make(BatchingPolicy(max_batch_size=1, priority_levels=2, default_priority=2), ex)
        block = sched.submit(req(0), 1, (), 0)
        await wait_started(ex)
        low = sched.submit(req(1), 1, (), 2)
        high = sched.submit(req(2), 1, (), 1)
        ex.gate.set()
        await asyncio.wait_for(asyncio.gather(block, low, high), WAIT_S)
        assert ex.batches == [[0.0], [2.0], [1.0]]
        await sched.drain(1)

    asyncio.run(main())


def test_full_queue_is_refused_at_once():
    async def main():
        ex = GatedExecutor()
        sched, stats = make(BatchingPolicy(max_batch_size=1, max_queue_size=1), ex)
        running = sched.submit(req(0), 1, (), 0)
        await wait_started(ex)
        queued = sched.submit(req(1), 1, (), 0)
        with pytest.raises(QueueFullError):
            sched.submit(req(2), 1, (), 0)
        assert stats.rejected_queue_full == 1
        ex.gate.set()
        await asyncio.wait_for(asyncio.gather(running, queued), WAIT_S)
        await sched.drain(1)

    asyncio.run(main())


def test_deadline_passed_in_queue_fails_without_running():
    async def main():
        ex = GatedExecutor()
        sched, stats = make(BatchingPolicy(max_batch_size=4), ex)
        running = sched.submit(req(0), 1, (), 0)
        await wait_started(ex)
        loop = asyncio.get_running_loop()
        import time

        doomed = sched.submit(req(7, deadline_ns=time.monotonic_ns() + 20_000_000), 1, (), 0)
        with pytest.raises(DeadlineExceededError):
            await asyncio.wait_for(doomed, WAIT_S)  # the timer fires while the executor is still busy
        ex.gate.set()
        await asyncio.wait_for(running, WAIT_S)
        assert ex.batches == [[0.0]]
        assert stats.rejected_deadline == 1
        assert loop.is_running()
        await sched.drain(1)

    asyncio.run(main())


def test_partial_batch_waits_for_queue_delay_then_runs():
    async def main():
        ex = GatedExecutor(gated=False)
        sched, _ = make(BatchingPolicy(max_batch_size=8, max_queue_delay_ns=30_000_000), ex)
        a = sched.submit(req(1), 1, (), 0)
        b = sched.submit(req(2), 1, (), 0)
        await asyncio.wait_for(asyncio.gather(a, b), WAIT_S)
        # Both arrived inside the delay window of the first, so they ran together.
        assert ex.batches == [[1.0, 2.0]]
        await sched.drain(1)

    asyncio.run(main())


def test_cancelled_request_is_not_executed():
    async def main():
        ex = GatedExecutor()
        sched, _ = make(BatchingPolicy(max_batch_size=1), ex)
        running = sched.submit(req(0), 1, (), 0)
        await wait_started(ex)
        gone = sched.submit(req(5), 1, (), 0)
        kept = sched.submit(req(6), 1, (), 0)
        gone.cancel()
        ex.gate.set()
        await asyncio.wait_for(asyncio.gather(running, kept), WAIT_S)
        assert ex.batches == [[0.0], [6.0]]
        await sched.drain(1)

    asyncio.run(main())


def test_a_failing_request_does_not_fail_its_batch_mates():
    async def main():
        ex = GatedExecutor()
        sched, stats = make(BatchingPolicy(max_batch_size=8), ex)
        block = sched.submit(req(0), 1, (), 0)
        await wait_started(ex)
        good1 = sched.submit(req(1), 1, (), 0)
        bad = sched.submit(req(-1), 1, (), 0)
        good2 = sched.submit(req(3), 1, (), 0)
        ex.gate.set()
        results = await asyncio.wait_for(asyncio.gather(block, good1, bad, good2, return_exceptions=True), WAIT_S)
        assert results[1]["y"][0, 0] == 2.0 and results[3]["y"][0, 0] == 6.0
        assert isinstance(results[2], ExecutorError) and "negative input" in str(results[2])
        assert stats.fail.count == 1 and stats.success.count == 3
        await sched.drain(1)

    asyncio.run(main())


def test_drain_finishes_accepted_work_and_refuses_new():
    async def main():
        ex = GatedExecutor()
        sched, _ = make(BatchingPolicy(max_batch_size=1), ex)
        running = sched.submit(req(1), 1, (), 0)
        queued = sched.submit(req(2), 1, (), 0)
        await wait_started(ex)
        drain = asyncio.get_running_loop().create_task(sched.drain(WAIT_S))
        await asyncio.sleep(0)  # let drain flip the accepting flag
        from gateway.core.errors import ModelNotReadyError

        with pytest.raises(ModelNotReadyError):
            sched.submit(req(3), 1, (), 0)
        ex.gate.set()
        r1, r2 = await asyncio.wait_for(asyncio.gather(running, queued), WAIT_S)
        await asyncio.wait_for(drain, WAIT_S)
        assert r1["y"][0, 0] == 2.0 and r2["y"][0, 0] == 4.0

    asyncio.run(main())


class ShapeRecordingExecutor(GatedExecutor):
    """Records each batch's input shape; echoes its input."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def run(self, feeds, output_names):
        self.started.release()
        assert self.gate.wait(WAIT_S)
        self.shapes.append(feeds["x"].shape)
        return [feeds["x"].copy()]


def _ragged_scheduler(ragged: bool) -> tuple[ModelScheduler, ShapeRecordingExecutor]:
    ex = ShapeRecordingExecutor()
    spec = SchedulerSpec(name="m", version="1", batching=True, output_names=("y",),
                         ragged_inputs={"x": -1.0} if ragged else {})
    return ModelScheduler(spec, BatchingPolicy(max_batch_size=8), [ex], ModelStats()), ex


def _seq(length: int, value: float) -> InferRequest:
    x = np.full((1, length), value, dtype=np.float32)
    return InferRequest(model="m", version="", inputs={"x": x}, datatypes={"x": "FP32"})


def test_different_trailing_dims_are_batched_apart():
    async def main():
        sched, ex = _ragged_scheduler(ragged=False)
        block = sched.submit(_seq(2, 0), 1, ((2,),), 0)
        await wait_started(ex)
        a = sched.submit(_seq(3, 1), 1, ((3,),), 0)
        b = sched.submit(_seq(5, 2), 1, ((5,),), 0)
        c = sched.submit(_seq(3, 3), 1, ((3,),), 0)
        ex.gate.set()
        ra, rb, rc, _ = await asyncio.wait_for(asyncio.gather(a, b, c, block), WAIT_S)
        assert ex.shapes == [(1, 2), (2, 3), (1, 5)]
        assert ra["y"].tolist() == [[1, 1, 1]] and rc["y"].tolist() == [[3, 3, 3]] and rb["y"].shape == (1, 5)
        await sched.drain(1)

    asyncio.run(main())


def test_ragged_inputs_are_padded_into_one_batch():
    async def main():
        sched, ex = _ragged_scheduler(ragged=True)
        block = sched.submit(_seq(2, 0), 1, (), 0)
        await wait_started(ex)
        a = sched.submit(_seq(3, 1), 1, (), 0)
        b = sched.submit(_seq(5, 2), 1, (), 0)
        ex.gate.set()
        ra, rb, _ = await asyncio.wait_for(asyncio.gather(a, b, block), WAIT_S)
        assert ex.shapes == [(1, 2), (2, 5)]
        # Outputs come back as the batch computed them: padded with the pad value.
        assert ra["y"].tolist() == [[1, 1, 1, -1, -1]]
        assert rb["y"].tolist() == [[2, 2, 2, 2, 2]]
        await sched.drain(1)

    asyncio.run(main())


class ThreadRecordingExecutor(GatedExecutor):
    """Records which thread ran each batch, and takes ``sleep_s`` doing it."""

    def __init__(self, sleep_s: float = 0.0) -> None:
        super().__init__(gated=False)
        self.threads: list[str] = []
        self.sleep_s = sleep_s

    def run(self, feeds, output_names):
        self.threads.append(threading.current_thread().name)
        if self.sleep_s:
            threading.Event().wait(self.sleep_s)
        return super().run(feeds, output_names)


def _inline_scheduler(ex: GatedExecutor, inline_us: int) -> ModelScheduler:
    spec = SchedulerSpec(name="m", version="1", batching=True, output_names=("y",), inline_execute_ns=inline_us * 1000)
    return ModelScheduler(spec, BatchingPolicy(max_batch_size=8), [ex], ModelStats())


@pytest.mark.parametrize("inline_us, sleep_s, inline_expected", [
    (1000, 0.0, True),  # measured fast: lone requests run on the loop after the first
    (0, 0.0, False),  # switched off
    (50, 0.002, False),  # measured slower than the bound: always the executor thread
])
def test_lone_request_runs_inline_only_when_measured_fast(inline_us, sleep_s, inline_expected):
    async def main():
        ex = ThreadRecordingExecutor(sleep_s)
        sched = _inline_scheduler(ex, inline_us)
        for v in range(4):
            out = await asyncio.wait_for(sched.submit(req(v), 1, (), 0), WAIT_S)
            assert out["y"][0, 0] == 2 * v
        loop_thread = threading.current_thread().name
        assert ex.threads[0] != loop_thread  # nothing measured yet: the executor thread
        assert all((t == loop_thread) == inline_expected for t in ex.threads[1:]), ex.threads
        await sched.drain(1)

    asyncio.run(main())


def test_queued_requests_are_not_run_inline():
    async def main():
        ex = ThreadRecordingExecutor()
        sched = _inline_scheduler(ex, 1000)
        await asyncio.wait_for(sched.submit(req(1), 1, (), 0), WAIT_S)  # measured fast from now on
        ex.threads.clear()
        results = await asyncio.wait_for(asyncio.gather(*(sched.submit(req(v), 1, (), 0) for v in range(5))), WAIT_S)
        assert [r["y"][0, 0] for r in results] == [0, 2, 4, 6, 8]
        # The first arrival found the model idle and ran inline; the others queued behind it
        # and ran as one batch in the executor thread, not one by one on the loop.
        assert ex.threads[0] == threading.current_thread().name
        assert len(ex.threads) == 2 and ex.threads[1] != threading.current_thread().name, ex.threads
        await sched.drain(1)

    asyncio.run(main())


class ValueDependentExecutor(ThreadRecordingExecutor):
    data_dependent_cost = True  # as onnxruntime reports a model with a Loop


def test_a_model_whose_cost_follows_input_values_never_runs_inline():
    async def main():
        ex = ValueDependentExecutor()
        sched = _inline_scheduler(ex, 1000)
        for v in range(4):
            await asyncio.wait_for(sched.submit(req(v), 1, (), 0), WAIT_S)
        assert threading.current_thread().name not in ex.threads
        await sched.drain(1)

    asyncio.run(main())


def test_an_input_larger_than_any_measured_fast_runs_in_the_executor_thread():
    async def main():
        ex = ThreadRecordingExecutor()
        sched = _inline_scheduler(ex, 1000)
        for _ in range(2):
            await asyncio.wait_for(sched.submit(req(1), 1, (), 0), WAIT_S)
        loop_thread = threading.current_thread().name
        assert ex.threads[-1] == loop_thread
        out = await asyncio.wait_for(sched.submit(req(2, rows=4), 4, (), 0), WAIT_S)
        assert out["y"].shape == (4, 2)
        assert ex.threads[-1] != loop_thread  # four rows were never measured
        await sched.drain(1)

    asyncio.run(main())


class SlowsDownExecutor(ThreadRecordingExecutor):
    """Fast until told otherwise: a model whose cost jumped on an input the scheduler measured as
    cheap (x = 99: 150 ms, past INLINE_HARD_NS; x = 98: 15 ms, over the slow bound but short)."""

    def run(self, feeds, output_names):
        self.sleep_s = {99: 0.15, 98: 0.015}.get(int(feeds["x"][0, 0]), 0.0)
        return super().run(feeds, output_names)


def test_one_very_long_inline_run_switches_inlining_off_for_the_version():
    async def main():
        ex = SlowsDownExecutor()
        sched = _inline_scheduler(ex, 1000)
        loop_thread = threading.current_thread().name
        for v in (1, 2, 99):
            await asyncio.wait_for(sched.submit(req(v), 1, (), 0), WAIT_S)
        assert ex.threads[1:] == [loop_thread, loop_thread]  # the 150 ms run was on the loop, once
        for v in (3, 4):
            await asyncio.wait_for(sched.submit(req(v), 1, (), 0), WAIT_S)
        assert loop_thread not in ex.threads[3:], ex.threads
        await sched.drain(1)

    asyncio.run(main())


def test_a_slow_inline_run_now_and_then_keeps_inlining_but_repeated_ones_end_it():
    """One slow run among many (a garbage collection, the OS taking the core) is no verdict on the
    model; three within a short run of requests are."""
    async def main():
        ex = SlowsDownExecutor()
        sched = _inline_scheduler(ex, 1000)
        loop_thread = threading.current_thread().name

        async def until_inline(limit: int = 40) -> None:
            """Fast requests until one runs on the loop again (the measured time settles back)."""
            for v in range(limit):
                await asyncio.wait_for(sched.submit(req(v % 8), 1, (), 0), WAIT_S)
                if ex.threads[-1] == loop_thread:
                    return
            raise AssertionError(f"no inline run in {limit} fast requests: {ex.threads[-limit:]}")

        await until_inline()
        for _ in range(2):  # a slow run on the loop is a strike, and inlining goes on after it
            await asyncio.wait_for(sched.submit(req(98), 1, (), 0), WAIT_S)
            assert ex.threads[-1] == loop_thread
            await until_inline()
        await asyncio.wait_for(sched.submit(req(98), 1, (), 0), WAIT_S)  # the third, soon after: the end
        assert ex.threads[-1] == loop_thread
        for v in range(20):
            await asyncio.wait_for(sched.submit(req(v % 8), 1, (), 0), WAIT_S)
        assert loop_thread not in ex.threads[-20:], ex.threads
        await sched.drain(1)

    asyncio.run(main())


# -- prepared batches: an instance goes from one run to the next without the loop ---------------


def test_a_full_batch_is_prepared_behind_the_running_one_and_starts_without_the_loop():
    async def main():
        ex = GatedExecutor()
        sched, stats = make(BatchingPolicy(max_batch_size=1), ex)
        first = sched.submit(req(1), 1, (), 0)
        await wait_started(ex)
        second = sched.submit(req(2), 1, (), 0)  # a full batch (one row): prepared at once
        assert sched.queue_depth == 1 and sched.busy_instances == 1  # waiting, reported as queued
        ex.gate.set()
        # Blocking the loop here: the instance's thread must start the prepared batch on its own.
        assert ex.started.acquire(True, WAIT_S), "the prepared batch did not start without the loop"
        results = await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
        assert [r["y"][0, 0] for r in results] == [2.0, 4.0]
        assert ex.batches == [[1.0], [2.0]] and stats.execution_count == 2
        assert sched.queue_depth == 0 and sched.busy_instances == 0
        await sched.drain(1)

    asyncio.run(main())


def test_a_partial_batch_waits_in_the_queue_under_a_fixed_window():
    async def main():
        ex = GatedExecutor()
        sched, _ = make(BatchingPolicy(max_batch_size=4), ex)
        first = sched.submit(req(1), 1, (), 0)
        await wait_started(ex)
        later = [sched.submit(req(v), 1, (), 0) for v in (2, 3)]
        assert len(sched._batcher) == 2 and sched.queue_depth == 2  # noqa: SLF001 - not taken out of the queue
        later.append(sched.submit(req(4), 1, (), 0))
        ex.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *later), WAIT_S)
        assert ex.batches == [[1.0], [2.0, 3.0, 4.0]]  # the latecomer still joined them
        await sched.drain(1)

    asyncio.run(main())


def test_a_prepared_request_past_its_deadline_fails_without_running():
    async def main():
        import time

        ex = GatedExecutor()
        sched, stats = make(BatchingPolicy(max_batch_size=1), ex)
        running = sched.submit(req(0), 1, (), 0)
        await wait_started(ex)
        deadline = time.monotonic_ns() + 20_000_000
        doomed = sched.submit(req(7, deadline_ns=deadline), 1, (), 0)  # prepared: no queue timer for it
        async with asyncio.timeout(WAIT_S):
            while time.monotonic_ns() <= deadline:  # the deadline passes while it waits
                await asyncio.sleep(0.005)
        ex.gate.set()
        with pytest.raises(DeadlineExceededError):
            await asyncio.wait_for(doomed, WAIT_S)
        await asyncio.wait_for(running, WAIT_S)
        assert ex.batches == [[0.0]] and stats.rejected_deadline == 1
        await sched.drain(1)

    asyncio.run(main())


class AbortableGated(GatedExecutor):
    """An executor whose run abort() ends (as onnxruntime's terminate flag does) until rearm()."""

    def __init__(self) -> None:
        super().__init__()
        self.abort_flag = threading.Event()
        self.calls: list[str] = []

    def run(self, feeds, output_names):
        self.calls.append(f"run {feeds['x'][0, 0]:g}")
        self.started.release()
        while not self.gate.wait(0.001):
            if self.abort_flag.is_set():
                raise RuntimeError("aborted")
        if self.abort_flag.is_set():
            raise RuntimeError("aborted")
        self.batches.append(feeds["x"][:, 0].tolist())
        return [feeds["x"] * 2]

    def abort(self) -> None:
        self.calls.append("abort")
        self.abort_flag.set()

    def rearm(self) -> None:
        self.calls.append("rearm")
        self.abort_flag.clear()


def test_cancelling_a_prepared_batch_skips_it_and_never_aborts_the_running_one():
    async def main():
        ex = AbortableGated()
        sched, _ = make(BatchingPolicy(max_batch_size=1), ex)
        running = sched.submit(req(1), 1, (), 0)
        await wait_started(ex)
        prepared = sched.submit(req(2), 1, (), 0)
        prepared.cancel()
        await asyncio.sleep(0)  # the cancellation's callbacks run
        ex.gate.set()
        assert (await asyncio.wait_for(running, WAIT_S))["y"][0, 0] == 2.0
        after = await asyncio.wait_for(sched.submit(req(3), 1, (), 0), WAIT_S)
        assert after["y"][0, 0] == 6.0
        assert ex.calls == ["run 1", "run 3"]  # the prepared one skipped, nothing aborted
        await sched.drain(1)

    asyncio.run(main())


def test_an_aborted_run_is_rearmed_before_the_prepared_batch_behind_it_starts():
    async def main():
        ex = AbortableGated()
        sched, _ = make(BatchingPolicy(max_batch_size=1), ex)
        doomed = sched.submit(req(1), 1, (), 0)
        await wait_started(ex)
        prepared = sched.submit(req(2), 1, (), 0)
        doomed.cancel()  # its only caller left while it ran: the run is aborted
        assert await asyncio.to_thread(ex.started.acquire, True, WAIT_S)  # the prepared batch started
        ex.gate.set()
        assert (await asyncio.wait_for(prepared, WAIT_S))["y"][0, 0] == 4.0
        assert ex.calls == ["run 1", "abort", "rearm", "run 2"]
        await sched.drain(1)

    asyncio.run(main())


def test_with_the_adaptive_window_a_partial_batch_as_large_as_the_running_one_is_prepared():
    async def main():
        ex = GatedExecutor()
        stats = ModelStats()
        spec = SchedulerSpec(name="m", version="1", batching=True, output_names=("y",), adaptive_delay=True)
        sched = ModelScheduler(spec, BatchingPolicy(max_batch_size=8), [ex], stats)
        first = sched.submit(req(1, rows=2), 2, (), 0)
        await wait_started(ex)
        smaller = sched.submit(req(2), 1, (), 0)
        assert len(sched._batcher) == 1  # noqa: SLF001 - one row behind two: it waits in the queue
        as_large = sched.submit(req(3), 1, (), 0)
        assert len(sched._batcher) == 0 and sched.queue_depth == 2  # noqa: SLF001 - two rows: prepared
        late = sched.submit(req(4), 1, (), 0)  # the instance has its prepared batch: this one queues
        assert len(sched._batcher) == 1  # noqa: SLF001
        ex.gate.set()
        await asyncio.wait_for(asyncio.gather(first, smaller, as_large, late), WAIT_S)
        assert ex.batches == [[1.0, 1.0], [2.0, 3.0], [4.0]]
        await sched.drain(1)

    asyncio.run(main())


def _together(sched: ModelScheduler, values: range) -> list:
    """Requests submitted in one loop pass: the first finds the model idle, the rest queue behind it."""
    return [sched.submit(req(v), 1, (), 0) for v in values]


def test_batches_measured_fast_run_on_the_loop_as_one_batch():
    async def main():
        ex = ThreadRecordingExecutor()
        sched = _inline_scheduler(ex, 1000)
        loop_thread = threading.current_thread().name
        await asyncio.wait_for(sched.submit(req(1), 1, (), 0), WAIT_S)  # a lone request measured fast
        await asyncio.wait_for(asyncio.gather(*_together(sched, range(5))), WAIT_S)
        assert ex.threads[-1] != loop_thread  # the first batch of several: not measured yet
        ex.threads.clear()
        ex.batches.clear()
        results = await asyncio.wait_for(asyncio.gather(*_together(sched, range(5))), WAIT_S)
        assert [r["y"][0, 0] for r in results] == [0, 2, 4, 6, 8]
        assert ex.batches == [[0.0], [1.0, 2.0, 3.0, 4.0]]  # still one batch, not one run each
        assert ex.threads == [loop_thread, loop_thread]
        await sched.drain(1)

    asyncio.run(main())


def test_batches_measured_slower_than_the_bound_stay_in_the_executor_thread():
    async def main():
        ex = ThreadRecordingExecutor(sleep_s=0.002)
        sched = _inline_scheduler(ex, 50)
        for _ in range(3):
            await asyncio.wait_for(asyncio.gather(*_together(sched, range(5))), WAIT_S)
        assert len(ex.threads) == 6
        assert threading.current_thread().name not in ex.threads
        await sched.drain(1)

    asyncio.run(main())


def test_a_batch_larger_than_any_measured_fast_runs_in_the_executor_thread():
    async def main():
        ex = ThreadRecordingExecutor()
        sched = _inline_scheduler(ex, 1000)
        loop_thread = threading.current_thread().name
        await asyncio.wait_for(sched.submit(req(1), 1, (), 0), WAIT_S)
        for _ in range(2):  # batches of 2 measured, then run on the loop
            await asyncio.wait_for(asyncio.gather(*_together(sched, range(3))), WAIT_S)
        assert ex.batches[-1] == [1.0, 2.0] and ex.threads[-1] == loop_thread
        await asyncio.wait_for(asyncio.gather(*_together(sched, range(8))), WAIT_S)
        assert ex.batches[-1] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]
        assert ex.threads[-1] != loop_thread  # seven rows: more input than any batch measured fast
        await sched.drain(1)

    asyncio.run(main())
