"""Commits say, in their metadata, which offsets above the committed one are handled already; the partition's
next owner skips them. On the memory source (both cores) and against a real broker."""

import asyncio
import logging
import time

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import Producer, TopicPartition

from fastconsumer import Consumer, MemoryLog, MemorySource, offsetmap
from fastconsumer.sources import KafkaSource
from tests.kafka_helpers import end_offsets, retrying

STUCK = 5  # partition 0's message that never finishes in the first member's run


def first_member(source, seen, stuck=STUCK):
    """Handles everything but partition 0's offset ``stuck``, which it never finishes; a stop abandons it
    after 1 s, so the final commit of partition 0 is ``stuck``, with the offsets handled above it."""

    async def handler(msg):
        if (msg.partition(), msg.offset()) == (0, stuck):
            await asyncio.Event().wait()
        seen.append((msg.partition(), msg.offset()))

    return Consumer(source, handler, concurrency=8, ordering="unordered", shutdown_timeout=1.0)


def second_member(source, seen):
    async def handler(msg):
        seen.append((msg.partition(), msg.offset()))

    return Consumer(source, handler, concurrency=8, ordering="unordered", exit_at_end=True)


def test_the_next_member_handles_only_what_was_not_handled(impl):
    log = MemoryLog(partitions=2, count=400, keys=0)
    first_seen, second_seen = [], []

    async def main():
        first = first_member(MemorySource(log), first_seen)
        task = asyncio.ensure_future(first.run())
        deadline = time.monotonic() + 30
        while len(first_seen) < 399:
            assert time.monotonic() < deadline and not task.done(), len(first_seen)
            await asyncio.sleep(0.01)
        await first.aclose()
        await asyncio.gather(task, return_exceptions=True)
        second = second_member(MemorySource(log), second_seen)
        return await second.run()

    summary = asyncio.run(main())
    assert log.committed("fastconsumer") == {0: 200, 1: 200}
    assert second_seen == [(0, STUCK)]  # all the rest was handled by the first member
    assert summary.handled == 1


def test_metadata_that_is_not_ours_is_ignored_with_a_warning(impl, caplog):
    log = MemoryLog(partitions=1, count=20, keys=0)
    log.commit("fastconsumer", [TopicPartition(log.topic, 0, 10, metadata="someone else's")])
    seen = []

    async def handler(msg):
        seen.append(msg.offset())

    with caplog.at_level(logging.WARNING, logger="fastconsumer"):
        asyncio.run(Consumer(MemorySource(log), handler, exit_at_end=True).run())
    assert seen == list(range(10, 20))
    assert any("not fastconsumer's" in r.getMessage() for r in caplog.records)


def test_a_slow_message_does_not_hold_back_what_a_crash_redelivers(impl):
    """Periodic commits carry the handled offsets above a message that holds the committed offset back,
    and are sent again as more are handled, though the committed offset itself does not move."""
    log = MemoryLog(partitions=1, count=300, keys=0)
    release = asyncio.Event()
    seen = []

    async def handler(msg):
        if msg.offset() == 3:
            await release.wait()
        seen.append(msg.offset())

    async def main():
        consumer = Consumer(
            MemorySource(log), handler, concurrency=8, ordering="unordered", commit_interval=0.05
        )
        task = asyncio.ensure_future(consumer.run())
        deadline = time.monotonic() + 10
        while True:
            metadata = log.committed_metadata("fastconsumer").get(0, "")
            if log.committed("fastconsumer").get(0) == 3 and metadata:
                done = offsetmap.decode(3, metadata)
                if len(done) == 296:
                    break
            assert time.monotonic() < deadline, (log.committed("fastconsumer"), metadata)
            await asyncio.sleep(0.01)
        release.set()
        await consumer.aclose()
        await task
        return done

    assert asyncio.run(main()) == frozenset(range(4, 300))


def test_the_next_member_skips_what_the_last_one_handled_on_kafka(kafka_bootstrap, kafka_topic):
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    for i in range(2000):
        producer.produce(kafka_topic, b"%d" % i, partition=i % 4)  # 500 a partition, whatever the partitioner
    assert producer.flush(30) == 0
    ends = end_offsets(kafka_bootstrap, kafka_topic)
    group = f"metadata-{kafka_topic}"
    first_seen, second_seen = [], []

    def source():
        return KafkaSource(kafka_bootstrap, [kafka_topic], group, from_beginning=True)

    first = first_member(source(), first_seen)
    first.start()
    deadline = time.monotonic() + 60
    while len(first_seen) < sum(ends.values()) - 1:
        assert time.monotonic() < deadline, len(first_seen)
        time.sleep(0.05)
    first.stop()
    consumer = KafkaConsumer({"bootstrap.servers": kafka_bootstrap, "group.id": group})
    try:
        committed = retrying(
            lambda: consumer.committed([TopicPartition(kafka_topic, 0)], timeout=10), "committed"
        )
    finally:
        consumer.close()
    assert committed[0].offset == STUCK
    assert offsetmap.decode(STUCK, committed[0].metadata) == frozenset(range(STUCK + 1, ends[0]))
    second = second_member(source(), second_seen)
    second.start()
    summary = second.join(timeout=60)
    assert summary is not None and summary.error is None
    assert second_seen == [(0, STUCK)]
