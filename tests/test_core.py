"""The core's three parts, against both implementations (tests/test_core_differential.py runs the two side by
side), and the selector that picks one."""

import asyncio
import os
import random
import subprocess
import sys

import pytest
from confluent_kafka import Message
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import IMPLS


def msg(offset, partition=0, key=None, topic="t"):
    return Message(topic=topic, partition=partition, offset=offset, key=key, value=b"")


# -- ring buffer


def test_ring_buffer_is_fifo_and_refuses_when_full(impl):
    ring = impl.RingBuffer(3)
    assert [ring.push(i) for i in range(4)] == [True, True, True, False]
    assert ring.full() and len(ring) == 3
    assert ring.pop() == 0
    assert ring.extend([10, 11, 12], 0) == 1  # only one slot left
    assert ring.drain() == [1, 2, 10]
    assert ring.pop() is None and len(ring) == 0


def test_ring_buffer_wraps_around(impl):
    ring = impl.RingBuffer(4)
    out = []
    for i in range(100):
        assert ring.push(i)
        if len(ring) == 3:
            out.append(ring.pop())
            out.append(ring.pop())
    out.extend(ring.drain())
    assert out == list(range(100))


def test_ring_buffer_rejects_none_and_bad_capacity(impl):
    with pytest.raises(ValueError, match="capacity"):
        impl.RingBuffer(0)
    ring = impl.RingBuffer(2)
    with pytest.raises(TypeError):
        ring.push(None)
    with pytest.raises(TypeError):
        ring.extend([1, None])
    assert len(ring) == 0


# -- offset tracker

offsets_and_acks = st.lists(st.integers(1, 5), min_size=1, max_size=200).flatmap(
    # strictly increasing offsets with gaps (as compaction leaves them), and a random order of acks
    lambda gaps: st.tuples(
        st.just([sum(gaps[: i + 1]) for i in range(len(gaps))]),
        st.permutations(list(range(len(gaps)))),
    )
)


@given(data=offsets_and_acks)
@settings(max_examples=300, deadline=None)
def test_committable_never_passes_an_unacked_offset(data):
    offsets, order = data
    for impl in IMPLS.values():
        tracker = impl.OffsetTracker()
        for offset in offsets:
            tracker.track("t", 0, offset)
        committed = offsets[0]
        acked = set()
        for i in order:
            assert tracker.ack("t", 0, offsets[i])
            acked.add(offsets[i])
            for _, _, offset in tracker.committable():
                assert offset > committed  # reported only when it moved, and only forwards
                committed = offset
            unacked = [o for o in offsets if o not in acked]
            assert committed <= (unacked[0] if unacked else offsets[-1] + 1)
            assert tracker.pending("t", 0) == len(unacked)
        assert committed == offsets[-1] + 1
        assert tracker.committable() == []
        assert len(tracker) == 0


def test_ack_of_unknown_offsets_is_refused(impl):
    tracker = impl.OffsetTracker()
    assert not tracker.ack("t", 0, 5)  # partition never tracked
    tracker.track("t", 0, 10)
    tracker.track("t", 0, 12)
    assert not tracker.ack("t", 0, 11)  # a gap, not a message
    assert not tracker.ack("t", 0, 9)
    assert not tracker.ack("t", 0, 13)
    assert tracker.ack("t", 0, 12) and tracker.ack("t", 0, 12)  # acking twice is harmless
    assert tracker.committable() == []  # 10 is still running
    assert tracker.ack("t", 0, 10)
    assert tracker.committable() == [("t", 0, 13)]


