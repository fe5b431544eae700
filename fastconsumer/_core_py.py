"""Pure-Python twin of ``fastconsumer._core_c``.

Same classes, same behaviour, same errors: tests/test_core_differential.py drives both side by side with
random operations, bad input included, and the test suite runs against both. It is what runs where the
extension was not built, or when ``FASTCONSUMER_NO_EXTENSIONS=1`` asks for it, and what type checkers read
(``fastconsumer.core`` points them here; ``_core_c.pyi`` mirrors it).

Messages are duck-typed (``MessageLike``): the scheduler hands back the very objects it was given.

Where the compiled core converts an argument to a C type (``int64_t``, ``Py_ssize_t``) or checks it (``list``,
``Scheduler``), the twin does the same conversion with the same error, so a bad argument fails alike in both.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Coroutine, Generator, Iterable
from types import CoroutineType, GeneratorType
from typing import Any, Generic, Protocol, TypeVar

__all__ = (
    "ORDERINGS",
    "OffsetTracker",
    "Resume",
    "RingBuffer",
    "Scheduler",
    "drive",
    "first_error",
    "note_last_offsets",
)

ORDERINGS = ("key", "partition", "unordered")
_KEY, _PARTITION, _UNORDERED = 0, 1, 2


class MessageLike(Protocol):
    """What the core reads from a message (``confluent_kafka.Message`` in practice)."""

    def topic(self) -> str | None: ...
    def partition(self) -> int | None: ...
    def offset(self) -> int | None: ...
    def key(self) -> object: ...


_T = TypeVar("_T")

#: ``(topic, partition, last offset tracked, offset tracked)``: a partition whose offsets went backwards.
Restart = tuple[str, int, int, int]

# -- the compiled core's argument conversions

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1


def _int64(value: object) -> int:
    """``value`` as Cython converts it to an ``int64_t``: ints as they are, else through ``__int__``."""
    if type(value) is not int:
        if isinstance(value, int):
            value = operator.index(value)  # a subclass (bool): its int value, as an exact int
        else:
            convert = getattr(type(value), "__int__", None)
            if convert is None:
                raise TypeError("an integer is required")
            value = convert(value)
            if not isinstance(value, int):
                raise TypeError(f"__int__ returned non-int (type {type(value).__name__})")
            value = operator.index(value)
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError("Python int too large to convert to C long")
    return value


def _ssize(value: object) -> int:
    """``value`` as Cython converts it to a ``Py_ssize_t``: through ``__index__``."""
    if type(value) is not int:
        value = operator.index(value)  # type: ignore[arg-type]
    if not _INT64_MIN <= value <= _INT64_MAX:
        raise OverflowError("Python int too large to convert to C ssize_t")
    return value


def _type_name(value: object) -> str:
    """The type's C-level name, as Cython's messages show it: ``module.Name`` for extension types."""
    tp = type(value)
    if tp.__flags__ & (1 << 9) or tp.__module__ == "builtins":  # Py_TPFLAGS_HEAPTYPE: a class statement's
        return tp.__name__
    return f"{tp.__module__}.{tp.__qualname__}"


def _wrong_type(name: str, expected: str, value: object) -> TypeError:
    return TypeError(f"Argument '{name}' has incorrect type (expected {expected}, got {_type_name(value)})")


def _check_list(value: object, name: str) -> None:
    """Cython's check of an argument typed ``list``: exactly a list (None and subclasses refused)."""
    if type(value) is not list:
        raise _wrong_type(name, "list", value)


def _check_start(start: int) -> None:
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")


class RingBuffer(Generic[_T]):
    """Bounded FIFO: ``push`` refuses instead of growing, so whoever fills it feels the back-pressure."""

    __slots__ = ("_capacity", "_items")

    def __init__(self, capacity: int) -> None:
        capacity = _ssize(capacity)
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._items: deque[_T] = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self._capacity

    def push(self, item: _T) -> bool:
        if item is None:
            raise TypeError("ring buffer items cannot be None")
        if len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        return True

    def extend(self, items: list[_T], start: int = 0) -> int:
        """Push ``items[start:]`` until full; return how many were taken."""
        start = _ssize(start)
        _check_list(items, "items")
        _check_start(start)
        chunk = items[start : start + self._capacity - len(self._items)]
        for item in chunk:
            if item is None:
                raise TypeError("ring buffer items cannot be None")
        self._items.extend(chunk)
        return len(chunk)

    def pop(self) -> _T | None:
        """Oldest item, or None when empty."""
        return self._items.popleft() if self._items else None

    def drain(self) -> list[_T]:
        items = list(self._items)
        self._items.clear()
        return items


