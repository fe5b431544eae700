"""Fetching with back-pressure: messages held (buffered and in flight) stay under the look-ahead
(``lookahead.py``: fair per partition, growing while handler slots starve), and the offsets tracked (the
uncommitted window, handled ones above a stuck message included) under the engine's window.

At either limit the fetch loop waits until the workers have made a batch of room; the source keeps its
group membership meanwhile (the Kafka source pauses its partitions but goes on polling). A partition whose
offsets go backwards (an offset reset, a re-created topic) starts over, with a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import Message

from fastconsumer.engine.dispatch import RUNNING, Dispatcher
from fastconsumer.engine.lookahead import LookAhead
from fastconsumer.engine.settings import Settings
from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.sources.base import Source

if TYPE_CHECKING:
    from fastconsumer._core_py import OffsetTracker, Scheduler

log = logging.getLogger("fastconsumer")


class Fetcher:
    def __init__(
        self,
        source: Source,
        scheduler: Scheduler,
        tracker: OffsetTracker,
        dispatcher: Dispatcher,
        stats: Stats,
        settings: Settings,
        stop: Callable[[], None],
        restarted: Callable[[list[Partition]], None],
    ) -> None:
        self.source = source
        self.scheduler = scheduler
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.stats = stats
        self.batch_size = settings.batch_size
        self.concurrency = settings.concurrency
        self.ahead = LookAhead(source, scheduler, tracker, stats, settings)
        self.restarted = restarted
        self.exit_at_end = settings.exit_at_end
        self.stop = stop
        self._space = asyncio.Event()
        self._space_wanted = False
        self._at_end = False  # every partition read to its end (with exit_at_end)
        # Per partition, offsets a previous owner handled (its commit's metadata says): skipped when fetched
        self._skips: dict[Partition, set[int]] = {}
        dispatcher.watch(self._watch)

    async def loop(self) -> None:
        source = self.source
        scheduler = self.scheduler
        stats = self.stats
        dispatcher = self.dispatcher
        tracker = self.tracker
        ahead = self.ahead
        batch_size = self.batch_size
        slots = self.concurrency
        while dispatcher.phase is RUNNING:
            room = ahead.room()
            if room < ahead.step:
                self._space.clear()
                self._space_wanted = True
                dispatcher.attention = True
                await self._space.wait()
                continue
            # A batch now, and the source may fetch more ahead while it is handled. With fewer held than
            # handler slots, half the room: a round trip to the source's thread waits for the GIL while the
            # loop is busy, and batch-sized ones starved 1,024 handlers at 75k msgs/s. (Not always: the
            # thread holds the GIL while it makes the messages, which delays every handler's timers.)
            wanted = min(batch_size, room)
            if len(scheduler) < slots:
                wanted = max(wanted, room // 2)
            messages = await source.fetch(wanted, room - wanted)
            if not messages:
                ahead.look()  # the partitions not paused have nothing: maybe those that are may go on
                if self.exit_at_end and source.at_end():
                    self._at_end = True
                    dispatcher.attention = True
                    self._end_if_all_handled()
                continue
            self._at_end = False
            restarts = tracker.track_messages(messages)
            if restarts and not source.settles_messages:  # a share group redelivers lower offsets
                self._restart(restarts)
            if self._skips:
                messages = self._skip_done(messages)
                if not messages:
                    continue
            scheduler.extend(messages)
            stats.consumed += len(messages)
            ahead.fetched(messages)
            if ahead.paused:
                dispatcher.attention = True
            dispatcher.work(scheduler.ready())

    def skip(self, key: Partition, offsets: frozenset[int]) -> None:
        """When fetched, count the messages of partition ``key`` at ``offsets`` as handled (a previous owner
        handled them: its commit's metadata says so); no offsets: forget the partition's."""
        if offsets:
            self._skips[key] = set(offsets)
        else:
            self._skips.pop(key, None)

    def _skip_done(self, messages: list[Message]) -> list[Message]:
        """Of tracked ``messages``, those to handle; the others are acked at once, as handled."""
        skips = self._skips
        tracker = self.tracker
        out = []
        for msg in messages:
            key: Partition = (msg.topic(), msg.partition())  # type: ignore[assignment]
            offsets = skips.get(key)
            if offsets is not None and msg.offset() in offsets:
                offsets.discard(msg.offset())
                if not offsets:
                    del skips[key]
                tracker.ack_message(msg)
                self.stats.already_done += 1
            else:
                out.append(msg)
        return out

    def _restart(self, restarts: list[tuple[str, int, int, int]]) -> None:
        for topic, partition, last, offset in restarts:
            log.warning(
                "%s[%d]: offset %d after %d: the partition's offsets went back (reset or re-created); "
                "tracking it anew from there",
                topic,
                partition,
                offset,
                last,
            )
        # What was fetched before still runs: below the new window its acks count for nothing; above, an
        # offset the source delivers again is the same message (a seek back), and is handled either way.
        keys = [(t, p) for t, p, _, _ in restarts]
        for key in keys:  # what the metadata said was of offsets that are gone
            self._skips.pop(key, None)
        self.restarted(keys)

    def _watch(self) -> bool:
        ahead = self.ahead
        ahead.check()
        if self._space_wanted and ahead.room() >= ahead.step:
            self._space_wanted = False
            self._space.set()
        if self._at_end:
            self._end_if_all_handled()
        return self._space_wanted or self._at_end or bool(ahead.paused)

    def _end_if_all_handled(self) -> None:
        if self.stats.in_flight == 0 and len(self.scheduler) == 0 and self.dispatcher.phase is RUNNING:
            log.info("every assigned partition read to its end and handled; stopping")
            self.stop()