def test_an_offset_that_goes_backwards_restarts_its_partition(impl):
    """An offset at or below the last tracked one (an offset reset, a re-created topic) discards the
    partition's window, acked and unacked entries alike, and starts a new one there: reported, not refused."""
    tracker = impl.OffsetTracker()
    for o in range(5, 10):
        assert tracker.track("t", 0, o) is None
    tracker.track("t", 1, 100)
    assert tracker.ack("t", 0, 5) and tracker.ack("t", 0, 6) and tracker.ack("t", 0, 9)
    assert tracker.committable() == [("t", 0, 7)]
    assert tracker.window() == 3 + 1
    assert tracker.track("t", 0, 3) == ("t", 0, 9, 3)
    assert tracker.partitions() == [("t", 1), ("t", 0)]  # as drop() then track()
    assert tracker.positions() == [("t", 1, 100), ("t", 0, 3)]
    assert tracker.frontiers() == []  # 9 was acked in the old window: gone with it
    assert tracker.pending("t", 0) == 1 and tracker.window_size("t", 0) == 1
    assert len(tracker) == 2 and tracker.window() == 2
    assert tracker.committable() == [("t", 0, 3)]  # lower than 7: the new window's safe offset
    assert tracker.committable() == []
    assert not tracker.ack("t", 0, 8)  # the old window's offsets are not tracked any more
    assert tracker.track("t", 0, 4) is None
    assert tracker.ack("t", 0, 3)
    assert tracker.committable() == [("t", 0, 4)]
    assert tracker.track("t", 0, 4) == ("t", 0, 4, 4)  # the same offset again restarts too
    assert tracker.committable() == []  # ... at the offset reported last: nothing to commit
    assert tracker.positions() == [("t", 1, 100), ("t", 0, 4)]
    with pytest.raises(ValueError, match="out of range"):
        tracker.track("t", 0, -1)
    with pytest.raises(ValueError, match="out of range"):
        tracker.track("t", 0, 2**63 - 1)


def test_track_messages_returns_the_restarts_of_the_batch(impl):
    tracker = impl.OffsetTracker()
    assert tracker.track_messages([msg(o) for o in range(10)]) == []
    assert tracker.track_messages([msg(3, partition=1), msg(4, partition=1)]) == []
    batch = [msg(10), msg(2), msg(3), msg(0, partition=1), msg(1, partition=1), msg(1)]
    assert tracker.track_messages(batch) == [("t", 0, 10, 2), ("t", 1, 4, 0), ("t", 0, 3, 1)]
    assert tracker.positions() == [("t", 1, 0), ("t", 0, 1)]
    assert tracker.window_size("t", 0) == 1 and tracker.window_size("t", 1) == 2
    assert tracker.window() == 3
    assert tracker.committable() == [("t", 1, 0), ("t", 0, 1)]  # both restarted below their first offsets
    assert tracker.track_messages(m for m in [msg(2), msg(5)]) == []


def test_a_restart_reports_a_partition_never_committed(impl):
    """Restarted below an offset never reported: the new safe offset is reported at once (the group may hold
    any offset at or above it); restarted at the offset last reported, nothing is."""
    tracker = impl.OffsetTracker()
    tracker.track("t", 0, 50)
    tracker.track("t", 0, 51)
    assert tracker.track("t", 0, 50) == ("t", 0, 51, 50)
    assert tracker.committable() == []  # 50: where the partition stood, nothing moved
    assert tracker.track("t", 0, 20) == ("t", 0, 50, 20)
    assert tracker.committable() == [("t", 0, 20)]


def test_window_counts_every_entry_held_across_partitions(impl):
    tracker = impl.OffsetTracker()
    assert tracker.window() == 0
    rng = random.Random(7)
    tracked = {}
    for _ in range(3000):
        p = rng.randrange(4)
        op = rng.random()
        if op < 0.5:
            offset = tracked.get(p, rng.randrange(50)) + rng.randrange(1, 4)
            if rng.random() < 0.02:
                offset = rng.randrange(offset)  # backwards: a restart
            tracker.track("t", p, offset)
            tracked[p] = offset
        elif op < 0.95 and p in tracked:
            tracker.ack("t", p, rng.randrange(tracked[p] - 30, tracked[p] + 1))
        elif op < 0.97:
            tracker.drop("t", p)
            tracked.pop(p, None)
        assert tracker.window() == sum(tracker.window_size("t", q) for q in range(4))
    assert tracker.window() > 0


def test_window_counts_acked_entries_above_the_head(impl):
    tracker = impl.OffsetTracker()
    tracker.track_messages([msg(o, partition=p) for p in range(2) for o in range(10)])
    assert tracker.window() == 20
    for o in range(1, 10):
        tracker.ack("t", 0, o)  # offset 0 still unacked: all ten held
    assert tracker.window() == 20 and len(tracker) == 11
    assert not tracker.ack("t", 0, 42)
    assert tracker.window() == 20
    tracker.ack("t", 0, 0)  # the head moves past all ten
    assert tracker.window() == 10
    tracker.drop("t", 1)
    tracker.drop("t", 5)
    assert tracker.window() == 0
    tracker.track("t", 0, 3)  # below the last (9), with nothing held: a restart of an empty window
    assert tracker.window() == 1


