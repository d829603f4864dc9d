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


def _profiled(gap_us: float, one_row_us: float, rows: int, batch_us: float) -> AdaptiveDelay:
    a = AdaptiveDelay()
    for i in range(50):
        a.observe_arrival(int(i * gap_us * US))
        a.observe_execution(int(one_row_us * US), 1)
        a.observe_execution(int(batch_us * US), rows)
    return a


def test_compute_bound_model_does_not_idle_its_executor_to_fill_a_batch():
    # cnn-like: 470 us for one row, 6.9 ms for 16 (per row 429 us, per run ~40 us);
    # rows arrive every 300 us: waiting for a fuller batch only idles the executor.
    a = _profiled(gap_us=300, one_row_us=470, rows=16, batch_us=6900)
    assert a.delay_ns(16, 32, executor_idle=True) == 0
    assert a.delay_ns(16, 32, executor_idle=False) > 0  # busy: collecting costs nothing


def test_model_with_a_large_fixed_cost_still_waits():
    # GPU-like: 450 us per run whatever the rows, 6 us per row; rows every 10 us.
    a = _profiled(gap_us=10, one_row_us=456, rows=8, batch_us=498)
    assert a.delay_ns(1, 32, executor_idle=True) > 0


def test_cheap_rows_still_wait_to_fill():
    # mlp-like: 20 us for one row, 40 us for 16; rows every 30 us (the loop is the bottleneck).
    a = _profiled(gap_us=30, one_row_us=20, rows=16, batch_us=40)
    assert a.delay_ns(4, 32, executor_idle=True) > 0


def test_closed_loop_clients_answered_are_waited_for_until_they_come_back():
    # One client per row, each sending again ~100 us after its answer: a batch of 8 was just
    # answered at t=1 ms; the first to come back is queued alone with the executor idle.
    a = observed(gap_us=1000, exec_us=50)  # sparse on average: without the rule, no wait
    t = 1000 * US
    for _ in range(20):  # the round trip, learnt: answers bring arrivals ~100 us later
        a.observe_answered(t, 8, 32)
        for _ in range(8):
            a.observe_arrival(t + 100 * US)
        t += 1000 * US
    assert 90 * US < a.return_ns < 110 * US and a.owed == 0
    a.observe_answered(t, 8, 32)
    a.observe_arrival(t + 100 * US)  # 1 of 8 back: 7 still on their way
    delay = a.delay_ns(1, 32, executor_idle=True, now_ns=t + 100 * US, oldest_ns=t + 100 * US)
    assert delay == 2 * a.return_ns - 100 * US  # until twice the round trip after the answer
    for _ in range(7):
        a.observe_arrival(t + 110 * US)
    assert a.owed == 0  # all back: the batch goes now
    assert a.delay_ns(8, 32, executor_idle=True, now_ns=t + 110 * US, oldest_ns=t + 100 * US) == 0


def test_answers_that_do_not_come_back_end_the_wait():
    a = observed(gap_us=1000, exec_us=50)
    t = 100_000 * US  # after observed()'s arrivals
    a.observe_answered(t, 8, 32)
    a.observe_arrival(t + 100 * US)  # learns a round trip of 100 us
    a.observe_answered(t + 1000 * US, 8, 32)
    # 300 us after the answers nobody came back: an open-loop client, or one that stopped.
    now = t + 1300 * US
    assert a.delay_ns(1, 32, executor_idle=True, now_ns=now, oldest_ns=now) == 0
    assert a.owed == 0


def test_a_compute_bound_model_does_not_wait_for_returners():
    a = _profiled(gap_us=300, one_row_us=470, rows=16, batch_us=6900)
    t = (49 * 300 + 200) * US  # the next arrival keeps the 300 us gap
    a.observe_answered(t, 16, 32)
    a.observe_arrival(t + 100 * US)
    assert a.owed == 15
    assert a.delay_ns(16, 32, executor_idle=True, now_ns=t + 100 * US, oldest_ns=t + 100 * US) == 0