class _Window:
    """One partition's in-flight offsets in order, each with its acked flag; acked ones leave at the head."""

    __slots__ = ("done", "last", "moved", "n_acked", "order", "reported")

    def __init__(self, offset: int) -> None:
        self.order: deque[int] = deque()
        self.done: dict[int, bool] = {}
        self.n_acked = 0
        self.last = offset - 1
        self.reported = offset
        self.moved = False

    def safe(self) -> int:
        return self.order[0] if self.order else self.last + 1


class OffsetTracker:
    """Per-partition bookkeeping of which offsets may be committed.

    The committable offset of a partition is the lowest tracked offset not yet acked (or one past the last
    tracked offset when all are acked): committing it never skips a message that was not handled.

    An offset at or below the last one tracked for its partition (an offset reset, a re-created topic)
    restarts that partition's window there: the old one is discarded, as ``drop()`` then ``track()`` would.
    """

    __slots__ = ("_held", "_windows")

    def __init__(self) -> None:
        self._windows: dict[tuple[str, int], _Window] = {}
        self._held = 0  # entries of all windows: window()

    def track(self, topic: str, partition: int, offset: int) -> Restart | None:
        """Track an offset fetched: None, or ``(topic, partition, last tracked, offset)`` when it did not
        come after the last one tracked and restarted the partition's window."""
        # Exact ints in range pass straight through; anything else is converted (or refused) as C would.
        if type(offset) is not int or not 0 <= offset < 9223372036854775807 or type(partition) is not int:
            partition, offset = _int64(partition), _int64(offset)
            if not 0 <= offset < _INT64_MAX:  # Kafka's offsets; the compiled window computes offset +- 1
                raise ValueError(
                    f"offset {offset} of {topic}[{partition}] is out of range 0..{_INT64_MAX - 1}"
                )
        key = (topic, partition)
        try:
            window = self._windows[key]
        except KeyError:
            _int64(partition)  # an int beyond 64 bits is refused, as C refuses it
            window = self._windows[key] = _Window(offset)
        except TypeError:  # an unhashable topic: the compiled core converted the partition before
            _int64(partition)
            raise
        else:
            if offset <= window.last:
                return self._restart(key, window, offset)
        window.order.append(offset)
        window.done[offset] = False
        window.last = offset
        self._held += 1
        return None

    def _restart(self, key: tuple[str, int], old: _Window, offset: int) -> Restart:
        # The compiled core's _restart() is this code, line for line.
        window = _Window(offset)
        window.order.append(offset)
        window.done[offset] = False
        window.last = offset
        window.reported = old.reported  # committable() reports the new safe offset if it differs
        window.moved = True
        del self._windows[key]  # as drop() then track(): the partition comes last
        self._windows[key] = window
        self._held += 1 - len(old.order)
        return (key[0], key[1], old.last, offset)

    def track_messages(self, messages: Iterable[MessageLike]) -> list[Restart]:
        """``track()`` each message; the list of the restarts among them (empty, normally)."""
        restarts: list[Restart] = []
        track = self.track
        for msg in messages:
            # None (an error event's offset) fails in track() as in the compiled core
            restarted = track(msg.topic(), msg.partition(), msg.offset())  # type: ignore[arg-type]
            if restarted is not None:
                restarts.append(restarted)
        return restarts

    def ack(self, topic: str, partition: int, offset: int) -> bool:
        """Mark a tracked offset handled; False if it is not tracked (e.g. its partition was dropped)."""
        try:
            window = self._windows[(topic, partition)]
            done = window.done
            state = done[offset]
        except (KeyError, TypeError):  # not tracked, or not exact ints: convert as C does, then look again
            return self._ack_converted(topic, partition, offset)
        if state:
            return True
        order = window.order
        if offset == order[0]:
            count = len(order)
            order.popleft()
            del done[offset]
            while order and done[order[0]]:
                del done[order.popleft()]
                window.n_acked -= 1
            window.moved = True
            self._held -= count - len(order)
        else:
            done[offset] = True
            window.n_acked += 1
        return True

    def _check(self, topic: str, partition: object, offset: object) -> None:
        """What ack() converts and looks up, the same errors, without acking (Scheduler.release())."""
        converted = _int64(partition)
        _int64(offset)
        self._windows.get((topic, converted))  # an unhashable topic raises here, after the conversions

    def _ack_converted(self, topic: str, partition: object, offset: object) -> bool:
        converted = _int64(partition), _int64(offset)
        if type(partition) is int and type(offset) is int and converted == (partition, offset):
            self._windows.get((topic, converted[0]))  # an unhashable topic raises here, after the conversions
            return False
        return self.ack(topic, *converted)

    def ack_message(self, msg: MessageLike) -> bool:
        return self.ack(msg.topic(), msg.partition(), msg.offset())  # type: ignore[arg-type]

    def committable(self) -> list[tuple[str, int, int]]:
        """``(topic, partition, offset)`` for each partition whose safe offset moved since the last call."""
        out = []
        for (topic, partition), window in self._windows.items():
            if window.moved:
                window.moved = False
                safe = window.safe()
                if safe != window.reported:
                    window.reported = safe
                    out.append((topic, partition, safe))
        return out

    def positions(self) -> list[tuple[str, int, int]]:
        """The safe offset of every tracked partition, moved or not: what a final commit writes, so a
        partition fetched but not handled resumes there, whatever auto.offset.reset says."""
        return [(topic, partition, window.safe()) for (topic, partition), window in self._windows.items()]

    def frontiers(self) -> list[tuple[str, int, int]]:
        """``(topic, partition, highest acked offset + 1)`` for each partition with a gap below its highest
        acked offset: the messages that must still be handled for a commit to cover all acked ones."""
        out = []
        for (topic, partition), window in self._windows.items():
            if window.n_acked:
                done = window.done
                top = next(offset for offset in reversed(window.order) if done[offset])
                out.append((topic, partition, top + 1))
        return out

    def done(self, topic: str, partition: int) -> list[int]:
        """The acked offsets above the partition's safe offset, ascending: handled, yet not covered by a
        commit of the safe offset (what a commit's metadata tells the next owner)."""
        window = self._windows.get((topic, _int64(partition)))
        if window is None or not window.n_acked:
            return []
        done = window.done
        return [offset for offset in window.order if done[offset]]

    def pending(self, topic: str, partition: int) -> int:
        """Offsets tracked and not yet acked."""
        window = self._windows.get((topic, _int64(partition)))
        return len(window.order) - window.n_acked if window is not None else 0

    def window_size(self, topic: str, partition: int) -> int:
        """Entries held for a partition: bounded by its in-flight window, whatever its offsets."""
        window = self._windows.get((topic, _int64(partition)))
        return len(window.order) if window is not None else 0

    def window(self) -> int:
        """Entries held across all partitions: the sum of their ``window_size()``, kept as a running count."""
        return self._held

    def drop(self, topic: str, partition: int) -> None:
        window = self._windows.pop((topic, _int64(partition)), None)
        if window is not None:
            self._held -= len(window.order)

    def partitions(self) -> list[tuple[str, int]]:
        return list(self._windows)

    def __len__(self) -> int:
        return sum(len(w.order) - w.n_acked for w in self._windows.values())