def test_partitions_are_independent_and_reported_only_when_moved(impl):
    tracker = impl.OffsetTracker()
    for p in range(3):
        for o in range(100, 110):
            tracker.track("t", p, o)
    tracker.ack("t", 1, 100)
    assert tracker.committable() == [("t", 1, 101)]
    assert tracker.committable() == []
    tracker.ack("t", 2, 105)  # out of order: nothing moves
    assert tracker.committable() == []
    assert tracker.frontiers() == [("t", 2, 106)]
    assert sorted(tracker.positions()) == [("t", 0, 100), ("t", 1, 101), ("t", 2, 100)]
    tracker.drop("t", 1)
    assert not tracker.ack("t", 1, 101)
    assert tracker.partitions() == [("t", 0), ("t", 2)]


def test_memory_follows_the_in_flight_window_not_the_offsets(impl):
    tracker = impl.OffsetTracker()
    window = 50
    for o in range(200_000):
        tracker.track("t", 0, o)
        if o >= window:
            tracker.ack("t", 0, o - window)
        assert tracker.window_size("t", 0) <= window + 1
    assert tracker.positions() == [("t", 0, 200_000 - window)]


# -- scheduler


def simulate(impl, ordering, messages, seed, capacity=10_000, batch=None):
    """Hand out messages in a random completion order; return the order they were started in and check
    that the ordering's rule held throughout."""
    rng = random.Random(seed)
    scheduler = impl.Scheduler(ordering, capacity)
    assert scheduler.extend(messages) == len(messages)
    running, started = [], []
    while len(started) < len(messages):
        got = scheduler.pop_batch(batch) if batch else [m for m in [scheduler.pop()] if m is not None]
        if got:
            lanes = [lane(ordering, m) for m in got]
            running_lanes = {lane(ordering, m) for group in running for m in group}
            if ordering != "unordered":
                assert not running_lanes & set(lanes), "a lane ran twice at once"
            started.extend(got)
            running.append(got)
        if running and (not got or rng.random() < 0.5):
            done = running.pop(rng.randrange(len(running)))
            scheduler.done_batch(done) if batch else scheduler.done(done[0])
    assert len(scheduler) == 0
    return started


def lane(ordering, m):
    if ordering == "key":
        return (m.topic(), m.partition(), m.key())
    if ordering == "partition":
        return (m.topic(), m.partition())
    return id(m)


def random_messages(rng, n=300, partitions=3, keys=5):
    offsets = [0] * partitions
    out = []
    for _ in range(n):
        p = rng.randrange(partitions)
        k = rng.randrange(keys + 1)
        out.append(msg(offsets[p], p, None if k == keys else b"k%d" % k))
        offsets[p] += 1
    return out


@pytest.mark.parametrize("ordering", ["key", "partition", "unordered"])
@pytest.mark.parametrize("batch", [None, 7])
def test_scheduler_keeps_each_lane_in_offset_order(impl, ordering, batch):
    for seed in range(20):
        messages = random_messages(random.Random(seed))
        started = simulate(impl, ordering, messages, seed, batch=batch)
        assert sorted(started, key=id) == sorted(messages, key=id)  # each exactly once
        if ordering != "unordered":
            per_lane = {}
            for m in started:
                per_lane.setdefault(lane(ordering, m), []).append(m.offset())
            assert all(offs == sorted(offs) for offs in per_lane.values())


def test_key_ordering_runs_different_keys_at_once(impl):
    scheduler = impl.Scheduler("key", 100)
    scheduler.extend([msg(0, key=b"a"), msg(1, key=b"a"), msg(2, key=b"b"), msg(3), msg(4)])
    first = [scheduler.pop() for _ in range(4)]
    assert [m.offset() if m is not None else None for m in first] == [0, 2, 3, None]  # 1 waits for 0, 4 for 3
    scheduler.done(first[2])  # null keys order like their partition
    assert scheduler.pop().offset() == 4


def test_scheduler_capacity_and_drop(impl):
    scheduler = impl.Scheduler("partition", 4)
    assert scheduler.extend([msg(o, 0) for o in range(3)] + [msg(0, 1), msg(1, 1)]) == 4
    assert not scheduler.push(msg(9, 2))
    running = scheduler.pop()
    assert running.partition() == 0
    assert scheduler.drop("t", 0) == 2  # the two waiting behind the running one
    assert scheduler.drop("t", 1) == 1  # the runnable one: its lane is freed
    assert len(scheduler) == 0
    scheduler.push(msg(5, 1))
    assert scheduler.pop().offset() == 5
    scheduler.done(running)
    assert scheduler.pop() is None


