"""The built-in memory source: a partitioned log with consumer groups, for demos, tests and benchmarks.

Messages are made on demand, so an endless log costs no memory; committed offsets are kept per group, so a
new consumer in the same group resumes where the last one committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Collection

from confluent_kafka import Message, TopicPartition

from fastconsumer.sources.base import Partition, Source, SourceListener, Watermarks

TIMESTAMP_CREATE_TIME = 1


JSON_PAYLOAD = b'{"foo": "foo%d", "bar": "bar%d"}'


def json_payload(index: int) -> bytes:
    """The demo payload: ``{"foo": "foo<i>", "bar": "bar<i>"}``, what ``produce`` writes to Kafka too."""
    return JSON_PAYLOAD % (index, index)


class MemoryLog:
    """One topic of ``partitions`` partitions holding ``count`` messages in all, or endless when None.

    Message ``index = offset * partitions + partition`` is unique across the log. Each of the ``keys``
    distinct keys lives in exactly one partition, as a key-hashing producer would place it; ``keys=0`` gives
    null keys.
    """

    def __init__(
        self,
        topic: str = "foo",
        partitions: int = 3,
        count: int | None = None,
        keys: int = 1024,
        payload: Callable[[int], bytes] = json_payload,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        if count is not None and count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        if keys < 0:
            raise ValueError(f"keys must be >= 0, got {keys}")
        self.topic = topic
        self.partitions = partitions
        self.count = count
        self.payload = payload
        # keys of partition p: p, p + partitions, p + 2 * partitions, ... below ``keys``
        self._keys = [[b"key-%d" % k for k in range(p, keys, partitions)] for p in range(partitions)]
        self._committed: dict[str, dict[int, int]] = {}
        self._metadata: dict[str, dict[int, str]] = {}

    def end_offset(self, partition: int) -> int | None:
        """One past the last offset of a partition, None when endless."""
        if self.count is None:
            return None
        return self.count // self.partitions + (partition < self.count % self.partitions)

    def message(self, partition: int, offset: int, timestamp_ms: int = 0) -> Message:
        return self.messages(partition, offset, offset + 1, timestamp_ms)[0]

    def messages(self, partition: int, start: int, end: int, timestamp_ms: int = 0) -> list[Message]:
        """Messages ``start`` to ``end - 1`` of a partition, made in one go: this runs once per message."""
        topic, n = self.topic, self.partitions
        keys = self._keys[partition]
        n_keys = len(keys)
        timestamp = (TIMESTAMP_CREATE_TIME, timestamp_ms)
        payload = self.payload
        # Positional arguments to Message(): four times faster than keywords.
        # (topic, partition, offset, key, value, headers, error, timestamp)
        if payload is json_payload:
            return [
                Message(
                    topic,
                    partition,
                    o,
                    keys[o % n_keys] if n_keys else None,
                    JSON_PAYLOAD % (o * n + partition, o * n + partition),  # json_payload(), inlined
                    None,
                    None,
                    timestamp,
                )
                for o in range(start, end)
            ]
        return [
            Message(
                topic,
                partition,
                o,
                keys[o % n_keys] if n_keys else None,
                payload(o * n + partition),
                None,
                None,
                timestamp,
            )
            for o in range(start, end)
        ]

    def committed(self, group: str) -> dict[int, int]:
        """The group's committed offset per partition (partitions never committed are absent)."""
        return dict(self._committed.get(group, {}))

    def committed_metadata(self, group: str) -> dict[int, str]:
        """The metadata of the group's last commit per partition, where it had some."""
        return {p: m for p, m in self._metadata.get(group, {}).items() if m}

    def commit(self, group: str, offsets: list[TopicPartition]) -> None:
        committed = self._committed.setdefault(group, {})
        metadata = self._metadata.setdefault(group, {})
        for tp in offsets:
            if tp.topic != self.topic:
                raise ValueError(f"commit for unknown topic {tp.topic!r} (this log holds {self.topic!r})")
            committed[tp.partition] = tp.offset
            metadata[tp.partition] = tp.metadata or ""


