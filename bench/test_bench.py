"""The engine on the memory source, and the core's operations (the Kafka rows: test_kafka.py)."""

from confluent_kafka import Message

from bench.conftest import QUICK, record
from fastconsumer import Consumer, MemoryLog, MemorySource, core_impl

ENGINE_MESSAGES = 50_000 if QUICK else 500_000
CORE_OPS = 20_000 if QUICK else 200_000


async def noop(msg):
    pass


def test_engine_noop_handler(benchmark, impl):
    """Messages per second through fetch, schedule, handler, ack and commit, on the memory source."""

    def once():
        log = MemoryLog(partitions=4, count=ENGINE_MESSAGES, keys=1024)
        consumer = Consumer(MemorySource(log), noop, concurrency=64, max_messages=ENGINE_MESSAGES)
        consumer.start()
        summary = consumer.join()
        assert summary.handled == ENGINE_MESSAGES

    benchmark.pedantic(once, rounds=3, iterations=1)
    record(benchmark, "engine, no-op handler (msgs)", core_impl(), ENGINE_MESSAGES, kind="engine")


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
