"""The compiled core and its pure-Python twin, side by side.

Hypothesis draws sequences of operations, bad input included (None and non-message items, wrong argument
types, unknown orderings, offsets that go backwards, acks of untracked offsets, drops of unknown partitions,
zero and negative capacities and budgets, handlers that return, raise, suspend or are not coroutines at all),
and applies each one to the Cython and to the pure-Python object (a handler's BaseException included: drive()
hands it back). After every step the two must have returned
the same thing, or raised the same exception type with the same message, and must show the same state.
"""

import asyncio
import inspect
import re
import types

import pytest
from confluent_kafka import KafkaError, Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import IMPLS

pytestmark = pytest.mark.skipif(
    len(IMPLS) < 2, reason="FASTCONSUMER_NO_EXTENSIONS=1: only the pure-Python core"
)

SIDES = ("cython", "python")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def cores():
    return [IMPLS[side] for side in SIDES]


# -- comparing what the two sides did

_MODULES = re.compile(r"fastconsumer\._core_(c|py)\.")


class Run:
    """One sequence of operations applied to both cores. Messages are shared: both sides get the same objects,
    so what they hand back is compared by identity."""

    def __init__(self):
        self.objects = {}  # id -> (index, object): the messages and items handed to both sides

    def share(self, obj):
        self.objects.setdefault(id(obj), (len(self.objects), obj))
        return obj

    def norm(self, value):
        known = self.objects.get(id(value))
        if known is not None and known[1] is value:
            return ("item", known[0])
        if isinstance(value, tuple | list):
            return (type(value).__name__, [self.norm(v) for v in value])
        if isinstance(value, BaseException):
            return ("exception", type(value), _MODULES.sub("", str(value)))
        if isinstance(value, types.CoroutineType | types.GeneratorType):
            return ("coroutine",)
        if value is None or isinstance(value, int | str | bytes | float):
            return (type(value), value)
        return ("object", type(value).__name__)

    def both(self, step, what):
        """``step(side)`` on both sides: the same result or the same exception; returns both results."""
        outcomes, results = [], []
        for side in range(2):
            try:
                result = step(side)
            except BaseException as exc:  # a KeyboardInterrupt from a handler is an outcome to compare too
                outcomes.append(("raised", self.norm(exc)))
                results.append(exc)
            else:
                outcomes.append(("returned", self.norm(result)))
                results.append(result)
        assert outcomes[0] == outcomes[1], f"{what}: cython {outcomes[0]} != python {outcomes[1]}"
        return results


def outcome_of(run, step, what):
    return run.both(step, what)[0]


# -- messages and bad values

TOPICS = ["t", "u"]
KEYS = [None, b"a", b"b", "s", 7]
BAD_INTS = [-1, "1", None, 1.5, 2**63, -(2**63) - 1, True, b"1", 2**63 - 1]
BAD_CAPACITIES = [
    0,
    -1,
    "1",
    None,
    1.5,
    2**63,
    -(2**63) - 1,
    True,
    b"1",
]  # no huge one: the C ring allocates it


def message(topic, partition, offset, key):
    return Message(topic, partition, offset, key, b"", None, None, (1, 0))


class Fetcher:
    """Makes batches of new messages: offsets increase per partition, with gaps, unless a step says not."""

    def __init__(self, run):
        self.run = run
        self.next = {}
        self.batch = []

    def fetch(self, specs):
        batch = []
        for kind, topic, partition, key, gap in specs:
            if kind == "none":
                item = None
            elif kind == "int":
                item = 5
            elif kind == "blank":  # partition and offset None, as on an error event
                item = Message(topic)
            elif kind == "unhashable":
                item = message(topic, partition, self.next.get((topic, partition), 0), [1])
            else:
                offset = self.next.get((topic, partition), 0) + gap
                if gap > 0:
                    self.next[(topic, partition)] = offset + 1
                item = message(topic, partition, max(offset, 0), key)
            batch.append(self.run.share(item))
        self.batch = batch
        return batch


