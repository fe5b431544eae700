"""Commits: asynchronous every interval, failed ones sent again, a synchronous one at the end.

Only the tracker's safe offsets are committed, so no commit passes a message that was not handled. A
partition's committed offset never goes backwards: a failed commit is sent again only while nothing newer
succeeded, and the ``committed`` the stats report moves only on a successful result, and only forward.
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
        if self._resend:  # failed commits are sent again, unless the tracker has a newer offset
            owned = set(self.tracker.partitions())
            for key, offset in self._resend.items():
                if key in owned:
                    offsets.setdefault(key, offset)
            self._resend.clear()
        committed = self.stats.committed
        ahead = [TopicPartition(t, p, o) for (t, p), o in offsets.items() if o > committed.get((t, p), -1)]
        if ahead:
            self.source.commit(ahead)

    def on_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        """A commit's result; librdkafka may fail some partitions of a commit that succeeded as a whole."""
        failed = [tp for tp in offsets if error is not None or tp.error is not None]
        self._committed(tp for tp in offsets if error is None and tp.error is None)
        if not failed:
            return
        self.stats.commit_failures += 1
        committed = self.stats.committed
        owned = set(self.tracker.partitions())
        for tp in failed:
            key = (tp.topic, tp.partition)
            if key in owned and tp.offset > committed.get(key, -1):
                self._resend[key] = max(tp.offset, self._resend.get(key, -1))
        log.warning(
            "commit of %s failed; sending it again with the next one: %s",
            ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in failed),
            error or next(tp.error for tp in failed if tp.error is not None),
        )

    async def commit_sync(self, positions: Iterable[Position], attempts: int = 5) -> None:
        """Commit and wait; a broker that is restarting gets a few tries with backoff before this fails."""
        committed = self.stats.committed
        pending = [TopicPartition(t, p, o) for t, p, o in positions if o > committed.get((t, p), -1)]
        if not pending:
            return
        for attempt in range(1, attempts + 1):
            try:
                done = await self.source.commit_sync(pending)
                break
            except Exception as exc:
                self.stats.commit_failures += 1
                if attempt == attempts:
                    raise
                log.warning("final commit failed (attempt %d of %d), retrying: %s", attempt, attempts, exc)
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        self._committed(done)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Revoked partitions: no failed commit of theirs is sent again (the revoke's commit is newer)."""
        for key in partitions:
            self._resend.pop(key, None)

    def reset(self, partitions: Iterable[Partition]) -> None:
        """Lost partitions, and ones whose offsets restarted lower: what was committed is not known."""
        for key in partitions:
            self._resend.pop(key, None)
            self.stats.committed.pop(key, None)

    def _committed(self, offsets: Iterable[TopicPartition]) -> None:
        committed = self.stats.committed
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if tp.offset > committed.get(key, -1):
                committed[key] = tp.offset
            if self._resend.get(key, -1) <= tp.offset:
                self._resend.pop(key, None)
