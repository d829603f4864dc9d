"""Adaptive queue delay, stepped by hand."""

from __future__ import annotations

from gateway.scheduler.adaptive import AdaptiveDelay
from gateway.scheduler.batcher import DynamicBatcher
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.queue import QueuedRequest

US = 1000


def observed(gap_us: int, exec_us: int) -> AdaptiveDelay:
    a = AdaptiveDelay()
    for i in range(50):
        a.observe_arrival(i * gap_us * US)
        a.observe_execution(exec_us * US)
    return a


def test_no_observations_means_no_wait():
    assert AdaptiveDelay().delay_ns(1, 8, executor_idle=True) == 0


def test_idle_executor_and_sparse_arrivals_do_not_wait():
    # One client: the next request comes long after a batch would have finished.
    a = observed(gap_us=1000, exec_us=50)
    assert a.delay_ns(1, 8, executor_idle=True) == 0


def test_dense_arrivals_wait_to_fill_bounded_by_one_execution():
    a = observed(gap_us=10, exec_us=500)
    assert a.gap_ns == 10 * US and a.exec_ns == 500 * US
    # 7 more rows expected in 70 us: wait that long, not the whole 500 us.
    assert a.delay_ns(1, 8, executor_idle=True) == 70 * US
    slow = observed(gap_us=200, exec_us=500)
    # Filling would take 1.4 ms: never wait longer than one execution.
    assert slow.delay_ns(1, 8, executor_idle=True) == 500 * US


def test_full_batch_never_waits():
    a = observed(gap_us=10, exec_us=500)
    assert a.delay_ns(8, 8, executor_idle=True) == 0


def test_batcher_delay_is_capped_by_policy():
    b = DynamicBatcher(BatchingPolicy(max_batch_size=8, max_queue_delay_ns=100 * US))
    b.add(QueuedRequest(rows=1, shape_key=()), 0)
    b.set_queue_delay(10 * US)
    assert b.next_batch(5 * US) is None
    assert b.next_batch(10 * US) is not None
    b.add(QueuedRequest(rows=1, shape_key=()), 0)
    b.set_queue_delay(10_000 * US)  # above the cap
    assert b.next_wakeup(0) == 100 * US
    b.set_queue_delay(0)
    assert b.next_batch(0) is not None
    assert b.target_rows == 8
