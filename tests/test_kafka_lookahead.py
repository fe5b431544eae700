"""The fair look-ahead against a real broker: a partition that holds its share is paused at the client while
the others keep being fetched, and the member stays in the group however long the pause lasts."""

import asyncio
import time

from confluent_kafka import Producer

from fastconsumer import Consumer
from fastconsumer.sources import KafkaSource
from tests.kafka_helpers import committed_offsets, end_offsets

PER_PARTITION = 2_000
BATCH = 50
LOOKAHEAD = 200  # messages held at most: a share of 50 for each of 4 partitions once that is full
POLL_INTERVAL_MS = 6_000  # the least librdkafka takes (session.timeout.ms, the broker's minimum, 6 s)


def fill(bootstrap, topic):
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    for p in range(4):
        for i in range(PER_PARTITION):
            producer.produce(topic, b"%d" % i, partition=p)
        producer.poll(0)
    assert producer.flush(30) == 0


def test_a_partition_holding_its_share_is_paused_while_the_others_flow_and_the_member_stays(
    kafka_bootstrap, kafka_topic
):
    fill(kafka_bootstrap, kafka_topic)
    release = asyncio.Event()
    handled = {p: 0 for p in range(4)}

    async def handler(msg):
        if msg.partition() == 0:
            await release.wait()  # partition 0 is stuck on its first message until released
        handled[msg.partition()] += 1

    config = {"session.timeout.ms": 6_000, "max.poll.interval.ms": POLL_INTERVAL_MS}
    source = KafkaSource(kafka_bootstrap, [kafka_topic], "paused", config=config, from_beginning=True)
    consumer = Consumer(
        source,
        handler,
        concurrency=8,
        ordering="partition",
        batch_size=BATCH,
        max_buffered=LOOKAHEAD,  # no growth: the share stays 50
        exit_at_end=True,
    )
    consumer.start()
    try:
        deadline = time.monotonic() + 60
        while sum(handled[p] for p in (1, 2, 3)) < 3 * PER_PARTITION:
            assert time.monotonic() < deadline, f"the partitions not paused stopped flowing: {handled}"
            time.sleep(0.05)
        # Partition 0 was paused once it held more than its share of a full look-ahead: it never took the
        # whole look-ahead, which would have stopped the others, nor was it read on into memory.
        assert consumer.stats.consumed - 3 * PER_PARTITION < LOOKAHEAD
        # Past max.poll.interval.ms with partition 0 paused: the member must still own its partitions.
        time.sleep(POLL_INTERVAL_MS / 1000 + 1)
        assert source.stats.rebalances == 1 and len(source.assignment()) == 4
        assert handled[0] == 0
        consumer.loop.call_soon_threadsafe(release.set)
        summary = consumer.join(timeout=60)
    finally:
        consumer.stop()
    assert summary is not None and summary.error is None
    assert handled == {p: PER_PARTITION for p in range(4)}
    ends = end_offsets(kafka_bootstrap, kafka_topic)
    assert committed_offsets(kafka_bootstrap, "paused", kafka_topic) == ends


def test_a_slow_handler_does_not_make_librdkafka_drop_what_it_fetched_ahead(
    kafka_bootstrap, kafka_topic, monkeypatch
):
    """A handler that holds the loop longer than the Kafka thread's poll timeout, batch after batch, is slow,
    not stuck: the thread must not pause the partitions in librdkafka (a pause drops what librdkafka fetched
    ahead, and every batch then waited about a second to come again from the broker). It polls on a
    message at a time, and pauses only about a fetch response over what the engine allowed."""
    from fastconsumer.sources.kafka.pauses import Pauses

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "linger.ms": 20})
    for i in range(60):
        producer.produce(kafka_topic, b"%d" % i, partition=i % 4)
    assert producer.flush(30) == 0
    paused_all = []
    apply = Pauses.apply

    def recording(self, consumer, assignment, everything):
        if everything:
            paused_all.append(time.monotonic())
        return apply(self, consumer, assignment, everything)

    monkeypatch.setattr(Pauses, "apply", recording)

    async def handler(msg):
        time.sleep(0.03)  # blocks the loop: a batch of 5 holds it past the 0.1 s poll timeout

    source = KafkaSource(kafka_bootstrap, [kafka_topic], "slow", from_beginning=True, poll_timeout=0.1)
    consumer = Consumer(source, handler, concurrency=1, batch_size=5, exit_at_end=True)
    consumer.start()
    summary = consumer.join(120)
    assert summary is not None and summary.handled == 60, summary
    assert paused_all == [], f"paused in librdkafka {len(paused_all)} times while only slow"
    assert sum(committed_offsets(kafka_bootstrap, "slow", kafka_topic).values()) == 60