def _lane(topic: object, partition: object, key: object) -> int:
    """A lane: the hash of (topic, partition[, key]), an int; the compiled core computes the same integer
    without building the tuple. Two lanes whose hashes collide are one, in both cores alike."""
    return hash((topic, partition)) if key is None else hash((topic, partition, key))


class Scheduler:
    """Decides which fetched message may run next under an ordering.

    ``key``: one message per (partition, key) at a time, in offset order; a null key orders like its
    partition. ``partition``: one message per partition at a time. ``unordered``: anything, at once.
    Runnable messages wait in a ring buffer; messages held back by a busy lane wait in that lane.
    """

    __slots__ = ("_capacity", "_lanes", "_ordering", "_ready", "_tracker", "_waiting")

    def __init__(
        self, ordering: str = "key", capacity: int = 10000, tracker: OffsetTracker | None = None
    ) -> None:
        capacity = _ssize(capacity)
        if tracker is not None and not isinstance(tracker, OffsetTracker):
            raise _wrong_type("tracker", f"{__name__}.OffsetTracker", tracker)
        if not isinstance(ordering, str) or ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}; got {ordering!r}")
        self._ordering = ORDERINGS.index(ordering)
        self._capacity = capacity
        self._ready: RingBuffer[Any] = RingBuffer(capacity)
        # lane -> messages waiting behind the one holding the lane (the compiled core: None until one waits)
        self._lanes: dict[int, deque[Any]] = {}
        self._waiting = 0
        self._tracker = tracker  # done() acks there: one call per finished message, not two

    @property
    def ordering(self) -> str:
        return ORDERINGS[self._ordering]

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        """Messages held, runnable or waiting (not those handed out)."""
        return len(self._ready) + self._waiting

    def ready(self) -> int:
        return len(self._ready)

    def _lane_of(self, msg: MessageLike) -> int:
        return _lane(msg.topic(), msg.partition(), msg.key() if self._ordering == _KEY else None)

    def push(self, msg: MessageLike) -> bool:
        ready = self._ready
        if len(ready._items) + self._waiting >= self._capacity:
            return False
        if self._ordering == _UNORDERED:
            return ready.push(msg)
        # _lane_of(msg), inlined
        topic, partition, key = msg.topic(), msg.partition(), msg.key() if self._ordering == _KEY else None
        lane = hash((topic, partition)) if key is None else hash((topic, partition, key))
        queue = self._lanes.get(lane)
        if queue is None:  # a free lane: it runs now, and holds the lane
            self._lanes[lane] = deque()
            ready._items.append(msg)  # ready.push(msg): not None (it has a topic()) and there is room
        else:
            queue.append(msg)
            self._waiting += 1
        return True

    def extend(self, messages: list[Any], start: int = 0) -> int:
        """Push ``messages[start:]`` until full; return how many were taken."""
        start = _ssize(start)
        _check_list(messages, "messages")
        _check_start(start)
        if self._ordering == _UNORDERED:
            return self._ready.extend(messages, start)
        push = self.push
        n = len(messages)
        i = start
        while i < n and push(messages[i]):
            i += 1
        return i - start

    def pop(self) -> Any:
        """The next runnable message, or None."""
        items = self._ready._items
        return items.popleft() if items else None

    def pop_batch(self, max_messages: int) -> list[Any]:
        """Up to ``max_messages`` messages runnable together: each lane's waiting successors come along in
        order, since one handler call takes them in sequence."""
        max_messages = _ssize(max_messages)
        batch: list[Any] = []
        lanes = self._lanes
        while len(batch) < max_messages:
            msg = self._ready.pop()
            if msg is None:
                break
            batch.append(msg)
            if self._ordering != _UNORDERED:
                # None: its lane was released already (done() before it was handed out)
                queue = lanes.get(self._lane_of(msg))
                while queue and len(batch) < max_messages:
                    batch.append(queue.popleft())
                    self._waiting -= 1
        return batch

    def done(self, msg: MessageLike) -> None:
        """A handed-out message is finished: ack its offset in the tracker, and release its lane so the next
        message waiting in it becomes runnable."""
        topic = msg.topic()
        partition = msg.partition()
        if self._tracker is not None:
            self._tracker.ack(topic, partition, msg.offset())  # type: ignore[arg-type]
        ordering = self._ordering
        if ordering == _UNORDERED:
            return
        # _release(_lane(topic, partition, key)), inlined
        key = msg.key() if ordering == _KEY else None
        lane = hash((topic, partition)) if key is None else hash((topic, partition, key))
        queue = self._lanes.get(lane)
        if queue is None:
            return
        if queue:
            self._ready._items.append(queue.popleft())  # ready.push(): it left the ring for its lane
            self._waiting -= 1
        else:
            del self._lanes[lane]

    def release(self, msg: MessageLike) -> None:
        """A handed-out message is given up (its partition was revoked): release its lane as ``done()`` does,
        without acking its offset, which stays uncommitted for the partition's next owner."""
        topic = msg.topic()
        partition = msg.partition()
        if self._tracker is not None:
            self._tracker._check(topic, partition, msg.offset())  # type: ignore[arg-type]
        if self._ordering == _UNORDERED:
            return
        self._release(_lane(topic, partition, msg.key() if self._ordering == _KEY else None))

    def _release(self, lane: int) -> None:
        queue = self._lanes.get(lane)
        if queue is None:
            return
        if queue:
            self._ready.push(queue.popleft())
            self._waiting -= 1
        else:
            del self._lanes[lane]

    def done_batch(self, messages: list[Any]) -> None:
        """``done`` for a batch handed out by ``pop_batch``: each offset acked, each lane released once."""
        _check_list(messages, "messages")
        if self._tracker is not None:
            for msg in messages:
                self._tracker.ack_message(msg)
        if self._ordering == _UNORDERED:
            return
        seen = set()
        for msg in messages:
            lane = self._lane_of(msg)
            if lane not in seen:
                seen.add(lane)
                self._release(lane)

    def drop(self, topic: str, partition: int, start: int = 0) -> int:
        """Forget the held messages of a partition at or above offset ``start`` (all by default: it was
        revoked; a revoke filling its gaps keeps those below); return how many."""
        partition = _int64(partition)
        start = _int64(start)
        dropped = 0
        kept = []
        # The compiled core's drop() is this code, line for line. A lane's messages come in offset order:
        # those kept are the lane's first ones, so what stays runnable stays at the head of its lane.
        for queue in self._lanes.values():  # waiting: they leave their lanes' queues
            if queue:
                left = [
                    m for m in queue if m.partition() != partition or m.topic() != topic or m.offset() < start
                ]
                if len(left) != len(queue):
                    dropped += len(queue) - len(left)
                    self._waiting -= len(queue) - len(left)
                    queue.clear()
                    queue.extend(left)
        for msg in self._ready.drain():  # runnable: each holds its lane, which passes on as if it had run
            if msg.partition() != partition or msg.topic() != topic or msg.offset() < start:
                kept.append(msg)
                continue
            dropped += 1
            if self._ordering != _UNORDERED:
                lane = self._lane_of(msg)
                popped = self._lanes.pop(lane, None)
                if popped:  # another partition's lane with the same hash
                    kept.append(popped.popleft())
                    self._waiting -= 1
                    self._lanes[lane] = popped
        self._ready.extend(kept)
        return dropped