class MemorySource(Source):
    """A consumer-group member of a ``MemoryLog`` that owns all its partitions while open.

    ``run_length``: 0 spreads each fetch evenly over the partitions; ``n`` hands out runs of ``n`` messages
    of one partition, one partition after another, the way librdkafka's ``consume()`` hands out a fetch
    response per partition (up to ``max.partition.fetch.bytes``, 1 MiB: about 10,000 messages of 100 bytes).
    """

    name = "memory"

    def __init__(
        self,
        log: MemoryLog | None = None,
        group: str = "fastconsumer",
        idle_wait: float = 0.05,
        run_length: int = 0,
    ) -> None:
        super().__init__()
        if run_length < 0:
            raise ValueError(f"run_length must be >= 0, got {run_length}")
        self.log = log if log is not None else MemoryLog()
        self.group = group
        self.idle_wait = idle_wait
        self.run_length = run_length
        self._positions: list[int] = []
        self._next = 0
        self._in_run = 0  # messages of partition ``_next`` handed out in its current run
        self._paused: set[int] = set()
        self._listener: SourceListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def describe(self) -> str:
        size = "endless" if self.log.count is None else f"{self.log.count} messages"
        return (
            f"the memory source ({size}, {self.log.partitions} partitions; --bootstrap-servers reads Kafka)"
        )

    async def open(self, listener: SourceListener) -> None:
        self._listener = listener
        self._loop = asyncio.get_running_loop()
        committed = self.log.committed(self.group)
        self._positions = [committed.get(p, 0) for p in range(self.log.partitions)]
        metadata = self.log.committed_metadata(self.group)
        listener.on_assign(
            [
                TopicPartition(self.log.topic, p, committed.get(p, -1001), metadata=metadata.get(p, ""))
                for p in range(self.log.partitions)
            ]
        )

    async def fetch(self, max_messages: int, prefetch: int = 0) -> list[Message]:
        now_ms = int(time.time() * 1000)
        if self.run_length:
            out = self._run(max_messages, now_ms)
        else:
            out = self._spread(max_messages, now_ms)
        if not out:
            await asyncio.sleep(self.idle_wait)  # like consume(timeout): nothing will arrive sooner
        return out

    def _spread(self, max_messages: int, now_ms: int) -> list[Message]:
        log = self.log
        n = log.partitions
        share = -(-max_messages // n)
        out: list[Message] = []
        for k in range(n):
            p = (self._next + k) % n
            if p in self._paused:
                continue
            start = self._positions[p]
            end = self._end(p, start + min(share, max_messages - len(out)))
            if end > start:
                out.extend(log.messages(p, start, end, now_ms))
                self._positions[p] = end
            if len(out) >= max_messages:
                break
        self._next = (self._next + 1) % n
        return out

    def _run(self, max_messages: int, now_ms: int) -> list[Message]:
        n = self.log.partitions
        out: list[Message] = []
        passed = 0  # partitions passed over in a row for having nothing (or being paused)
        while len(out) < max_messages and passed < n:
            p = self._next
            start = self._positions[p]
            end = self._end(p, start + min(max_messages - len(out), self.run_length - self._in_run))
            if end > start and p not in self._paused:
                out.extend(self.log.messages(p, start, end, now_ms))
                self._positions[p] = end
                self._in_run += end - start
                passed = 0
                if self._in_run < self.run_length:
                    continue
            else:
                passed += 1
            self._next = (p + 1) % n
            self._in_run = 0
        return out

    def _end(self, partition: int, end: int) -> int:
        limit = self.log.end_offset(partition)
        return end if limit is None or end <= limit else limit

    def pause(self, partitions: Collection[Partition]) -> None:
        self._paused.update(p for t, p in partitions if t == self.log.topic)

    def resume(self, partitions: Collection[Partition]) -> None:
        self._paused.difference_update(p for t, p in partitions if t == self.log.topic)

    def commit(self, offsets: list[TopicPartition]) -> None:
        self.log.commit(self.group, offsets)
        self.stats.commits += 1
        assert self._loop is not None and self._listener is not None
        self._loop.call_soon(self._listener.on_commit, offsets, None)

    async def commit_sync(self, offsets: list[TopicPartition]) -> list[TopicPartition]:
        owned = self.assignment()
        offsets = [tp for tp in offsets if (tp.topic, tp.partition) in owned]
        self.log.commit(self.group, offsets)
        self.stats.commits += 1
        return offsets

    def at_end(self) -> bool:
        ends = [self.log.end_offset(p) for p in range(len(self._positions))]
        return all(end is not None and pos >= end for pos, end in zip(self._positions, ends, strict=True))

    async def close(self) -> None:
        self._listener = None
        self._paused.clear()

    def assignment(self) -> set[Partition]:
        if self._listener is None:
            return set()
        return {(self.log.topic, p) for p in range(self.log.partitions)}

    def watermarks(self) -> dict[Partition, Watermarks]:
        committed = self.log.committed(self.group)
        return {
            (topic, p): Watermarks(committed.get(p, 0), self.log.end_offset(p))
            for topic, p in self.assignment()
        }
