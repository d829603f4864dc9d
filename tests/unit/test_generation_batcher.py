"""The continuous batcher, stepped by hand with a fake clock: no threads, no event loop."""

from __future__ import annotations

import pytest

from gateway.core.errors import QueueFullError
from gateway.scheduler.generation.batcher import ContinuousBatcher, Ticket


def test_sequences_join_at_the_next_step_and_leave_after_finishing():
    b = ContinuousBatcher(max_sequences=4, max_waiting=8, max_kv_tokens=1000)
    b.admit([Ticket(1, 10)])
    plan = b.next_step(0)
    assert (plan.leaving, plan.decoding, plan.joining) == ([], [], [1])
    b.complete([])
    b.admit([Ticket(2, 10)])
    plan = b.next_step(1)
    assert (plan.decoding, plan.joining) == ([1], [2])  # 2 joins while 1 keeps decoding
    b.complete([1])
    plan = b.next_step(2)
    assert (plan.leaving, plan.decoding, plan.joining) == ([1], [2], [])
    b.complete([2])
    plan = b.next_step(3)
    assert plan.leaving == [2] and not plan.decoding
    b.complete([])
    assert not b.next_step(4) and b.idle


def test_max_sequences_bounds_the_decode_batch_and_the_rest_wait_in_order():
    b = ContinuousBatcher(max_sequences=2, max_waiting=8, max_kv_tokens=1000)
    b.admit([Ticket(i, 10) for i in (1, 2, 3)])
    plan = b.next_step(0)
    assert plan.joining == [1, 2] and b.waiting == 1 and b.active == 2
    b.complete([1])
    plan = b.next_step(1)
    assert plan.leaving == [1] and plan.decoding == [2] and plan.joining == [3]


def test_padded_kv_budget_holds_back_a_sequence_until_others_leave():
    # rows x longest reservation must stay within max_kv_tokens: 2 x 60 > 100.
    b = ContinuousBatcher(max_sequences=8, max_waiting=8, max_kv_tokens=100)
    b.admit([Ticket(1, 60), Ticket(2, 30)])
    plan = b.next_step(0)
    assert plan.joining == [1]  # 2 x 60 = 120 > 100: the second waits (in order, no overtaking)
    b.complete([1])
    plan = b.next_step(1)
    assert plan.leaving == [1] and plan.joining == [2]


def test_admission_beyond_free_rows_and_waiting_room_is_refused_whole():
    b = ContinuousBatcher(max_sequences=2, max_waiting=1, max_kv_tokens=1000)
    b.admit([Ticket(1, 5), Ticket(2, 5)])
    b.admit([Ticket(3, 5)])
    with pytest.raises(QueueFullError, match="max_sequences 2"):
        b.admit([Ticket(4, 5)])
    with pytest.raises(QueueFullError):
        b.admit([Ticket(5, 5), Ticket(6, 5)])
    assert b.waiting == 3  # nothing of a refused request was admitted


def test_cancel_frees_a_running_sequence_at_the_next_step_and_a_waiting_one_at_once():
    b = ContinuousBatcher(max_sequences=1, max_waiting=4, max_kv_tokens=1000)
    b.admit([Ticket(1, 5), Ticket(2, 5), Ticket(3, 5)])
    plan = b.next_step(0)
    b.complete([])
    assert b.cancel(3) is True and b.waiting == 1  # never joined
    assert b.cancel(1) is False and b.active == 1  # still in the batch until the next step
    plan = b.next_step(1)
    assert plan.leaving == [1] and plan.decoding == [] and plan.joining == [2]


def test_expire_drops_waiting_sequences_past_their_deadline():
    b = ContinuousBatcher(max_sequences=1, max_waiting=4, max_kv_tokens=1000)
    b.admit([Ticket(1, 5, 0, 0), Ticket(2, 5, 0, 100), Ticket(3, 5, 0, 500)])
    b.next_step(0)
    b.complete([])
    assert b.expire(99) == []
    assert b.expire(100) == [2]
    assert b.waiting == 1
    b.next_step(200)
    b.complete([1])
    assert b.next_step(300).joining == [3]


def test_a_finished_sequence_that_was_also_cancelled_leaves_once():
    b = ContinuousBatcher(max_sequences=2, max_waiting=0, max_kv_tokens=1000)
    b.admit([Ticket(1, 5)])
    b.next_step(0)
    b.cancel(1)
    b.complete([1])
    assert b.next_step(1).leaving == [1]
    assert b.idle