message_specs = st.lists(
    st.tuples(
        st.sampled_from(["msg"] * 40 + ["none", "int", "blank", "unhashable"]),
        st.sampled_from(TOPICS),
        st.integers(0, 2),
        st.sampled_from(KEYS),
        st.sampled_from([1] * 8 + [2, 5, 0, -1]),
    ),
    min_size=1,
    max_size=8,
)


def weighted(*choices):
    """One of ``(weight, strategy)`` choices, drawn in proportion to the weights."""
    table = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(range(len(table))).flatmap(lambda i: table[i])


bad_or_int = weighted((3, st.integers(-2, 8)), (1, st.sampled_from(BAD_INTS)))
containers = st.sampled_from(["list"] * 6 + ["tuple", "none", "subclass"])


class ListSubclass(list):
    pass


def contain(kind, items):
    return {"list": list, "tuple": tuple, "subclass": ListSubclass}[kind](items) if kind != "none" else None


# -- the offset tracker

tracker_ops = st.lists(
    weighted(
        (6, st.tuples(st.just("track"), st.sampled_from(TOPICS), st.integers(0, 2), st.integers(0, 40))),
        (1, st.tuples(st.just("track"), st.sampled_from(TOPICS), bad_or_int, bad_or_int)),
        (6, st.tuples(st.just("ack"), st.sampled_from(TOPICS), st.integers(0, 2), st.integers(-1, 41))),
        (1, st.tuples(st.just("ack"), st.sampled_from(TOPICS), bad_or_int, bad_or_int)),
        (3, st.tuples(st.just("track_messages"), message_specs, st.sampled_from(["list", "generator"]))),
        (3, st.tuples(st.just("ack_message"), st.integers(0, 50))),
        (2, st.tuples(st.just("committable"))),
        (1, st.tuples(st.just("drop"), st.sampled_from([*TOPICS, "v"]), bad_or_int)),
        (1, st.tuples(st.just("pending"), st.sampled_from(TOPICS), bad_or_int)),
        (1, st.tuples(st.just("done"), st.sampled_from(TOPICS), bad_or_int)),
    ),
    min_size=5,
    max_size=80,
)


def tracker_state(run, trackers):
    run.both(lambda i: trackers[i].partitions(), "partitions()")
    windows = run.both(lambda i: trackers[i].window(), "window()")
    run.both(lambda i: trackers[i].positions(), "positions()")
    run.both(lambda i: trackers[i].frontiers(), "frontiers()")
    run.both(lambda i: len(trackers[i]), "len(tracker)")
    for topic, partition in trackers[0].partitions():
        run.both(lambda i, t=topic, p=partition: trackers[i].pending(t, p), "pending()")
        run.both(lambda i, t=topic, p=partition: trackers[i].done(t, p), "done()")
        run.both(lambda i, t=topic, p=partition: trackers[i].window_size(t, p), "window_size()")
    for tracker, window in zip(trackers, windows, strict=True):  # the running count is the sum it stands for
        assert window == sum(tracker.window_size(t, p) for t, p in tracker.partitions())


def tracker_step(run, fetcher, trackers, op):
    name = op[0]
    if name in ("track", "ack"):
        _, topic, partition, offset = op
        run.both(lambda i: getattr(trackers[i], name)(topic, partition, offset), f"{name}{op[1:]}")
    elif name == "track_messages":
        batch = fetcher.fetch(op[1])
        if op[2] == "list":
            run.both(lambda i: trackers[i].track_messages(batch), "track_messages(list)")
        else:
            run.both(lambda i: trackers[i].track_messages(m for m in batch), "track_messages(generator)")
    elif name == "ack_message":
        shared = [obj for _, obj in run.objects.values()]
        if shared:
            msg = shared[op[1] % len(shared)]
            run.both(lambda i: trackers[i].ack_message(msg), "ack_message()")
    elif name == "committable":
        run.both(lambda i: trackers[i].committable(), "committable()")
    elif name == "drop":
        run.both(lambda i: trackers[i].drop(op[1], op[2]), f"drop{op[1:]}")
    elif name == "pending":
        run.both(lambda i: trackers[i].pending(op[1], op[2]), f"pending{op[1:]}")
    elif name == "done":
        run.both(lambda i: trackers[i].done(op[1], op[2]), f"done{op[1:]}")
        run.both(lambda i: trackers[i].window_size(op[1], op[2]), f"window_size{op[1:]}")


