"""How far ahead the engine fetches, and from which partitions.

Fair: librdkafka hands ``consume()`` long runs of one partition (a fetch response each), so a look-ahead
filled first come, first served holds one partition's keys and leaves handler slots idle. Here, once the
look-ahead is full, under partition ordering, and under key ordering while handler slots sit idle behind
busy keys, each assigned partition may hold (fetched and not yet handled) its share of it,
``limit / partitions``: one that holds more is paused at the source while the others keep flowing, and
resumed once it is down to half its share, or once the look-ahead is half empty (the others had nothing to
fetch). Work from every partition with messages is then there for the scheduler, and a partition alone
with messages still uses the whole look-ahead. Under key ordering with every slot busy nothing is paused:
one partition's keys are enough then, and the pauses cost (in the sweep, 1,000 keys over 4 partitions ran
at 0.74 of its ideal with them, 0.90 without); a partition's messages then wait at most for the runs
fetched before them, as under unordered.

Adaptive: while handler slots sit idle with nothing runnable although the look-ahead is what stops fetching
(the engine is full, or partitions are paused) because the ordering blocks what is held (few keys, a hot
key, a slow partition), the look-ahead doubles, as Parallel Consumer loads more when its workers starve. It
grows up to ``max_buffered`` messages and ``max_buffered_bytes`` (messages held times their mean size,
sampled from each batch), and never shrinks within a run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from confluent_kafka import Message

from fastconsumer.engine.settings import Settings
from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.sources.base import Source

if TYPE_CHECKING:
    from fastconsumer._core_py import OffsetTracker, Scheduler

log = logging.getLogger("fastconsumer")

#: Messages of each fetched batch whose size is read for the mean: a sample, off the per-message path.
SAMPLE = 8
#: Weight of a new batch's mean size in the running mean.
SIZE_WEIGHT = 0.25
#: Messages handled between two looks at the paused partitions and the idle slots, at most.
LOOK_EVERY = 16


class LookAhead:
    def __init__(
        self, source: Source, scheduler: Scheduler, tracker: OffsetTracker, stats: Stats, settings: Settings
    ) -> None:
        self.source = source
        self.scheduler = scheduler
        self.tracker = tracker
        self.stats = stats
        self.concurrency = settings.concurrency
        self.batch_size = settings.batch_size
        self.partition_ordering = settings.ordering == "partition"
        # Shares matter where lanes do: unordered, any message held can run, and a partition's messages wait
        # at most for the runs fetched before them.
        self.fair = settings.ordering != "unordered"
        self.limit = settings.lookahead  # messages held at most now: buffered and in flight
        self.step = self._step()  # the fewest messages worth a fetch: a batch, or less under a small limit
        self.max_messages = settings.cap
        self.max_bytes = settings.max_buffered_bytes
        self.window = settings.window
        self.mean_size = 0.0  # bytes of key and value, of the messages fetched lately
        self.paused: set[Partition] = set()
        self._share = self.limit
        stats.lookahead = self.limit
        self._may_grow = True  # once per fetch that delivered: a look at what the growth let in
        self._next_look = 0  # stats.handled at the next look

    # -- what the fetcher asks

    def room(self) -> int:
        """Messages the fetcher may fetch now."""
        held = len(self.scheduler) + self.stats.in_flight
        return min(self.limit - held, self.window - self.tracker.window())

    def fetched(self, messages: list[Message]) -> None:
        """After a batch is tracked: note its sizes and, once the look-ahead is full, pause the partitions
        over their share (while there is room, one partition may use the others' share: they have none to
        fetch)."""
        self._note_sizes(messages)
        self._may_grow = True
        if not self.fair or len(self.scheduler) + self.stats.in_flight < self.limit - self.step:
            return
        if not self.partition_ordering and not self._blocked():
            return  # key ordering with every slot busy: one partition's keys are enough, pausing costs
        share = self._share = self._share_now()
        pending = self.tracker.pending
        paused = self.paused
        over = [key for key in self.tracker.partitions() if key not in paused and pending(*key) > share]
        if over:
            paused.update(over)
            self.stats.paused = len(paused)
            self.source.pause(over)

    def check(self) -> None:
        """After messages are handled (while something is paused or the fetcher waits) and after an empty
        fetch: resume partitions down to half their share (all of them once the look-ahead is half empty:
        the others had nothing to take their place), and grow the look-ahead if handler slots starve.
        Looks once every few messages handled, not after each."""
        handled = self.stats.handled
        if handled < self._next_look:
            return
        self._next_look = handled + min(LOOK_EVERY, self._share // 8)
        self.look()

    def look(self) -> None:
        """``check()`` now: after an empty fetch, when nothing may be handled for a while."""
        if self._starving():
            self._grow()
        if self.paused:
            half = self._share // 2
            pending = self.tracker.pending
            if len(self.scheduler) + self.stats.in_flight <= self.limit // 2:
                down = list(self.paused)
            else:  # a partition that left has 0 pending: the source ignores its resume
                down = [key for key in self.paused if pending(*key) <= half]
            if down:
                self.paused.difference_update(down)
                self.stats.paused = len(self.paused)
                self.source.resume(down)

    # -- how

    def _share_now(self) -> int:
        return max(self.step, self.limit // max(1, len(self.source.assignment())))

    def _note_sizes(self, messages: list[Message]) -> None:
        if not messages:
            return
        step = max(1, len(messages) // SAMPLE)
        sample = messages[::step]
        size = 0
        for msg in sample:
            key, value = msg.key(), msg.value()
            size += (len(key) if key else 0) + (len(value) if value else 0)
        mean = size / len(sample)
        old = self.mean_size
        self.mean_size = old + SIZE_WEIGHT * (mean - old) if old else mean
        if self.mean_size * self.limit > self.max_bytes:
            self._set_limit(max(1, int(self.max_bytes / self.mean_size)))

    def _starving(self) -> bool:
        if not self._may_grow or self.limit >= self.max_messages:
            return False
        if not self._blocked():
            return False
        stats = self.stats
        scheduler = self.scheduler
        if self.paused:
            if self.partition_ordering:  # more of a partition that has work makes no more lanes
                pending = self.tracker.pending
                busy = sum(1 for key in self.tracker.partitions() if pending(*key))
                return busy < len(self.source.assignment())
            return True
        return len(scheduler) + stats.in_flight > self.limit - self.batch_size  # full

    def _blocked(self) -> bool:
        """Handler slots idle while messages wait behind busy lanes: the ordering holds them back."""
        ready = self.scheduler.ready()
        return self.stats.in_flight + ready < self.concurrency and len(self.scheduler) > ready

    def _grow(self) -> None:
        limit = min(2 * self.limit, self.max_messages)
        if self.mean_size:
            limit = min(limit, max(1, int(self.max_bytes / self.mean_size)))
        if limit <= self.limit:
            return
        log.debug("handler slots idle behind the ordering: look-ahead %d -> %d messages", self.limit, limit)
        self._set_limit(limit)
        self._may_grow = False

    def _set_limit(self, limit: int) -> None:
        self.limit = self.stats.lookahead = limit
        self.step = self._step()
        self._share = self._share_now()

    def _step(self) -> int:
        return min(self.batch_size, max(1, self.limit // 4))
