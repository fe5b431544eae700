"""The contract every source keeps (``fastconsumer.sources.Source``), run against each source: the memory
source and a real Kafka broker. A new source gets these tests by adding a subclass of ``SourceContract``."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from confluent_kafka import KafkaException, TopicPartition

from fastconsumer.sources import KafkaSource, MemoryLog, MemorySource, Source, SourceListener

MESSAGES = 300
PARTITIONS = 3
WAIT = 60.0


class Listener(SourceListener):
    """Records what the source reports."""

    def __init__(self) -> None:
        self.commits: list[tuple[list[TopicPartition], KafkaException | None]] = []
        self.committed = asyncio.Event()
        self.assigned: list[list[TopicPartition]] = []

    def on_commit(self, offsets, error):
        self.commits.append((offsets, error))
        self.committed.set()

    def on_assign(self, committed):
        self.assigned.append(committed)

    async def on_revoke(self, partitions):
        return []

    def on_lost(self, partitions):
        pass


async def fetch_all(source: Source, n: int, batch: int = 64) -> list:
    """Fetch until ``n`` messages arrived (or the wait ran out)."""
    out: list = []
    deadline = time.monotonic() + WAIT
    while len(out) < n and time.monotonic() < deadline:
        out.extend(await source.fetch(batch, batch))
    return out


class SourceContract:
    """``make(group)`` returns a new, unopened source reading the same ``MESSAGES`` messages over
    ``PARTITIONS`` partitions of ``self.topic`` as a member of ``group``."""

    topic: str

    def make(self, group: str) -> Source:
        raise NotImplementedError

    def ends(self) -> dict[int, int]:
        """Messages per partition."""
        raise NotImplementedError

    def group(self) -> str:
        return f"contract-{uuid.uuid4().hex[:8]}"

    def test_describes_itself(self):
        source = self.make(self.group())
        assert isinstance(source, Source)
        assert source.name and isinstance(source.name, str)
        assert isinstance(source.describe(), str) and source.describe()
        assert source.assignment() == set()  # not open: owns nothing

    def test_fetches_every_message_once_in_offset_order_per_partition_then_is_at_end(self):
        async def main():
            source = self.make(self.group())
            await source.open(Listener())
            try:
                messages = await fetch_all(source, MESSAGES)
                deadline = time.monotonic() + WAIT
                while not source.at_end() and time.monotonic() < deadline:
                    assert await source.fetch(64) == []  # nothing beyond the end
                assert source.at_end()
                assert source.assignment() == {(self.topic, p) for p in range(PARTITIONS)}
            finally:
                await source.close()
            assert source.assignment() == set()
            return messages

        messages = asyncio.run(main())
        assert len(messages) == MESSAGES
        per_partition: dict[int, list[int]] = {}
        for msg in messages:
            assert msg.topic() == self.topic and msg.error() is None
            per_partition.setdefault(msg.partition(), []).append(msg.offset())
        assert sorted(per_partition) == list(range(PARTITIONS))
        for offsets in per_partition.values():
            assert offsets == list(range(len(offsets)))  # from the start, in order, no gaps, no repeats

    def test_commits_reach_the_listener_and_a_new_member_resumes_there(self):
        group = self.group()

        async def first_member():
            source, listener = self.make(group), Listener()
            await source.open(listener)
            try:
                messages = await fetch_all(source, MESSAGES)
                tops = {}
                for msg in messages:
                    tops[msg.partition()] = max(tops.get(msg.partition(), -1), msg.offset())
                offsets = [TopicPartition(self.topic, 0, 10), TopicPartition(self.topic, 1, 20)]
                source.commit(offsets)
                await asyncio.wait_for(listener.committed.wait(), WAIT)
                assert [(tp.partition, tp.offset) for tp in listener.commits[0][0]] == [(0, 10), (1, 20)]
                assert listener.commits[0][1] is None
                await source.commit_sync([TopicPartition(self.topic, 2, tops[2] + 1)])
                assert source.stats.commits == 2
            finally:
                await source.close()
            return tops

        async def second_member(left: int):
            source = self.make(group)
            await source.open(Listener())
            try:
                return await fetch_all(source, left)
            finally:
                await source.close()

        tops = asyncio.run(first_member())
        left = (tops[0] + 1 - 10) + (tops[1] + 1 - 20)  # partition 2 was committed at its end
        resumed = asyncio.run(second_member(left))
        assert len(resumed) == left
        firsts = {}
        for msg in resumed:
            firsts.setdefault(msg.partition(), msg.offset())
        assert firsts == {0: 10, 1: 20}  # partition 2 was committed at its end: nothing left there

    def test_a_paused_partition_delivers_nothing_until_resumed_then_goes_on_where_it_stopped(self):
        """What the engine's fair look-ahead relies on: pausing one partition holds back its messages (those
        fetched ahead already too) while the others flow; resuming goes on with it without gap or repeat."""
        ends = self.ends()
        others = sum(n for p, n in ends.items() if p != 0)

        async def main():
            source = self.make(self.group())
            await source.open(Listener())
            try:
                before = await fetch_all(source, 1, batch=1)  # joined the group, fetching ahead
                source.pause([(self.topic, 0), ("not-a-topic-of-this-member", 0)])  # the second: ignored
                during: list = []
                deadline = time.monotonic() + WAIT
                while sum(m.partition() != 0 for m in before + during) < others:
                    assert time.monotonic() < deadline, "the partitions not paused stopped flowing"
                    during += await source.fetch(64, 64)
                source.resume([(self.topic, 0)])
                after = await fetch_all(source, MESSAGES - len(before) - len(during))
            finally:
                await source.close()
            return before, during, after

        before, during, after = asyncio.run(main())
        assert [m for m in during if m.partition() == 0] == []
        per_partition: dict[int, list[int]] = {}
        for msg in before + during + after:
            per_partition.setdefault(msg.partition(), []).append(msg.offset())
        assert {p: len(offsets) for p, offsets in per_partition.items()} == ends
        for offsets in per_partition.values():
            assert offsets == list(range(len(offsets)))  # in order, no gaps, no repeats

    def test_watermarks_give_each_partitions_end(self):
        async def main():
            source = self.make(self.group())
            source.enable_statistics(100)
            await source.open(Listener())
            try:
                ends = {}
                deadline = time.monotonic() + WAIT
                while time.monotonic() < deadline:
                    await source.fetch(64, 64)  # joins the group, gets the assignment
                    marks = source.watermarks()
                    ends = {key: w.end for key, w in marks.items()}
                    if len(ends) == PARTITIONS and None not in ends.values():
                        break
                return ends
            finally:
                await source.close()

        ends = asyncio.run(main())
        assert set(ends) == {(self.topic, p) for p in range(PARTITIONS)}
        assert sum(ends.values()) == MESSAGES


class TestMemorySource(SourceContract):
    topic = "contract"

    @pytest.fixture(autouse=True)
    def _log(self):
        self.log = MemoryLog(topic=self.topic, partitions=PARTITIONS, count=MESSAGES)

    def make(self, group):
        return MemorySource(self.log, group=group)

    def ends(self):
        return {p: self.log.end_offset(p) for p in range(PARTITIONS)}


class TestMemorySourceInRuns(TestMemorySource):
    """The memory source handing out runs of one partition at a time, as librdkafka does."""

    def make(self, group):
        return MemorySource(self.log, group=group, run_length=7)


class TestKafkaSource(SourceContract):
    @pytest.fixture(autouse=True)
    def _topic(self, kafka_bootstrap):
        from fastconsumer.produce import produce
        from tests.kafka_helpers import create_topic, delete_topic

        self.bootstrap = kafka_bootstrap
        self.topic = f"contract-{uuid.uuid4().hex}"
        create_topic(kafka_bootstrap, self.topic, partitions=PARTITIONS)
        produce(kafka_bootstrap, self.topic, MESSAGES, keys=30)
        yield
        delete_topic(kafka_bootstrap, self.topic)

    def ends(self):
        from tests.kafka_helpers import end_offsets

        return {p: n for p, n in end_offsets(self.bootstrap, self.topic).items() if n}

    def make(self, group):
        config = {"heartbeat.interval.ms": 250, "session.timeout.ms": 6000}
        return KafkaSource(self.bootstrap, [self.topic], group, config=config, from_beginning=True)