@given(ops=tracker_ops)
@SETTINGS
def test_trackers_agree(ops):
    run = Run()
    fetcher = Fetcher(run)
    trackers = [core.OffsetTracker() for core in cores()]
    for op in ops:
        tracker_step(run, fetcher, trackers, op)
        tracker_state(run, trackers)


@given(
    ops=st.lists(st.tuples(st.sampled_from("tadcfp"), st.integers(0, 2), st.integers(0, 40)), max_size=300)
)
@settings(max_examples=300, deadline=None)
def test_cython_and_python_trackers_agree(ops):
    trackers = [core.OffsetTracker() for core in cores()]
    results = []
    for tracker in trackers:
        out = []
        for op, partition, offset in ops:
            if op == "t":
                try:
                    out.append(tracker.track("t", partition, offset))  # None, or a restart going backwards
                except ValueError:
                    out.append("ValueError")
            elif op == "a":
                out.append(tracker.ack("t", partition, offset))
            elif op == "d":
                tracker.drop("t", partition)
            elif op == "c":
                out.append(sorted(tracker.committable()))
            elif op == "f":
                out.append(sorted(tracker.frontiers()))
            else:
                out.append(
                    (
                        sorted(tracker.positions()),
                        len(tracker),
                        tracker.pending("t", partition),
                        tracker.window(),
                    )
                )
        results.append(out)
    assert results[0] == results[1]


# -- the ring buffer

ring_items = st.lists(st.sampled_from([1, 1, 1, 2, "x", None]), max_size=6)
ring_ops = st.lists(
    weighted(
        (4, st.tuples(st.just("push"), st.sampled_from([1, "x", None, b"y", 0, False]))),
        (3, st.tuples(st.just("extend"), ring_items, containers, bad_or_int)),
        (2, st.tuples(st.just("extend1"), ring_items)),
        (5, st.tuples(st.just("pop"))),
        (1, st.tuples(st.just("drain"))),
    ),
    max_size=60,
)


@given(capacity=st.sampled_from(BAD_CAPACITIES))
def test_ring_buffers_refuse_the_same_capacities(capacity):
    Run().both(lambda i: cores()[i].RingBuffer(capacity), f"RingBuffer({capacity!r})")


@given(capacity=st.integers(1, 8), ops=ring_ops)
@SETTINGS
def test_ring_buffers_agree(capacity, ops):
    run = Run()
    rings = run.both(lambda i: cores()[i].RingBuffer(capacity), f"RingBuffer({capacity!r})")
    for op in ops:
        ring_step(run, rings, op)
        run.both(lambda i: (len(rings[i]), rings[i].full(), rings[i].capacity), "len, full, capacity")


def ring_step(run, rings, op):
    name = op[0]
    if name == "push":
        run.both(lambda i: rings[i].push(op[1]), f"push({op[1]!r})")
    elif name == "extend":
        items = [run.share(object()) if v == 1 else v for v in op[1]]
        run.both(lambda i: rings[i].extend(contain(op[2], items), op[3]), f"extend({op[1:]})")
    elif name == "extend1":
        run.both(lambda i: rings[i].extend(op[1]), f"extend({op[1]})")
    elif name == "pop":
        run.both(lambda i: rings[i].pop(), "pop()")
    else:
        run.both(lambda i: rings[i].drain(), "drain()")


# -- the scheduler, its tracker and drive()


class Suspend:
    """A bare future-like: its ``__await__`` yields once, then returns what it was sent."""

    def __await__(self):
        return (yield "suspended")


