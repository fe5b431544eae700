"""Pure-Python twin of ``fastconsumer._core``.

Same classes, same behaviour, same errors: the test suite runs against both. It is what runs where the
extension was not built, or when ``FASTCONSUMER_NO_EXTENSIONS=1`` asks for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

ORDERINGS = ("key", "partition", "unordered")


class RingBuffer:
    """Bounded FIFO: ``push`` refuses instead of growing, so whoever fills it feels the back-pressure."""

    __slots__ = ("_items", "_capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"ring buffer capacity must be >= 1, got {capacity}")
        self._capacity = capacity
        self._items: deque = deque()

    @property
    def capacity(self) -> int:
        return self._capacity

    def __len__(self) -> int:
        return len(self._items)

    def full(self) -> bool:
        return len(self._items) >= self._capacity

    def push(self, item: Any) -> bool:
        if item is None:
            raise TypeError("ring buffer items cannot be None")
        if len(self._items) >= self._capacity:
            return False
        self._items.append(item)
        return True

    def extend(self, items: list[Any], start: int = 0) -> int:
        """Push ``items[start:]`` until full; return how many were taken."""
        room = self._capacity - len(self._items)
        chunk = items[start : start + room]
        if None in chunk:
            raise TypeError("ring buffer items cannot be None")
        self._items.extend(chunk)
        return len(chunk)

    def pop(self) -> Any:
        """Oldest item, or None when empty."""
        return self._items.popleft() if self._items else None

    def drain(self) -> list:
        items = list(self._items)
        self._items.clear()
        return items


class _Window:
    """One partition's in-flight offsets in order, each with its acked flag; acked ones leave at the head."""

    __slots__ = ("done", "last", "moved", "n_acked", "order", "reported")

    def __init__(self, offset: int) -> None:
        self.order: deque = deque()
        self.done: dict = {}
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
    """

    __slots__ = ("_windows",)

    def __init__(self) -> None:
        self._windows: dict = {}

    def track(self, topic: str, partition: int, offset: int) -> None:
        key = (topic, partition)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = _Window(offset)
        elif offset <= window.last:
            raise ValueError(
                f"offset {offset} of {topic}[{partition}] tracked after {window.last}: offsets must increase"
            )
        window.order.append(offset)
        window.done[offset] = False
        window.last = offset

    def track_messages(self, messages: Iterable[Any]) -> None:
        track = self.track
        for msg in messages:
            track(msg.topic(), msg.partition(), msg.offset())

    def ack(self, topic: str, partition: int, offset: int) -> bool:
        """Mark a tracked offset handled; False if it is not tracked (e.g. its partition was dropped)."""
        window = self._windows.get((topic, partition))
        if window is None:
            return False
        done = window.done
        state = done.get(offset)
        if state is None:
            return False
        if state:
            return True
        order = window.order
        if offset == order[0]:
            order.popleft()
            del done[offset]
            while order and done[order[0]]:
                del done[order.popleft()]
                window.n_acked -= 1
            window.moved = True
        else:
            done[offset] = True
            window.n_acked += 1
        return True

    def ack_message(self, msg: Any) -> bool:
        return self.ack(msg.topic(), msg.partition(), msg.offset())

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

    def pending(self, topic: str, partition: int) -> int:
        """Offsets tracked and not yet acked."""
        window = self._windows.get((topic, partition))
        return len(window.order) - window.n_acked if window is not None else 0

    def window_size(self, topic: str, partition: int) -> int:
        """Entries held for a partition: bounded by its in-flight window, whatever its offsets."""
        window = self._windows.get((topic, partition))
        return len(window.order) if window is not None else 0

    def drop(self, topic: str, partition: int) -> None:
        self._windows.pop((topic, partition), None)

    def partitions(self) -> list[tuple[str, int]]:
        return list(self._windows)

    def __len__(self) -> int:
        return sum(len(w.order) - w.n_acked for w in self._windows.values())


def _lane_of(ordering: int, msg: Any) -> Any:
    if ordering == 0:
        return (msg.topic(), msg.partition(), msg.key())
    return (msg.topic(), msg.partition())


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
        if ordering not in ORDERINGS:
            raise ValueError(f"ordering must be one of {', '.join(ORDERINGS)}; got {ordering!r}")
        self._ordering = ORDERINGS.index(ordering)
        self._capacity = capacity
        self._ready = RingBuffer(capacity)
        self._lanes: dict = {}  # lane -> deque of messages waiting behind the one that holds the lane
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

    def push(self, msg: Any) -> bool:
        if len(self._ready) + self._waiting >= self._capacity:
            return False
        if self._ordering == 2:
            return self._ready.push(msg)
        lane = _lane_of(self._ordering, msg)
        queue = self._lanes.get(lane)
        if queue is None:
            self._lanes[lane] = deque()
            self._ready.push(msg)
        else:
            queue.append(msg)
            self._waiting += 1
        return True

    def extend(self, messages: list[Any], start: int = 0) -> int:
        """Push ``messages[start:]`` until full; return how many were taken."""
        push = self.push
        n = len(messages)
        i = start
        while i < n and push(messages[i]):
            i += 1
        return i - start

    def pop(self) -> Any:
        """The next runnable message, or None."""
        return self._ready.pop()

    def pop_batch(self, max_messages: int) -> list:
        """Up to ``max_messages`` messages runnable together: each lane's waiting successors come along in
        order, since one handler call takes them in sequence."""
        batch: list = []
        lanes = self._lanes
        while len(batch) < max_messages:
            msg = self._ready.pop()
            if msg is None:
                break
            batch.append(msg)
            if self._ordering != 2:
                queue = lanes[_lane_of(self._ordering, msg)]
                while queue and len(batch) < max_messages:
                    batch.append(queue.popleft())
                    self._waiting -= 1
        return batch

    def done(self, msg: Any) -> None:
        """A handed-out message is finished: ack its offset in the tracker, and release its lane so the next
        message waiting in it becomes runnable."""
        if self._tracker is not None:
            self._tracker.ack_message(msg)
        if self._ordering != 2:
            self._release(_lane_of(self._ordering, msg))

    def _release(self, lane: Any) -> None:
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
        if self._tracker is not None:
            for msg in messages:
                self._tracker.ack_message(msg)
        if self._ordering == 2:
            return
        seen = set()
        for msg in messages:
            lane = _lane_of(self._ordering, msg)
            if lane not in seen:
                seen.add(lane)
                self._release(lane)

    def drop(self, topic: str, partition: int) -> int:
        """Forget the held messages of a partition (it was revoked); return how many."""
        dropped = 0
        kept = []
        lanes = self._lanes
        for msg in self._ready.drain():
            if msg.partition() != partition or msg.topic() != topic:
                kept.append(msg)
                continue
            dropped += 1
            if self._ordering != 2:  # the lane's holder never ran: free the lane with its queue
                queue = lanes.pop(_lane_of(self._ordering, msg))
                dropped += len(queue)
                self._waiting -= len(queue)
        self._ready.extend(kept)
        for lane, queue in lanes.items():  # lanes held by running messages stay held until done()
            if queue and lane[1] == partition and lane[0] == topic:
                dropped += len(queue)
                self._waiting -= len(queue)
                queue.clear()
        return dropped


def drive(scheduler: Scheduler, handler: Any, budget: int) -> tuple[int, Any]:
    """Start up to ``budget`` runnable messages, stepping each handler coroutine once in place.

    Handlers that finish without suspending (most, when they only compute) are done here, with no Task
    and no trip through the event loop. Returns ``(finished, pending)``: ``pending`` is None, or
    ``(msg, coro, first)`` for the first coroutine that suspended (``first`` is what it yielded; await
    ``Resume(coro, first)`` to go on with it), or ``(msg, None, exc)`` for a handler that raised.
    """
    finished = 0
    while finished < budget:
        msg = scheduler.pop()
        if msg is None:
            break
        coro = handler(msg)
        try:
            first = coro.send(None)
        except StopIteration:
            scheduler.done(msg)
            finished += 1
            continue
        except Exception as exc:
            return finished, (msg, None, exc)
        return finished, (msg, coro, first)
    return finished, None


class Resume:
    """Awaits the rest of a coroutine that ``drive`` already stepped once: hands its first yield to the
    awaiting Task, then forwards everything (results, exceptions, cancellation) to the coroutine."""

    __slots__ = ("_coro", "_first", "_started")

    def __init__(self, coro: Any, first: Any) -> None:
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