def test_bad_ordering_is_refused(impl):
    with pytest.raises(ValueError, match="ordering must be one of key, partition, unordered"):
        impl.Scheduler("fifo", 10)
    for ordering in (b"key", None, 0):  # not a str: the same ValueError, not the compiled core's TypeError
        with pytest.raises(ValueError, match="ordering must be one of key, partition, unordered"):
            impl.Scheduler(ordering, 10)


def test_arguments_are_checked_alike(impl):
    """What the compiled core's C types refuse, the twin refuses with the same exception."""
    scheduler = impl.Scheduler("key", 10)
    with pytest.raises(TypeError, match="expected list, got tuple"):
        scheduler.extend((msg(0),))
    with pytest.raises(TypeError, match="expected list, got NoneType"):
        scheduler.done_batch(None)
    with pytest.raises(ValueError, match="start must be >= 0"):
        scheduler.extend([msg(0)], -1)
    with pytest.raises(TypeError, match="expected list, got tuple"):
        impl.RingBuffer(2).extend((1,))
    with pytest.raises(TypeError):
        impl.RingBuffer("2")
    with pytest.raises(TypeError, match="incorrect type"):
        impl.drive(None, None, 1)
    tracker = impl.OffsetTracker()
    with pytest.raises(TypeError, match="an integer is required"):
        tracker.track("t", "0", 5)
    with pytest.raises(OverflowError):
        tracker.ack("t", 0, 2**63)
    with pytest.raises(ValueError, match="out of range"):
        tracker.track("t", 0, -1)
    tracker.track("t", True, 2.0)  # as C converts them: bool is an int, a float goes through __int__
    assert tracker.positions() == [("t", 1, 2)]


def test_the_selector_and_its_switch():
    from fastconsumer import core

    assert core.IMPLS["python"] is IMPLS["python"] and core.IMPLS.keys() == IMPLS.keys()
    assert core.core_impl() == ("cython" if "cython" in IMPLS else "python")
    code = "from fastconsumer import core; print(core.core_impl(), *sorted(core.IMPLS))"
    env = {**os.environ, "FASTCONSUMER_NO_EXTENSIONS": "1"}
    root = os.path.dirname(
        os.path.dirname(os.path.abspath(__file__))
    )  # the checkout's package, not an installed one
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["python", "python"]


# -- the scheduler with its tracker, and drive()


@pytest.mark.parametrize("ordering", ["key", "partition", "unordered"])
def test_done_acks_in_the_scheduler_s_tracker(impl, ordering):
    tracker = impl.OffsetTracker()
    scheduler = impl.Scheduler(ordering, 100, tracker)
    messages = [msg(o, key=b"k%d" % (o % 3)) for o in range(10)]
    tracker.track_messages(messages)
    scheduler.extend(messages)
    first = scheduler.pop()
    batch = scheduler.pop_batch(20)
    scheduler.done_batch(batch)
    assert tracker.committable() == []  # offset 0 still running
    scheduler.done(first)
    acked = {m.offset() for m in [first, *batch]}
    assert tracker.committable() == [("t", 0, min(set(range(11)) - acked))]
    assert tracker.pending("t", 0) == 10 - len(acked)


def test_drive_finishes_handlers_that_do_not_suspend_and_hands_back_the_rest(impl):
    tracker = impl.OffsetTracker()
    scheduler = impl.Scheduler("unordered", 100, tracker)
    messages = [msg(o) for o in range(6)]
    tracker.track_messages(messages)
    scheduler.extend(messages)
    seen = []

    async def handler(m):
        seen.append(m.offset())
        if m.offset() == 2:
            await asyncio.sleep(0)
            return "resumed"
        if m.offset() == 4:
            raise KeyError("four")

    async def main():
        finished, pending = impl.drive(scheduler, handler, 100)
        assert finished == 2 and pending[0].offset() == 2  # 0 and 1 done in place, 2 suspended
        assert tracker.committable() == [("t", 0, 2)]
        m, coro, first = pending
        assert await impl.Resume(coro, first) == "resumed"
        finished, pending = impl.drive(scheduler, handler, 100)
        assert finished == 1 and pending[0].offset() == 4 and pending[1] is None
        assert isinstance(pending[2], KeyError)
        finished, pending = impl.drive(scheduler, handler, 1)  # the budget bounds one call
        assert (finished, pending) == (1, None)
        assert impl.drive(scheduler, handler, 100) == (0, None)

    asyncio.run(main())
    assert seen == list(range(6))