def make_handler(kind, seen):
    """A handler of the given kind that records, in ``seen``, the messages it was called with."""

    async def returns(m):
        seen.append(m)
        return m.offset()

    async def raises(m):
        seen.append(m)
        raise ValueError(f"bad {m.offset()}")

    async def suspends(m):
        seen.append(m)
        got = await Suspend()
        return ("resumed", got)

    async def mixed(m):
        seen.append(m)
        offset = m.offset() or 0
        if offset % 3 == 1:
            raise KeyError(offset)
        if offset % 3 == 2:
            await Suspend()
        return offset

    def not_a_coroutine(m):
        seen.append(m)

    def raises_at_once(m):
        seen.append(m)
        raise RuntimeError("no coroutine")

    def iterator(m):
        seen.append(m)
        return iter([m])

    def generator(m):
        seen.append(m)
        yield "from a generator"

    async def cancelled(m):  # a cancellation the engine did not ask for: a BaseException, handed back too
        seen.append(m)
        raise asyncio.CancelledError(f"cancelled {m.offset()}")

    async def base_mixed(m):
        seen.append(m)
        offset = m.offset() or 0
        if offset % 3 == 1:
            raise KeyboardInterrupt(offset)
        if offset % 3 == 2:
            raise SystemExit(offset)
        return offset

    def exits_at_once(m):
        seen.append(m)
        raise SystemExit("no coroutine")

    def stops_at_once(m):  # not a step's end: the call itself raised
        seen.append(m)
        raise StopIteration("no coroutine")

    return locals()[kind]


HANDLERS = [
    "returns",
    "raises",
    "suspends",
    "mixed",
    "not_a_coroutine",
    "raises_at_once",
    "iterator",
    "generator",
    "cancelled",
    "base_mixed",
    "exits_at_once",
    "stops_at_once",
]

budgets = weighted((6, st.integers(1, 8)), (1, st.sampled_from(BAD_INTS + [0])))
scheduler_ops = st.lists(
    weighted(
        (6, st.tuples(st.just("fetch"), message_specs, containers, st.sampled_from([0] * 6 + [1, 3]))),
        (1, st.tuples(st.just("extend"), containers, bad_or_int)),
        (1, st.tuples(st.just("push"), st.integers(0, 10))),
        (3, st.tuples(st.just("pop"))),
        (2, st.tuples(st.just("pop_batch"), bad_or_int)),
        (
            5,
            st.tuples(
                st.just("done"), st.integers(0, 10), st.sampled_from(["running"] * 6 + ["any", "none"])
            ),
        ),
        (2, st.tuples(st.just("done_batch"), st.integers(0, 4), containers)),
        (
            2,
            st.tuples(
                st.just("release"), st.integers(0, 10), st.sampled_from(["running"] * 6 + ["any", "none"])
            ),
        ),
        (2, st.tuples(st.just("drop"), st.sampled_from([*TOPICS, "v"]), st.integers(0, 2))),
        (1, st.tuples(st.just("drop"), st.sampled_from(TOPICS), bad_or_int)),
        (2, st.tuples(st.just("drop_from"), st.sampled_from(TOPICS), st.integers(0, 2), st.integers(0, 12))),
        (1, st.tuples(st.just("drop_from"), st.sampled_from(TOPICS), st.integers(0, 2), bad_or_int)),
        (5, st.tuples(st.just("drive"), st.sampled_from(HANDLERS), budgets)),
        (1, st.tuples(st.just("drive_bad"), st.sampled_from(["none", "other", "object"]))),
        (3, st.tuples(st.just("resume"), st.integers(0, 10), st.sampled_from(["send", "throw", "close"]))),
        (1, st.tuples(st.just("committable"))),
        (1, st.tuples(st.just("track"), st.sampled_from(TOPICS), bad_or_int, bad_or_int)),
    ),
    min_size=5,
    max_size=60,
)


