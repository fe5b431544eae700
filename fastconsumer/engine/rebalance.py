"""What the engine does when a source takes partitions away or reports a commit: the source's listener."""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, Message, TopicPartition

from fastconsumer import offsetmap
from fastconsumer.engine.commits import Committer
from fastconsumer.engine.dispatch import CLOSING, Dispatcher
from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.sources.base import SourceListener

if TYPE_CHECKING:
    from fastconsumer._core_py import OffsetTracker, Scheduler

log = logging.getLogger("fastconsumer")

#: How long a revoke waits for the calls it cancelled at its deadline to unwind.
UNWIND = 1.0


class Rebalance(SourceListener):
    """A revoke stops handing out the partitions' messages (but those below each one's highest handled
    offset, which fill its gaps) and stops retrying theirs, lets their running handlers and the gap fillers
    finish for at most ``timeout`` and cancels what still runs then, forgets the partitions, and gives the
    source their safe offsets to commit before they go. Once it returns, nothing of those partitions runs
    here: what was not finished is left uncommitted for the next owner."""

    def __init__(
        self,
        scheduler: Scheduler,
        tracker: OffsetTracker,
        dispatcher: Dispatcher,
        committer: Committer,
        stats: Stats,
        timeout: float,
        revoking: set[Partition],
        revoked: asyncio.Event,
        skip: Callable[[Partition, frozenset[int]], None],
    ) -> None:
        self.scheduler = scheduler
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.committer = committer
        self.stats = stats
        self.timeout = timeout
        self.revoking = revoking  # shared with Recovery, which neither retries nor settles their messages
        self.revoked = revoked  # wakes retry backoffs when a revoke begins
        self.skip = skip  # offsets of a partition to skip when fetched: handled by a previous owner
        self._gave_up: collections.Counter[Partition] = collections.Counter()
        self._handled = asyncio.Event()  # set after messages are handled while a revoke waits
        dispatcher.watch(self._watch)
        dispatcher.on_give_up(self._give_up)

    def on_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        self.committer.on_commit(offsets, error)

    def on_assign(self, committed: list[TopicPartition]) -> None:
        """Read what the last owners' commits say they handled above the committed offset: those are
        skipped when fetched (``fetch.py``). Foreign or corrupt metadata is ignored, with a warning."""
        for tp in committed:
            if tp.offset < 0 or not tp.metadata:
                continue
            try:
                done = offsetmap.decode(tp.offset, tp.metadata)
            except offsetmap.OffsetMapError as exc:
                log.warning(
                    "%s[%d]: the committed offset's metadata is not fastconsumer's (%s): ignored; messages "
                    "handled above offset %d may be handled again",
                    tp.topic,
                    tp.partition,
                    exc,
                    tp.offset,
                )
                continue
            if done:
                log.info(
                    "%s[%d]: %d messages above the committed offset %d were handled already: skipping them",
                    tp.topic,
                    tp.partition,
                    len(done),
                    tp.offset,
                )
                self.skip((tp.topic, tp.partition), done)

    async def on_revoke(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        # As a stop does: the messages held back below a partition's highest handled (or running) offset
        # still run, so that its commit covers every message handled here and the next owner gets none of
        # them again.
        fill_to = {(t, p): f for t, p, f in self.tracker.frontiers() if (t, p) in keys}
        for key, offset in self.dispatcher.running(keys).items():
            fill_to[key] = max(fill_to.get(key, 0), offset + 1)
        queued = {key: self.scheduler.drop(*key, fill_to.get(key, 0)) for key in keys}
        self.revoking.update(keys)
        self.revoked.set()
        self.revoked.clear()
        self.dispatcher.attention = True
        try:
            # Once the workers are gone (the run is closing) no handler can still be running; a failed or
            # abandoned message stays unacked for good, so waiting for it would only wait out the timeout.
            if self.dispatcher.phase is not CLOSING and not await self._until_handled(queued, self.timeout):
                cancelled = self.dispatcher.cancel(keys)
                log.warning(
                    "revoke: %d handler call(s) still running after %ss cancelled; their messages go back",
                    cancelled,
                    self.timeout,
                )
                await self._until_handled(queued, UNWIND)
        finally:
            self.revoking.difference_update(keys)
            for key in keys:
                self._gave_up.pop(key, None)
        offsets = self.committer.with_metadata(
            ((t, p), o) for t, p, o in self.tracker.positions() if (t, p) in keys
        )
        for key in keys:
            self.tracker.drop(*key)
            self.skip(key, frozenset())
        self.committer.forget(keys)
        return offsets  # the source commits them and reports the result to on_commit

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for key in keys:
            self.scheduler.drop(*key)
            self.tracker.drop(*key)
            self.skip(key, frozenset())
        self.committer.reset(keys)

    async def _until_handled(self, queued: dict[Partition, int], timeout: float) -> bool:
        """Wait until every message of the partitions fetched and not dropped is handled or given up."""

        async def wait() -> None:
            gave_up = self._gave_up
            while any(self.tracker.pending(*key) > n + gave_up[key] for key, n in queued.items()):
                self._handled.clear()
                await self._handled.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    def _give_up(self, messages: list[Message]) -> None:
        for msg in messages:
            key = (msg.topic(), msg.partition())
            if key in self.revoking:
                self._gave_up[key] += 1
        self._handled.set()

    def _watch(self) -> bool:
        if self.revoking:
            self._handled.set()
            return True
        return False