@pytest.mark.parametrize("kind", ["step", "call"])
@pytest.mark.parametrize(
    "error", [asyncio.CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit, StopIteration, KeyError]
)
def test_drive_hands_back_any_exception_the_handler_raises(impl, kind, error):
    """Whatever the handler raises before it first suspends, a BaseException included (a cancellation it did
    not ask for, an exit), comes back with its message: neither done nor lost."""
    tracker = impl.OffsetTracker()
    scheduler = impl.Scheduler("partition", 10, tracker)
    messages = [msg(0), msg(1), msg(2), msg(0, partition=1)]
    tracker.track_messages(messages)
    scheduler.extend(messages)

    async def coroutine(m):
        if m.offset() == 1:
            raise error("boom")

    def call(m):
        if m.offset() == 1:
            raise error("boom")
        return coroutine(m)

    handler = coroutine if kind == "step" else call
    if kind == "step" and error is StopIteration:  # a coroutine turns it into a RuntimeError
        error = RuntimeError
    try:
        finished, pending = impl.drive(scheduler, handler, 10)
    except BaseException as exc:  # not pytest's business: an escaped KeyboardInterrupt would end the session
        pytest.fail(f"drive() let {exc!r} escape")
    assert finished == 2  # t[0]@0 and t[1]@0; t[0]@1 raised
    m, coro, exc = pending
    assert m is messages[1] and coro is None and type(exc) is error
    assert tracker.pending("t", 0) == 2  # not acked
    assert scheduler.pop() is None  # t[0]@2 waits: the raising message still holds the lane
    scheduler.done(m)
    assert impl.drive(scheduler, handler, 10) == (1, None)


def test_release_frees_the_lane_without_acking(impl):
    tracker = impl.OffsetTracker()
    scheduler = impl.Scheduler("key", 10, tracker)
    messages = [msg(0, key=b"a"), msg(1, key=b"a"), msg(2, key=b"b")]
    tracker.track_messages(messages)
    scheduler.extend(messages)
    first = scheduler.pop()
    assert first is messages[0] and scheduler.pop() is messages[2] and scheduler.pop() is None
    assert scheduler.release(first) is None
    assert scheduler.pop() is messages[1]  # the next one in the lane runs, as after done()
    assert tracker.pending("t", 0) == 3 and tracker.committable() == []  # but nothing was acked
    assert tracker.positions() == [("t", 0, 0)]
    scheduler.done(messages[1])
    scheduler.release(messages[2])
    assert tracker.committable() == [] and tracker.pending("t", 0) == 2
    assert len(scheduler) == 0 and scheduler.pop() is None


@pytest.mark.parametrize("ordering", ["key", "partition", "unordered"])
def test_release_checks_its_argument_as_done_does(impl, ordering):
    for tracker in (None, impl.OffsetTracker()):
        scheduler = impl.Scheduler(ordering, 10, tracker)
        for bad in (None, 5):
            with pytest.raises(AttributeError):
                scheduler.done(bad)
            with pytest.raises(AttributeError):
                scheduler.release(bad)
        blank = Message("t")  # partition and offset None, as on an error event
        if tracker is None:
            scheduler.done(blank)
            scheduler.release(blank)
        else:
            with pytest.raises(TypeError):
                scheduler.done(blank)
            with pytest.raises(TypeError):
                scheduler.release(blank)
            unknown = msg(3, partition=2)  # never tracked: neither complains
            scheduler.done(unknown)
            scheduler.release(unknown)


def test_resume_passes_cancellation_to_the_handler(impl):
    cancelled = []

    async def handler(m):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(m.offset())
            raise

    async def main():
        scheduler = impl.Scheduler("unordered", 10)
        scheduler.push(msg(7))
        _, (m, coro, first) = impl.drive(scheduler, handler, 10)
        task = asyncio.ensure_future(_wait(coro, first))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def _wait(coro, first):
        await impl.Resume(coro, first)

    asyncio.run(main())
    assert cancelled == [7]