class SchedulerRun:
    def __init__(self, run, schedulers, trackers):
        self.run = run
        self.fetcher = Fetcher(run)
        self.schedulers = schedulers
        self.trackers = trackers
        # handed out and not done yet: (message, its coroutine and first yield on each side, or None)
        self.running = []

    def state(self):
        run, schedulers = self.run, self.schedulers
        run.both(lambda i: (len(schedulers[i]), schedulers[i].ready()), "len, ready")
        run.both(lambda i: (schedulers[i].ordering, schedulers[i].capacity), "ordering, capacity")
        if self.trackers is not None:
            tracker_state(run, self.trackers)

    def handed_out(self, results):
        """Record what pop()/pop_batch()/drive() handed out (the same messages on both sides)."""
        for msg in results:
            if msg is not None:
                self.running.append((msg, None))

    def step(self, op):
        run, s, name = self.run, self.schedulers, op[0]
        if name == "fetch":
            batch = self.fetcher.fetch(op[1])
            if self.trackers is not None:
                run.both(lambda i: self.trackers[i].track_messages(batch), "track_messages()")
            run.both(lambda i: s[i].extend(contain(op[2], batch), op[3]), f"extend({op[2]}, {op[3]})")
        elif name == "extend":
            batch = self.fetcher.batch
            run.both(lambda i: s[i].extend(contain(op[1], batch), op[2]), f"extend({op[1]}, {op[2]!r})")
        elif name == "push":
            batch = self.fetcher.batch or [None]
            item = batch[op[1] % len(batch)]
            run.both(lambda i: s[i].push(item), "push()")
        elif name == "pop":
            self.handed_out([outcome_of(run, lambda i: s[i].pop(), "pop()")])
        elif name == "pop_batch":
            batch = outcome_of(run, lambda i: s[i].pop_batch(op[1]), f"pop_batch({op[1]!r})")
            if isinstance(batch, list):
                self.handed_out(batch)
        elif name in ("done", "release"):
            self.done(name, op[1], op[2])
        elif name == "done_batch":
            taken, self.running = self.running[: op[1]], self.running[op[1] :]
            messages = [msg for msg, _ in taken]
            run.both(lambda i: s[i].done_batch(contain(op[2], messages)), f"done_batch({op[2]})")
        elif name == "drop":
            run.both(lambda i: s[i].drop(op[1], op[2]), f"drop{op[1:]}")
        elif name == "drop_from":
            run.both(lambda i: s[i].drop(op[1], op[2], op[3]), f"drop{op[1:]}")
        elif name == "drive":
            self.drive(op[1], op[2])
        elif name == "drive_bad":
            others = list(reversed(s))
            bad = {"none": [None, None], "other": others, "object": [object(), object()]}[op[1]]
            handler = make_handler("returns", [])
            run.both(lambda i: cores()[i].drive(bad[i], handler, 10), f"drive({op[1]} scheduler)")
        elif name == "resume":
            self.resume(op[1], op[2])
        elif name == "committable" and self.trackers is not None:
            run.both(lambda i: self.trackers[i].committable(), "committable()")
        elif name == "track" and self.trackers is not None:
            run.both(lambda i: self.trackers[i].track(*op[1:]), f"track{op[1:]}")

    def done(self, name, index, kind):
        """``done()`` or ``release()`` of a handed-out message, or a misuse of either."""
        run, s = self.run, self.schedulers
        if kind == "none":
            run.both(lambda i: getattr(s[i], name)(None), f"{name}(None)")
            return
        if kind == "running" and self.running:
            msg, _ = self.running.pop(index % len(self.running))
        else:  # misuse: a message that was not handed out (or was done already)
            shared = [obj for _, obj in run.objects.values()]
            if not shared:
                return
            msg = shared[index % len(shared)]
        run.both(lambda i: getattr(s[i], name)(msg), f"{name}()")

    def drive(self, kind, budget):
        run, s = self.run, self.schedulers
        seen = [[], []]
        handlers = [make_handler(kind, seen[i]) for i in range(2)]
        results = run.both(
            lambda i: cores()[i].drive(s[i], handlers[i], budget), f"drive({kind}, {budget!r})"
        )
        assert run.norm(seen[0]) == run.norm(seen[1]), "the handlers were called with different messages"
        for result in results:  # what a handler raises comes back with its message, never out of drive()
            assert not isinstance(result, BaseException) or isinstance(result, Exception), result
        if isinstance(results[0], Exception):
            if seen[0]:  # done() raised (a bad message): that message is neither held nor done
                self.running.append((seen[0][-1], None))
            return
        (_, pending_c), (_, pending_py) = results
        if pending_c is not None:
            msg, coro, first = pending_c
            coros = None if coro is None else ((coro, first), (pending_py[1], pending_py[2]))
            self.running.append((msg, coros))

    def resume(self, index, action):
        suspended = [entry for entry in self.running if entry[1] is not None]
        if not suspended:
            return
        coros = suspended[index % len(suspended)][1]
        resumes = [cores()[i].Resume(*coros[i]) for i in range(2)]
        self.run.both(lambda i: resumes[i].send(None), "Resume.send(None)")  # the first yield, handed back
        if action == "send":
            self.run.both(lambda i: stop_value(resumes[i].send, "sent"), "Resume.send('sent')")
        elif action == "throw":
            self.run.both(lambda i: stop_value(resumes[i].throw, KeyError("thrown")), "Resume.throw()")
        else:
            self.run.both(lambda i: resumes[i].close(), "Resume.close()")


