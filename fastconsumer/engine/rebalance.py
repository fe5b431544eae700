"""What the engine does when a source takes partitions away or reports a commit: the source's listener."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, TopicPartition

from fastconsumer.engine.commits import Committer
from fastconsumer.engine.dispatch import CLOSING, Dispatcher
from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.sources.base import SourceListener

if TYPE_CHECKING:
    from fastconsumer._core_py import OffsetTracker, Scheduler

log = logging.getLogger("fastconsumer")


class Rebalance(SourceListener):
    """A revoke stops handing out the partitions' messages, lets their running handlers finish (for at most
    ``timeout``), forgets them, and gives the source their safe offsets to commit before they go."""

    def __init__(
        self,
        scheduler: Scheduler,
        tracker: OffsetTracker,
        dispatcher: Dispatcher,
        committer: Committer,
        stats: Stats,
        timeout: float,
    ) -> None:
        self.scheduler = scheduler
        self.tracker = tracker
        self.dispatcher = dispatcher
        self.committer = committer
        self.stats = stats
        self.timeout = timeout
        self._revoking: set[Partition] = set()
        self._handled = asyncio.Event()  # set after messages are handled while a revoke waits
        dispatcher.watch(self._watch)

    def on_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        self.committer.on_commit(offsets, error)

    async def on_revoke(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        queued = {key: self.scheduler.drop(*key) for key in keys}
        self._revoking.update(keys)
        self.dispatcher.attention = True
        try:
            # Once the workers are gone (the run is closing) no handler can still be running; a failed or
            # abandoned message stays unacked for good, so waiting for it would only wait out the timeout.
            if self.dispatcher.phase is not CLOSING:
                waited = asyncio.ensure_future(self._until_handled(queued))
                done, _ = await asyncio.wait([waited], timeout=self.timeout)
                if not done:
                    waited.cancel()
                    log.warning(
                        "revoke: handlers still running after %ss; their messages go back", self.timeout
                    )
        finally:
            self._revoking.difference_update(keys)
        committed = self.stats.committed
        offsets = [
            TopicPartition(t, p, o)
            for t, p, o in self.tracker.positions()
            if (t, p) in queued and committed.get((t, p)) != o
        ]
        for key in keys:
            self.tracker.drop(*key)
        return offsets  # the source commits them and reports the result to on_commit

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions]
        for key in keys:
            self.scheduler.drop(*key)
            self.tracker.drop(*key)
        self.committer.forget(keys)

    async def _until_handled(self, queued: dict[Partition, int]) -> None:
        while any(self.tracker.pending(*key) > n for key, n in queued.items()):
            self._handled.clear()
            await self._handled.wait()

    def _watch(self) -> bool:
        if self._revoking:
            self._handled.set()
            return True
        return False