_Handler = Callable[[Any], Coroutine[Any, Any, Any]]
_Pending = tuple[Any, Coroutine[Any, Any, Any], Any] | tuple[Any, None, BaseException]


def _first_step(coro: Any) -> Any:
    """``PyIter_Send(coro, None)`` as the compiled ``drive`` calls it: ``send(None)`` on coroutines and
    generators, ``next()`` on other iterators, else a ``send`` method."""
    if type(coro) is CoroutineType or type(coro) is GeneratorType or not hasattr(type(coro), "__next__"):
        return coro.send(None)
    return next(coro)


def drive(scheduler: Scheduler, handler: _Handler, budget: int) -> tuple[int, _Pending | None]:
    """Start up to ``budget`` runnable messages, stepping each handler coroutine once in place.

    Handlers that finish without suspending (most, when they only compute) are done here, with no Task
    and no trip through the event loop. Returns ``(finished, pending)``: ``pending`` is None, or
    ``(msg, coro, first)`` for the first coroutine that suspended (``first`` is what it yielded; await
    ``Resume(coro, first)`` to go on with it), or ``(msg, None, exc)`` for a handler that raised, any
    BaseException (a CancelledError, a SystemExit) included: the message is neither done nor lost.
    """
    budget = _ssize(budget)
    if not isinstance(scheduler, Scheduler):  # None included
        raise _wrong_type("scheduler", f"{__name__}.Scheduler", scheduler)
    finished = 0
    ready = scheduler._ready._items
    while finished < budget:
        if not ready:
            break
        msg = ready.popleft()
        try:
            coro = handler(msg)
        except BaseException as exc:  # a StopIteration too: the call raised, no step ended
            return finished, (msg, None, exc)
        try:
            first = coro.send(None) if type(coro) is CoroutineType else _first_step(coro)
        except StopIteration:
            scheduler.done(msg)
            finished += 1
            continue
        except BaseException as exc:
            return finished, (msg, None, exc)
        return finished, (msg, coro, first)
    return finished, None


class Resume(Generator[Any, Any, Any]):
    """Awaits the rest of a coroutine that ``drive`` already stepped once: hands its first yield to the
    awaiting Task, then forwards everything (results, exceptions, cancellation) to the coroutine."""

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Coroutine[Any, Any, Any], first: Any) -> None:
        self._coro = coro
        self._first = first
        self._started = False

    def __await__(self) -> Resume:
        return self

    def __iter__(self) -> Resume:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        if not self._started:
            self._started = True
            return self._first
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        self._started = True
        return self._coro.throw(*args)

    def close(self) -> None:
        self._coro.close()


def first_error(messages: list[Any]) -> int:
    """The index of the first of ``messages`` that carries an error (an event, not a message), or -1."""
    _check_list(messages, "messages")
    for i, msg in enumerate(messages):
        if msg.error() is not None:
            return i
    return -1


def note_last_offsets(messages: list[Any], into: dict[Any, Any]) -> None:
    """``into[(topic, partition)] = offset`` of each partition's last message among ``messages``, as one
    assignment per message in order would leave it."""
    _check_list(messages, "messages")
    if type(into) is not dict:
        raise _wrong_type("into", "dict", into)
    for msg in messages:
        into[(msg.topic(), msg.partition())] = msg.offset()
