"""Commits: asynchronous every interval, failed ones sent again, a synchronous one at the end.

Only the tracker's safe offsets are committed, so no commit passes a message that was not handled. A
partition's committed offset never goes backwards: a failed commit is sent again only while nothing newer
was sent (that one's result decides), and the ``committed`` the stats report moves only on a successful
result, and only forward.

Each commit carries, in its metadata, the offsets above the committed one that are handled already
(``fastconsumer/offsetmap.py``), so that a member that gets the partition next (after a crash, or a revoke
that ran out of time) skips them; a partition whose handled offsets grow while its committed offset is
held back by a slow message is committed again for them. Metadata that would not fit the broker's
``offset.metadata.max.bytes`` is left out (and counted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from confluent_kafka import KafkaException, TopicPartition

from fastconsumer import offsetmap
from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.sources.base import Source

if TYPE_CHECKING:
    from fastconsumer._core_py import OffsetTracker

log = logging.getLogger("fastconsumer")

#: Seconds the final commit may take, its tries included. A synchronous commit in librdkafka waits for the
#: group's coordinator without a bound (confluentinc/confluent-kafka-python#1801, open): seen to hang a stop
#: for minutes after a broker restart, and for good on a broker that stopped answering.
FINAL_COMMIT_S = 30.0


class Committer:
    def __init__(self, source: Source, tracker: OffsetTracker, stats: Stats, interval: float) -> None:
        self.source = source
        self.tracker = tracker
        self.stats = stats
        self.interval = interval
        self._resend: dict[Partition, int] = {}  # offsets whose asynchronous commit failed
        self._sent: dict[Partition, int] = {}  # the highest offset sent asynchronously
        self._noted: dict[Partition, tuple[int, int]] = {}  # (offset, handled above it) as last committed

    async def loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.commit()

    def commit(self) -> None:
        """Ask the source to commit every partition whose safe offset moved or that handled more above
        it, and what failed before."""
        offsets = {(t, p): o for t, p, o in self.tracker.committable()}
        gaps = self.tracker.frontiers()  # partitions with handled offsets above the safe one
        if gaps:
            safe = {(t, p): o for t, p, o in self.tracker.positions()}
            for t, p, _ in gaps:
                offsets.setdefault((t, p), safe[(t, p)])
        if self._resend:  # failed commits are sent again, unless the tracker has a newer offset
            owned = set(self.tracker.partitions())
            for key, offset in self._resend.items():
                if key in owned:
                    offsets.setdefault(key, offset)
            self._resend.clear()
        ahead = self.with_metadata(offsets.items())
        if ahead:
            sent = self._sent
            for tp in ahead:
                key = (tp.topic, tp.partition)
                if tp.offset > sent.get(key, -1):
                    sent[key] = tp.offset
            self.source.commit(ahead)

    def with_metadata(self, offsets: Iterable[tuple[Partition, int]]) -> list[TopicPartition]:
        """The offsets to commit, each with the handled offsets above it as metadata; those neither ahead of
        the committed offset nor with more handled above it than last time are left out."""
        committed = self.stats.committed
        noted = self._noted
        out = []
        for (t, p), o in offsets:
            done = self.tracker.done(t, p)
            if o < committed.get((t, p), -1) or (
                o == committed.get((t, p), -1) and noted.get((t, p), (o, 0)) >= (o, len(done))
            ):
                continue
            metadata = offsetmap.encode(o, done) if done else ""
            if metadata is None:
                self.stats.metadata_dropped += 1
                metadata = ""
            noted[(t, p)] = (o, len(done))
            out.append(TopicPartition(t, p, o, metadata=metadata))
        return out

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
            # Not once a newer offset was sent: it would land after that one and take the group's offset
            # back. The newer one's own result decides.
            if key in owned and committed.get(key, -1) < tp.offset >= self._sent.get(key, -1):
                self._resend[key] = max(tp.offset, self._resend.get(key, -1))
        log.warning(
            "commit of %s failed; sending it again with the next one: %s",
            ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in failed),
            error or next(tp.error for tp in failed if tp.error is not None),
        )

    async def commit_sync(self, attempts: int = 5) -> None:
        """Commit the tracker's safe offsets and wait; a broker that is restarting gets a few tries with
        backoff before this fails, and all of them ``FINAL_COMMIT_S`` at most. A partition lost between
        tries is left out: it is not ours to commit, and its next owner may be past it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + FINAL_COMMIT_S
        pending = self.with_metadata(((t, p), o) for t, p, o in self.tracker.positions())
        for attempt in range(1, attempts + 1):
            owned = set(self.tracker.partitions())
            pending = [tp for tp in pending if (tp.topic, tp.partition) in owned]
            if not pending:
                return
            try:
                done = await asyncio.wait_for(self.source.commit_sync(pending), deadline - loop.time())
                break
            except asyncio.TimeoutError:
                self.stats.commit_failures += 1
                raise TimeoutError(
                    f"not answered within {FINAL_COMMIT_S:g} s (is the group's coordinator reachable?); "
                    "what was handled since the last commit will be delivered again"
                ) from None
            except Exception as exc:
                self.stats.commit_failures += 1
                backoff = 0.5 * 2 ** (attempt - 1)
                if attempt == attempts or loop.time() + backoff >= deadline:
                    raise
                log.warning("final commit failed (attempt %d of %d), retrying: %s", attempt, attempts, exc)
                await asyncio.sleep(backoff)
        self._committed(done)

    def forget(self, partitions: Iterable[Partition]) -> None:
        """Revoked partitions: no failed commit of theirs is sent again (the revoke's commit is newer)."""
        for key in partitions:
            self._resend.pop(key, None)
            self._noted.pop(key, None)
            self._sent.pop(key, None)

    def reset(self, partitions: Iterable[Partition]) -> None:
        """Lost partitions, and ones whose offsets restarted lower: what was committed is not known."""
        keys = list(partitions)
        self.forget(keys)
        for key in keys:
            self.stats.committed.pop(key, None)

    def _committed(self, offsets: Iterable[TopicPartition]) -> None:
        committed = self.stats.committed
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if tp.offset > committed.get(key, -1):
                committed[key] = tp.offset
            if self._resend.get(key, -1) <= tp.offset:
                self._resend.pop(key, None)
