"""The dynamic batcher, stepped by hand with a fake clock (plain ints)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from gateway.core.errors import InvalidInputError, QueueFullError
from gateway.scheduler.batcher import DynamicBatcher
from gateway.scheduler.policy import BatchingPolicy
from gateway.scheduler.queue import QueuedRequest


def req(tag: object, rows: int = 1, key: object = "k", priority: int = 0, deadline: int = 0, hard: int = 0):
    return QueuedRequest(
        rows=rows, shape_key=key, priority=priority, deadline_ns=deadline, hard_deadline_ns=hard, payload=tag
    )


def tags(batch):
    return None if batch is None else [r.payload for r in batch]


def make(max_batch_size: int = 8, **kw) -> DynamicBatcher:
    return DynamicBatcher(BatchingPolicy(max_batch_size=max_batch_size, **kw))


def fill(b: DynamicBatcher, now: int, *items: QueuedRequest) -> None:
    for it in items:
        b.add(it, now)


# --- policy ---------------------------------------------------------------


def test_policy_defaults_and_normalised_preferred_sizes():
    p = BatchingPolicy(max_batch_size=16, preferred_batch_sizes=(8, 4, 8))
    assert p.preferred_batch_sizes == (4, 8)
    assert (p.max_queue_delay_ns, p.max_queue_size, p.priority_levels, p.default_priority) == (0, 1024, 1, 1)
    assert (p.default_timeout_ns, p.timeout_action, p.allow_timeout_override) == (0, "reject", True)


def test_policy_is_frozen_and_slotted():
    p = BatchingPolicy(max_batch_size=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_batch_size = 8  # type: ignore[misc]
    assert not hasattr(p, "__dict__")


@pytest.mark.parametrize(
    ("kwargs", "field", "reason"),
    [
        ({"max_batch_size": -1}, "max_batch_size", ">= 0"),
        ({"max_batch_size": 2.0}, "max_batch_size", "int"),
        ({"max_batch_size": True}, "max_batch_size", "int"),
        ({"preferred_batch_sizes": (0,)}, "preferred_batch_sizes", ">= 1"),
        ({"preferred_batch_sizes": (4, 16)}, "preferred_batch_sizes", "exceed max_batch_size 8"),
        ({"max_batch_size": 0, "preferred_batch_sizes": (1,)}, "preferred_batch_sizes", "max_batch_size is 0"),
        ({"max_queue_delay_ns": -5}, "max_queue_delay_ns", ">= 0"),
        ({"max_queue_size": 0}, "max_queue_size", ">= 1"),
        ({"priority_levels": 0}, "priority_levels", ">= 1"),
        ({"default_priority": 0}, "default_priority", ">= 1"),
        ({"priority_levels": 2, "default_priority": 3}, "default_priority", "exceeds priority_levels 2"),
        ({"default_timeout_ns": -1}, "default_timeout_ns", ">= 0"),
        ({"timeout_action": "drop"}, "timeout_action", "'drop'"),
        ({"allow_timeout_override": 1}, "allow_timeout_override", "bool"),
    ],
)
def test_policy_rejects_with_the_field_named(kwargs, field, reason):
    kwargs = {"max_batch_size": 8, **kwargs}
    with pytest.raises(ValueError) as info:
        BatchingPolicy(**kwargs)
    assert str(info.value).startswith(f"{field}:")
    assert reason in str(info.value)


# --- batch size -------------------------------------------------------------


def test_batches_up_to_max_batch_size_in_fifo_order():
    b = make(4)
    fill(b, 0, *(req(i) for i in range(6)))
    assert tags(b.next_batch(0)) == [0, 1, 2, 3]
    assert tags(b.next_batch(0)) == [4, 5]
    assert b.next_batch(0) is None
    assert len(b) == 0


def test_a_request_is_never_split_and_nothing_jumps_an_overflowing_one():
    b = make(4)
    fill(b, 0, req("a", rows=3), req("b", rows=2), req("c", rows=1))
    # "c" would fit beside "a" but must not overtake "b".
    assert tags(b.next_batch(0)) == ["a"]
    assert tags(b.next_batch(0)) == ["b", "c"]


def test_queued_rows_and_len_follow_adds_and_batches():
    b = make(8)
    fill(b, 0, req("a", rows=3), req("b", rows=2), req("c", rows=4))
    assert (len(b), b.queued_rows) == (3, 9)
    assert tags(b.next_batch(0)) == ["a", "b"]
    assert (len(b), b.queued_rows) == (1, 4)


def test_rows_over_max_batch_size_is_invalid_input():
    b = make(4)
    with pytest.raises(InvalidInputError, match="5 exceeds the model's max_batch_size 4"):
        b.add(req("a", rows=5), 0)
    with pytest.raises(InvalidInputError, match="at least 1 row"):
        b.add(req("z", rows=0), 0)
    assert len(b) == 0
    b.add(req("b", rows=4), 0)
    assert tags(b.next_batch(0)) == ["b"]


def test_add_stamps_enqueue_time_and_resolves_default_priority():
    b = make(4, priority_levels=3, default_priority=2)
    r = req("a")
    b.add(r, 1234)
    assert (r.enqueue_ns, r.priority, r.deadline_ns, r.delayed) == (1234, 2, 0, False)


# --- preferred sizes ---------------------------------------------------------


def test_preferred_size_formed_exactly_is_sent_at_once_and_the_rest_waits():
    b = make(8, preferred_batch_sizes=(2, 4), max_queue_delay_ns=1_000)
    fill(b, 0, req(0), req(1), req(2))
    assert tags(b.next_batch(0)) == [0, 1]
    # One left: no preferred size, held for the delay.
    assert b.next_batch(999) is None
    assert tags(b.next_batch(1_000)) == [2]


def test_largest_exact_preferred_prefix_is_chosen():
    b = make(8, preferred_batch_sizes=(2, 4, 6), max_queue_delay_ns=1_000)
    fill(b, 0, *(req(i) for i in range(5)))
    assert tags(b.next_batch(0)) == [0, 1, 2, 3]


def test_preferred_prefix_counts_rows_not_requests():
    b = make(8, preferred_batch_sizes=(4,), max_queue_delay_ns=1_000)
    fill(b, 0, req("a", rows=1), req("b", rows=3), req("c", rows=2))
    assert tags(b.next_batch(0)) == ["a", "b"]


def test_rows_past_largest_preferred_without_exact_prefix_send_the_whole_prefix():
    b = make(8, preferred_batch_sizes=(4,), max_queue_delay_ns=1_000)
    fill(b, 0, req("a", rows=3), req("b", rows=3))
    # 3 then 6: 4 cannot be formed and waiting cannot help; send 6 now.
    assert tags(b.next_batch(0)) == ["a", "b"]


def test_full_batch_at_max_is_sent_whole_even_when_not_preferred():
    b = make(8, preferred_batch_sizes=(2, 4), max_queue_delay_ns=1_000)
    fill(b, 0, *(req(i, rows=2) for i in range(4)))
    assert tags(b.next_batch(0)) == [0, 1, 2, 3]


def test_blocked_batch_is_cut_to_the_largest_preferred_prefix():
    b = make(8, preferred_batch_sizes=(4,), max_queue_delay_ns=10**9)
    fill(b, 0, req("a", rows=2), req("b", rows=2), req("c", rows=3), req("d", rows=6))
    # Prefix rows 2, 4, 7, then "d" overflows: the batch is full; 4 is preferred.
    assert tags(b.next_batch(0)) == ["a", "b"]
    # "c" alone is partial; "d" does not fit beside it, so it is full too.
    assert tags(b.next_batch(0)) == ["c"]
    assert tags(b.next_batch(0)) == ["d"]


# --- queue delay -------------------------------------------------------------


def test_delay_holds_a_partial_batch_until_the_oldest_waited_long_enough():
    b = make(8, max_queue_delay_ns=1_000)
    b.add(req("a"), 100)
    b.add(req("b"), 400)
    assert b.next_batch(100) is None
    assert b.next_batch(1_099) is None
    assert len(b) == 2
    assert tags(b.next_batch(1_100)) == ["a", "b"]


def test_delay_is_measured_from_the_new_head_after_a_batch_leaves():
    b = make(2, max_queue_delay_ns=1_000)
    b.add(req("a"), 0)
    b.add(req("b"), 0)
    b.add(req("c"), 500)
    assert tags(b.next_batch(0)) == ["a", "b"]
    assert b.next_batch(1_000) is None
    assert b.next_wakeup(1_000) == 1_500
    assert tags(b.next_batch(1_500)) == ["c"]


def test_filling_to_max_releases_a_held_batch_before_the_delay():
    b = make(3, max_queue_delay_ns=1_000)
    b.add(req("a"), 0)
    b.add(req("b"), 10)
    assert b.next_batch(20) is None
    b.add(req("c"), 20)
    assert tags(b.next_batch(20)) == ["a", "b", "c"]


def test_delay_counts_from_the_oldest_request_in_the_batch_not_the_head():
    b = make(8, priority_levels=2, max_queue_delay_ns=1_000)
    b.add(req("old-low", priority=2), 0)
    b.add(req("new-high", priority=1), 500)
    assert b.next_wakeup(500) == 1_000
    assert b.next_batch(999) is None
    assert tags(b.next_batch(1_000)) == ["new-high", "old-low"]


def test_zero_delay_sends_a_partial_batch_at_once():
    b = make(8)
    b.add(req("a"), 5)
    assert tags(b.next_batch(5)) == ["a"]


# --- next_wakeup -------------------------------------------------------------


def test_next_wakeup_values():
    b = make(8, max_queue_delay_ns=1_000)
    assert b.next_wakeup(0) is None
    b.add(req("a"), 100)
    assert b.next_wakeup(100) == 1_100
    # A deadline before the release time wakes earlier.
    b.add(req("b", hard=600), 200)
    assert b.next_wakeup(200) == 600
    # Past due: never earlier than now.
    assert b.next_wakeup(700) == 700
    assert tags(b.expire(700)) == ["b"]
    assert b.next_wakeup(700) == 1_100
    assert tags(b.next_batch(1_100)) == ["a"]
    assert b.next_wakeup(1_100) is None


def test_next_wakeup_is_now_when_a_batch_is_ready():
    b = make(2, max_queue_delay_ns=1_000)
    fill(b, 50, req("a"), req("b"))
    assert b.next_wakeup(60) == 60


def test_next_wakeup_ignores_deadlines_of_dispatched_requests():
    b = make(1, max_queue_delay_ns=1_000)
    b.add(req("a", hard=300), 0)
    b.add(req("b", hard=900), 0)
    assert tags(b.next_batch(0)) == ["a"]
    assert b.next_deadline() == 900
    assert b.next_wakeup(0) == 0  # "b" fills a batch of 1


# --- priorities --------------------------------------------------------------


def test_priorities_served_highest_first_fifo_within_a_level():
    b = make(1, priority_levels=3, default_priority=2)
    fill(b, 0, req("low1", priority=3), req("high1", priority=1), req("mid-default"),
         req("low2", priority=3), req("mid", priority=2), req("high2", priority=1))
    order = []
    while (batch := b.next_batch(0)) is not None:
        order += tags(batch)
    assert order == ["high1", "high2", "mid-default", "mid", "low1", "low2"]


def test_a_batch_is_filled_from_lower_levels_when_higher_ones_leave_room():
    b = make(3, priority_levels=2)
    fill(b, 0, req("low1", priority=2), req("low2", priority=2), req("high", priority=1))
    assert tags(b.next_batch(0)) == ["high", "low1", "low2"]


def test_priority_out_of_range_is_invalid_input():
    b = make(4, priority_levels=3)
    with pytest.raises(InvalidInputError, match="from 1 to 3"):
        b.add(req("a", priority=4), 0)
    with pytest.raises(InvalidInputError, match="priority -1"):
        b.add(req("b", priority=-1), 0)
    assert len(b) == 0


# --- shape keys ----------------------------------------------------------------


def test_shape_keys_never_share_a_batch_and_keep_their_order():
    b = make(8)
    fill(b, 0, req("a1", key="A"), req("b1", key="B"), req("a2", key="A"), req("b2", key="B"), req("a3", key="A"))
    assert tags(b.next_batch(0)) == ["a1", "a2", "a3"]
    b.add(req("a4", key="A"), 0)
    # The B requests were ahead of a4 and are served first, in their order.
    assert tags(b.next_batch(0)) == ["b1", "b2"]
    assert tags(b.next_batch(0)) == ["a4"]


def test_tuple_shape_keys_compare_by_value():
    b = make(8)
    fill(b, 0, req("x", key=(3, 224)), req("y", key=(3, 224)), req("z", key=(3, 128)))
    assert tags(b.next_batch(0)) == ["x", "y"]


def test_overflow_of_the_head_key_does_not_stop_other_keys_from_keeping_place():
    b = make(4)
    fill(b, 0, req("a1", rows=3, key="A"), req("b1", key="B"), req("a2", rows=2, key="A"))
    assert tags(b.next_batch(0)) == ["a1"]
    assert tags(b.next_batch(0)) == ["b1"]
    assert tags(b.next_batch(0)) == ["a2"]


# --- queue size ------------------------------------------------------------------


def test_full_queue_raises_queue_full_and_frees_up_after_a_batch():
    b = make(1, max_queue_size=2)
    fill(b, 0, req("a"), req("b"))
    with pytest.raises(QueueFullError, match="exceeds maximum queue size 2"):
        b.add(req("c"), 0)
    assert len(b) == 2
    assert tags(b.next_batch(0)) == ["a"]
    b.add(req("c"), 0)
    assert len(b) == 2


# --- deadlines: reject --------------------------------------------------------------


def test_expire_rejects_items_past_the_default_timeout():
    b = make(8, default_timeout_ns=100, max_queue_delay_ns=10_000)
    b.add(req("a"), 0)
    b.add(req("b"), 50)
    assert b.expire(99) == []
    assert tags(b.expire(100)) == ["a"]
    assert (len(b), b.queued_rows) == (1, 1)
    assert tags(b.expire(150)) == ["b"]
    assert b.next_batch(20_000) is None
    assert b.next_wakeup(20_000) is None


def test_expired_items_leave_from_the_middle_and_the_rest_keep_order():
    b = make(8, max_queue_delay_ns=10_000)
    fill(b, 0, req("a"), req("b", deadline=10), req("c"), req("d", hard=10), req("e"))
    assert sorted(tags(b.expire(10))) == ["b", "d"]
    assert tags(b.next_batch(10_000)) == ["a", "c", "e"]


def test_request_timeout_may_only_shorten_the_default():
    b = make(8, default_timeout_ns=1_000)
    shorter, longer = req("s", deadline=150), req("l", deadline=5_000)
    fill(b, 100, shorter, longer)
    assert (shorter.deadline_ns, longer.deadline_ns) == (150, 1_100)


def test_request_timeout_applies_when_there_is_no_default():
    b = make(8)
    r = req("a", deadline=300)
    b.add(r, 100)
    assert r.deadline_ns == 300
    assert tags(b.expire(300)) == ["a"]


def test_request_timeout_ignored_without_override():
    b = make(8, default_timeout_ns=1_000, allow_timeout_override=False)
    r = req("a", deadline=150, hard=2_000)
    b.add(r, 100)
    assert (r.deadline_ns, r.hard_deadline_ns) == (1_100, 2_000)
    assert b.expire(150) == []


def test_hard_deadline_rejects_under_reject_action():
    b = make(8, max_queue_delay_ns=10_000)
    b.add(req("a", hard=500), 0)
    assert b.expire(499) == []
    assert tags(b.expire(500)) == ["a"]


def test_a_request_past_both_deadlines_is_returned_once():
    b = make(8, timeout_action="delay", default_timeout_ns=100)
    b.add(req("a", hard=150), 0)
    assert tags(b.expire(1_000)) == ["a"]
    assert len(b) == 0
    assert b.expire(2_000) == []


# --- deadlines: delay ------------------------------------------------------------------


def test_delay_action_moves_timed_out_items_behind_the_others():
    b = make(1, timeout_action="delay", default_timeout_ns=100)
    a = req("a")
    b.add(a, 0)
    b.add(req("b"), 50)
    b.add(req("c"), 120)
    assert b.expire(100) == []
    assert a.delayed is True
    assert len(b) == 3
    assert [tags(b.next_batch(120)) for _ in range(3)] == [["b"], ["c"], ["a"]]


def test_delayed_items_come_after_normal_items_of_every_level():
    b = make(1, priority_levels=2, timeout_action="delay", default_timeout_ns=100)
    b.add(req("high", priority=1), 0)
    assert b.expire(100) == []
    b.add(req("low", priority=2), 100)
    assert tags(b.next_batch(100)) == ["low"]
    assert tags(b.next_batch(100)) == ["high"]


def test_delayed_items_are_served_when_nothing_else_waits():
    b = make(4, timeout_action="delay", default_timeout_ns=100, max_queue_delay_ns=50)
    b.add(req("a"), 0)
    assert b.expire(100) == []
    assert tags(b.next_batch(100)) == ["a"]


def test_delay_action_still_rejects_a_passed_hard_deadline():
    b = make(1, timeout_action="delay", default_timeout_ns=100)
    a, c = req("a", hard=300), req("c", hard=80)
    fill(b, 0, a, req("b"), c)
    # c's own deadline comes first: rejected, not delayed.
    assert tags(b.expire(80)) == ["c"]
    assert b.expire(100) == []
    assert a.delayed
    # Delayed, then its client deadline passes: rejected.
    assert tags(b.expire(300)) == ["a"]
    assert tags(b.next_batch(300)) == ["b"]
    assert b.next_batch(300) is None


# --- max_batch_size 0 -------------------------------------------------------------------


def test_no_batching_model_gets_single_item_batches():
    b = make(0, max_queue_delay_ns=1_000)
    fill(b, 0, req("a"), req("b", key="other"), req("c"))
    assert [tags(b.next_batch(0)) for _ in range(3)] == [["a"], ["b"], ["c"]]
    assert b.next_batch(0) is None


def test_no_batching_model_accepts_any_row_count_and_ready_wakeup_is_now():
    b = make(0)
    b.add(req("a", rows=1), 10)
    assert b.next_wakeup(20) == 20


# --- remove and drain -----------------------------------------------------------------


def test_drain_all_returns_everything_in_service_order_and_empties():
    b = make(4, priority_levels=2, default_timeout_ns=100, max_queue_delay_ns=1_000)
    fill(b, 0, req("low", priority=2), req("high", priority=1), req("x", key="X"))
    assert tags(b.drain_all()) == ["high", "x", "low"]
    assert (len(b), b.queued_rows) == (0, 0)
    assert b.next_wakeup(0) is None
    assert b.expire(10_000) == []
    assert b.next_batch(10_000) is None


def test_remove_takes_one_request_out():
    b = make(8, max_queue_delay_ns=1_000)
    a, c = req("a", hard=500), req("c")
    fill(b, 0, a, req("b"), c)
    assert b.remove(a) is True
    assert b.remove(a) is False
    assert b.expire(500) == []
    assert tags(b.next_batch(1_000)) == ["b", "c"]
    assert b.remove(c) is False


def test_a_dispatched_request_can_be_queued_again():
    b = make(1, default_timeout_ns=100)
    a = req("a")
    b.add(a, 0)
    assert b.next_batch(0) == [a]
    # add() rewrote deadline_ns to the effective timeout; a retry starts afresh.
    a.deadline_ns = 0
    b.add(a, 500)
    # The old timeout (100) must not reject the new stay (deadline 600).
    assert b.expire(550) == []
    assert tags(b.expire(600)) == ["a"]


def test_many_dispatched_requests_with_deadlines_do_not_leak_or_lose_deadlines():
    b = make(1, priority_levels=2, default_timeout_ns=10**9)
    # Low priority: waits through every dispatch, so compaction must keep its deadlines.
    b.add(req("kept", priority=2, hard=10**6), 0)
    b.add(req("kept2", priority=2), 0)
    for i in range(1_000):
        b.add(req(i, priority=1), i)
        assert tags(b.next_batch(i)) == [i]
    assert len(b._queue._heap) < 200  # stale entries were compacted away
    b.add(req("last", priority=1), 5_000)
    assert b.next_deadline() == 10**6
    assert tags(b.expire(10**6)) == ["kept"]
    assert b.next_deadline() == 10**9
    assert tags(b.expire(10**9)) == ["kept2"]
    assert tags(b.expire(5_000 + 10**9)) == ["last"]


# --- randomised invariants --------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_random_schedules_keep_every_request_exactly_once_and_batches_sound(seed):
    rng = random.Random(seed)
    policy = BatchingPolicy(
        max_batch_size=rng.choice([1, 4, 8]),
        max_queue_delay_ns=rng.choice([0, 50, 200]),
        max_queue_size=rng.choice([5, 50]),
        priority_levels=3,
        default_priority=2,
        default_timeout_ns=rng.choice([0, 300]),
        timeout_action=rng.choice(["reject", "delay"]),
    )
    mbs = policy.max_batch_size
    policy = dataclasses.replace(policy, preferred_batch_sizes=tuple(s for s in (2, 4) if s <= mbs))
    b = DynamicBatcher(policy)
    now = 0
    added: list[QueuedRequest] = []
    outcomes: dict[int, str] = {}
    for step in range(400):
        now += rng.randrange(0, 40)
        op = rng.random()
        if op < 0.55:
            r = req(step, rows=rng.randint(1, mbs), key=rng.choice("AB"), priority=rng.randint(0, 3),
                    hard=rng.choice([0, 0, now + rng.randrange(1, 500)]))
            try:
                b.add(r, now)
            except QueueFullError:
                assert len(b) == policy.max_queue_size
                continue
            added.append(r)
        elif op < 0.75:
            for r in b.expire(now):
                assert r.hard_deadline_ns and r.hard_deadline_ns <= now or (
                    policy.timeout_action == "reject" and r.deadline_ns and r.deadline_ns <= now)
                assert outcomes.setdefault(id(r), "expired") == "expired"
        else:
            wake = b.next_wakeup(now)
            batch = b.next_batch(now)
            if batch is not None:
                assert wake == now
                assert len({r.shape_key for r in batch}) == 1
                assert sum(r.rows for r in batch) <= mbs
                # Service order inside a batch: normal before delayed, then level, then FIFO.
                order = [(r.delayed, r.priority, r.seq) for r in batch]
                assert order == sorted(order)
                for r in batch:
                    assert id(r) not in outcomes
                    outcomes[id(r)] = "batched"
            elif len(b):
                assert wake is not None
                assert wake > now or b.next_deadline() <= now
        assert len(b) + len(outcomes) == len(added)
        assert b.queued_rows == sum(r.rows for r in added if id(r) not in outcomes)
    for r in b.drain_all():
        assert id(r) not in outcomes
        outcomes[id(r)] = "drained"
    assert len(outcomes) == len(added)
