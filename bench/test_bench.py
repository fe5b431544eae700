"""The engine on the memory source, and the core's operations (the Kafka rows: test_kafka.py).

The engine rows are the targets; the core's operations are diagnostics (a Python call costs as much as the
operation, so they say little about the engine)."""

from confluent_kafka import Message

from bench.conftest import QUICK, record
from fastconsumer import Consumer, MemoryLog, MemorySource, core_impl

ENGINE_MESSAGES = 50_000 if QUICK else 500_000
CORE_OPS = 20_000 if QUICK else 200_000


async def noop(msg):
    pass


class MadeLog(MemoryLog):
    """A memory log whose messages are made before the run: what the engine alone costs, without the
    memory source's making of ``Message`` objects (a Python call each: about 0.35 us, as long as the engine's
    own work per message). On Kafka the fetch thread's ``consume()`` makes them."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._made = [super(MadeLog, self).messages(p, 0, self.end_offset(p)) for p in range(self.partitions)]

    def messages(self, partition, start, end, timestamp_ms=0):
        return self._made[partition][start:end]


def _engine_run(log):
    consumer = Consumer(MemorySource(log), noop, concurrency=64, max_messages=ENGINE_MESSAGES)
    consumer.start()
    summary = consumer.join()
    assert summary.handled == ENGINE_MESSAGES


def test_engine_noop_handler(benchmark, impl):
    """Messages per second through fetch, schedule, handler, ack and commit: the engine alone, key ordering,
    1,024 keys over 4 partitions, messages made before."""

    def made():  # untimed
        return (MadeLog(partitions=4, count=ENGINE_MESSAGES, keys=1024),), {}

    benchmark.pedantic(_engine_run, setup=made, rounds=3, iterations=1)
    record(benchmark, "engine alone, no-op handler (msgs)", core_impl(), ENGINE_MESSAGES, kind="engine")


def test_engine_and_memory_source_noop_handler(benchmark, impl):
    """The same with the memory source making each message as it is fetched."""

    def once():
        _engine_run(MemoryLog(partitions=4, count=ENGINE_MESSAGES, keys=1024))

    benchmark.pedantic(once, rounds=3, iterations=1)
    record(
        benchmark,
        "engine and memory source making messages, no-op handler (msgs)",
        core_impl(),
        ENGINE_MESSAGES,
        kind="engine_and_source",
    )


def test_tracker_track_ack_committable(benchmark, impl):
    def once():
        tracker = impl.OffsetTracker()
        for o in range(CORE_OPS):
            tracker.track("t", o & 3, o)
            if o >= 64:
                tracker.ack("t", (o - 64) & 3, o - 64)
            if o & 1023 == 0:
                tracker.committable()

    benchmark.pedantic(once, rounds=5, iterations=1)
    record(benchmark, "tracker track+ack (ops)", core_impl(), CORE_OPS)


def test_ring_push_pop(benchmark, impl):
    items = list(range(256))

    def once():
        ring = impl.RingBuffer(1024)
        for _ in range(CORE_OPS // 256):
            ring.extend(items, 0)
            while ring.pop() is not None:
                pass

    benchmark.pedantic(once, rounds=5, iterations=1)
    record(benchmark, "ring push+pop (items)", core_impl(), CORE_OPS // 256 * 256)


def test_scheduler_push_pop_done(benchmark, impl):
    messages = [
        Message(topic="t", partition=o & 3, offset=o >> 2, key=b"k%d" % (o % 97), value=b"")
        for o in range(CORE_OPS)
    ]

    def once():
        scheduler = impl.Scheduler("key", 4096)
        running = []
        i = 0
        while i < len(messages) or len(scheduler) or running:
            i += scheduler.extend(messages, i)
            msg = scheduler.pop()
            while msg is not None:
                running.append(msg)
                msg = scheduler.pop()
            for msg in running:
                scheduler.done(msg)
            running.clear()

    benchmark.pedantic(once, rounds=3, iterations=1)
    record(benchmark, "scheduler key push+pop+done (msgs)", core_impl(), CORE_OPS)