def stop_value(call, arg):
    """What a coroutine step ended with: a yielded value, or ``("returned", value)``."""
    try:
        return call(arg)
    except StopIteration as stop:
        return ("returned", stop.value)


@given(
    ordering=st.sampled_from(["key", "partition", "unordered", b"key", None, "fifo", 1]),
    capacity=st.one_of(st.integers(1, 12), st.sampled_from(BAD_CAPACITIES)),
    tracker=st.sampled_from(["none", "same", "other", "object"]),
)
@SETTINGS
def test_schedulers_refuse_the_same_arguments(ordering, capacity, tracker):
    run = Run()
    trackers = [core.OffsetTracker() for core in cores()]
    passed = {"none": [None, None], "same": trackers, "other": trackers[::-1], "object": [object(), object()]}
    run.both(lambda i: cores()[i].Scheduler(ordering, capacity, passed[tracker][i]), "Scheduler()")
    run.both(lambda i: cores()[i].Scheduler(ordering=ordering), "Scheduler(ordering=)")
    run.both(lambda i: cores()[i].Scheduler(capacity=capacity), "Scheduler(capacity=)")


@given(
    ordering=st.sampled_from(["key", "partition", "unordered"]),
    capacity=st.integers(1, 12),
    tracked=st.booleans(),
    ops=scheduler_ops,
)
@SETTINGS
def test_schedulers_agree(ordering, capacity, tracked, ops):
    run = Run()
    trackers = [core.OffsetTracker() for core in cores()] if tracked else None
    schedulers = run.both(
        lambda i: cores()[i].Scheduler(ordering, capacity, trackers[i] if tracked else None), "Scheduler()"
    )
    twin = SchedulerRun(run, schedulers, trackers)
    twin.state()
    for op in ops:
        twin.step(op)
        twin.state()


lane_parts = st.one_of(
    st.none(),
    st.integers(),
    st.sampled_from([-1, -2, 2**61 - 1, 2**64, -(2**63)]),
    st.text(max_size=5),
    st.binary(max_size=5),
    st.floats(allow_nan=False),
    st.tuples(st.integers(), st.text(max_size=2)),
)


@given(topic=lane_parts, partition=lane_parts, key=lane_parts)
@SETTINGS
def test_lanes_are_the_same_integers(topic, partition, key):
    """The compiled core computes hash((topic, partition[, key])) without the tuple; the twin calls hash()."""
    Run().both(lambda i: cores()[i]._lane(topic, partition, key), "_lane()")
    Run().both(lambda i: cores()[i]._lane([topic], partition, key), "_lane(unhashable)")


