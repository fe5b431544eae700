"""The look-ahead on the memory source handing out per-partition runs, as librdkafka does: every handler slot
is kept busy whenever enough lanes have work, no partition waits behind another's run, and memory stays
within the bounds in messages and in bytes. Both cores."""

import asyncio

import pytest

from fastconsumer import Consumer, MemoryLog, MemorySource

#: About what one fetch response of librdkafka holds: 1 MiB (max.partition.fetch.bytes) of 100-byte messages.
RUN = 10_000


class Slots:
    """A handler awaiting ``work`` seconds that records how many calls ran at once, and in what order
    messages began."""

    def __init__(self, work=0.001):
        self.work = work
        self.running = 0
        self.peak = 0
        self.started = []

    async def __call__(self, msg):
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(msg.partition())
        try:
            await asyncio.sleep(self.work)
        finally:
            self.running -= 1


def run(consumer):
    return asyncio.run(consumer.run())


@pytest.mark.parametrize(
    ("ordering", "keys", "partitions", "expected"),
    [
        ("key", 97, 4, 64),  # ~24 keys a partition: one partition's run alone keeps 24 slots busy
        ("partition", 97, 4, 4),  # one lane a partition: a run of one partition alone, one slot
        ("key", 1_000, 16, 64),
        ("partition", 1_000, 16, 16),
    ],
)
def test_every_slot_works_when_enough_lanes_have_work(impl, ordering, keys, partitions, expected):
    handler = Slots()
    count = 20_000
    log = MemoryLog(partitions=partitions, count=count, keys=keys)
    source = MemorySource(log, run_length=RUN)
    summary = run(Consumer(source, handler, concurrency=64, ordering=ordering, max_messages=count))
    assert summary.handled >= count
    assert handler.peak == expected


@pytest.mark.parametrize(("ordering", "keys"), [("partition", 1_000), ("key", 97)])
def test_no_partition_waits_behind_another_partitions_run(impl, ordering, keys):
    """Partition 0's run is 10,000 messages; every partition's messages start among the first 8,000, not
    after 30,000 (each may hold a quarter of the look-ahead of 2,000 once it is full). Under key ordering
    that holds while slots would sit idle behind one partition's keys, as here."""
    handler = Slots()
    log = MemoryLog(partitions=4, count=40_000, keys=keys)
    source = MemorySource(log, run_length=RUN)
    run(Consumer(source, handler, concurrency=64, ordering=ordering, max_messages=10_000))
    assert set(handler.started[:8_000]) == {0, 1, 2, 3}


def test_the_look_ahead_stays_within_its_bound_in_bytes(impl):
    """10 KB messages under a 1 MB bound: at most about 100 messages are held (buffered and in flight) once
    their size is known (the first batch tells it), however slow the handler and whatever the ordering."""
    size = 10_000
    log = MemoryLog(partitions=4, count=3_000, keys=2, payload=lambda i: b"x" * size)
    held = []
    consumer = None

    async def handler(msg):
        held.append(consumer.buffered + consumer.stats.in_flight)
        await asyncio.sleep(0.0005)

    consumer = Consumer(
        MemorySource(log, run_length=RUN),
        handler,
        concurrency=64,
        batch_size=50,
        max_buffered_bytes=1_000_000,
        max_messages=3_000,
    )
    run(consumer)
    assert max(held[200:]) * size <= 1_000_000 + 50 * size  # one fetch of at most a batch past the mark


def test_the_look_ahead_grows_while_slots_starve_behind_a_hot_key(impl):
    """One partition whose first 8,000 messages all carry one key, then many keys: a look-ahead of 2,000
    holds only the hot key's messages and leaves 63 slots idle; it grows (within max_buffered) until it
    reaches the other keys, which then run beside the hot key."""
    hot = 8_000

    class Hot(MemoryLog):
        def messages(self, partition, start, end, timestamp_ms=0):
            out = super().messages(partition, start, end, timestamp_ms)
            for msg in out:
                if msg.offset() < hot:
                    msg.set_key(b"hot")
            return out

    log = Hot(partitions=1, count=12_000, keys=1_000)
    handler = Slots(work=0.0005)
    consumer = Consumer(MemorySource(log), handler, concurrency=64, max_messages=1_000)
    run(consumer)
    assert handler.peak == 64  # the other keys ran while the hot key still had messages waiting
