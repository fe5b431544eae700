"""Commits: asynchronous every interval, failed ones sent again, a synchronous one at the end.

Only the tracker's safe offsets are committed, so no commit passes a message that was not handled; the
``committed`` the stats report is updated from successful results only.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, TopicPartition

from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.sources.base import Source

if TYPE_CHECKING:
    from fastconsumer._core_py import OffsetTracker

log = logging.getLogger("fastconsumer")

Position = tuple[str, int, int]


class Committer:
    def __init__(self, source: Source, tracker: OffsetTracker, stats: Stats, interval: float) -> None:
        self.source = source
        self.tracker = tracker
        self.stats = stats
        self.interval = interval
        self._resend: dict[Partition, int] = {}  # offsets whose asynchronous commit failed

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.commit()

    def commit(self) -> None:
        """Ask the source to commit every partition whose safe offset moved, and what failed before."""
        offsets = {(t, p): o for t, p, o in self.tracker.committable()}
        if self._resend:  # failed commits are sent again, never skipped
            owned = set(self.tracker.partitions())
            for key, offset in self._resend.items():
                if key in owned:
                    offsets.setdefault(key, offset)
            self._resend.clear()
        if offsets:
            self.source.commit([TopicPartition(t, p, o) for (t, p), o in offsets.items()])

    def on_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        committed = self.stats.committed
        if error is None:
            for tp in offsets:
                committed[(tp.topic, tp.partition)] = tp.offset
            return
        self.stats.commit_failures += 1
        log.warning("asynchronous commit failed; sending it again with the next one: %s", error)
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if tp.offset > committed.get(key, -1):
                self._resend[key] = max(tp.offset, self._resend.get(key, -1))

    async def commit_sync(self, positions: Iterable[Position], attempts: int = 5) -> None:
        """Commit and wait; a broker that is restarting gets a few tries with backoff before this fails."""
        committed = self.stats.committed
        pending = [(t, p, o) for t, p, o in positions if committed.get((t, p)) != o]
        if not pending:
            return
        offsets = [TopicPartition(t, p, o) for t, p, o in pending]
        for attempt in range(1, attempts + 1):
            try:
                await self.source.commit_sync(offsets)
                break
            except Exception as exc:
                self.stats.commit_failures += 1
                if attempt == attempts:
                    raise
                log.warning("final commit failed (attempt %d of %d), retrying: %s", attempt, attempts, exc)
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        for t, p, o in pending:
            committed[(t, p)] = o

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Partitions lost without a commit: what was committed for them is no longer known."""
        for key in partitions:
            self.stats.committed.pop(key, None)
            self._resend.pop(key, None)