class Msg:
    """A duck-typed message (confluent's Message turns partition -1 into None)."""

    def __init__(self, topic, partition, offset, key=None):
        self._topic, self._partition, self._offset, self._key = topic, partition, offset, key

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def key(self):
        return self._key


@pytest.mark.parametrize("ordering", ["key", "partition", "unordered"])
def test_a_drop_passes_a_shared_lane_on(ordering):
    """Partitions -1 and -2 hash alike (in CPython), so their lanes collide: the two share one lane. Dropping
    the partition whose message holds it hands the lane to the other's message, which is not dropped."""
    assert hash(-1) == hash(-2)
    for core in cores():
        scheduler = core.Scheduler(ordering, 10)
        a, b = Msg("t", -1, 0), Msg("t", -2, 0)
        assert scheduler.extend([a, b]) == 2
        assert scheduler.ready() == (2 if ordering == "unordered" else 1)
        assert scheduler.drop("t", -1) == 1
        assert len(scheduler) == 1 and scheduler.pop() is b
        scheduler.done(b)
        assert len(scheduler) == 0 and scheduler.pop() is None


# -- the same API


def public(obj):
    return sorted(n for n in dir(obj) if not n.startswith("_") or n in ("__len__", "__next__", "__await__"))


def test_same_public_api():
    c, py = cores()
    assert c.__all__ == py.__all__
    assert c.ORDERINGS == py.ORDERINGS
    for name in py.__all__:
        twin, compiled = getattr(py, name), getattr(c, name)
        if isinstance(twin, type):
            assert public(compiled) == public(twin), name
            for attr in public(twin):
                if callable(getattr(twin, attr)) and attr not in ("__len__", "__next__", "__await__"):
                    assert shape(getattr(compiled, attr)) == shape(getattr(twin, attr)), f"{name}.{attr}"
        elif callable(twin):
            assert shape(compiled) == shape(twin), name


def shape(function):
    """A signature without its annotations: names, kinds and defaults."""
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


# -- what the Kafka thread asks of each batch consume() returns

_EVENT = KafkaError(KafkaError._PARTITION_EOF)
batch_items = st.one_of(
    st.builds(
        lambda topic, partition, offset, key, error: Message(
            topic, partition, offset, key, b"", None, _EVENT if error else None, (1, 0)
        ),
        st.sampled_from(TOPICS),
        st.integers(0, 3),
        st.integers(0, 2**40),
        st.sampled_from(KEYS),
        st.booleans(),
    ),
    st.builds(lambda topic: Message(topic), st.sampled_from(TOPICS)),  # partition and offset None
    st.builds(
        lambda topic, partition, offset: Msg(topic, partition, offset),
        st.sampled_from(TOPICS),
        st.integers(-1, 3),
        st.integers(0, 9),
    ),
    st.just(None),
)


@given(items=st.lists(batch_items, max_size=30), into=st.sampled_from([{}, {("t", 0): 5}, None, []]))
@SETTINGS
def test_first_error_and_last_offsets_agree(items, into):
    """A batch's first error, and its partitions' last offsets noted into a dict: read in place by the
    compiled core, by method calls in the twin; the same results and errors, the same dict, in order."""
    run = Run()
    for item in items:
        run.share(item)
    run.both(lambda i: cores()[i].first_error(items), "first_error()")
    run.both(lambda i: cores()[i].first_error(tuple(items)), "first_error(tuple)")
    dicts = [None if into is None else type(into)(into) for _ in SIDES]
    run.both(lambda i: cores()[i].note_last_offsets(items, dicts[i]), "note_last_offsets()")
    assert dicts[0] == dicts[1] and list(dicts[0] or ()) == list(dicts[1] or ())


def test_batches_are_read_in_place():
    """With this confluent-kafka, the compiled core reads Message fields in place (else: method calls,
    a quarter slower)."""
    assert IMPLS["cython"]._reads_in_place()
