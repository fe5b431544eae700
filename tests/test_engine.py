"""The engine on the memory source, against both cores: concurrency, ordering, stopping, failures."""

import asyncio
import random
import threading

import pytest

from fastconsumer import ConfigError, Consumer, HandlerError, MemoryLog, MemorySource, Outcome, batch

GROUP = "fastconsumer"


class Recorder:
    """A handler that takes up to ``work`` seconds of simulated I/O and records what ran when.

    Durations vary, so handlers finish in another order than they started, as real ones do.
    """

    def __init__(self, work=0.001, fail_at=None, seed=0):
        self.work = work
        self.rng = random.Random(seed)
        self.fail_at = fail_at  # (partition, offset) whose handler raises
        self.running = 0
        self.peak = 0
        self.active = {}  # lane -> offset running now
        self.overlaps = []
        self.started = []
        self.finished = []

    async def __call__(self, msg):
        self.running += 1
        self.peak = max(self.peak, self.running)
        self.started.append(msg)
        try:
            await asyncio.sleep(self.rng.uniform(0, self.work))
            if self.fail_at == (msg.partition(), msg.offset()):
                raise RuntimeError("poison")
        finally:
            self.running -= 1
        self.finished.append(msg)


def offsets_by_partition(messages):
    out = {}
    for m in messages:
        out.setdefault(m.partition(), []).append(m.offset())
    return out


def run(consumer):
    return asyncio.run(consumer.run())


@pytest.mark.parametrize("ordering", ["key", "unordered"])
def test_runs_exactly_concurrency_handlers_at_once_under_load(impl, ordering):
    handler = Recorder()
    log = MemoryLog(partitions=4, count=3000, keys=512)
    summary = run(Consumer(MemorySource(log), handler, concurrency=32, ordering=ordering, max_messages=3000))
    assert handler.peak == 32
    assert summary.handled == 3000
    assert log.committed(GROUP) == {p: log.end_offset(p) for p in range(4)}


def test_partition_ordering_runs_one_per_partition_in_offset_order(impl):
    order = []
    running = set()
    peak = 0

    async def handler(msg):
        nonlocal peak
        assert msg.partition() not in running
        running.add(msg.partition())
        peak = max(peak, len(running))
        order.append((msg.partition(), msg.offset()))
        await asyncio.sleep(0.0001)
        running.discard(msg.partition())

    log = MemoryLog(partitions=3, count=600)
    run(Consumer(MemorySource(log), handler, concurrency=16, ordering="partition", max_messages=600))
    assert peak == 3
    for p in range(3):
        assert [o for q, o in order if q == p] == list(range(200))


def test_key_ordering_runs_a_key_at_a_time_in_order_and_keys_in_parallel(impl):
    active = {}
    overlaps = 0
    peak = 0
    seen = {}

    async def handler(msg):
        nonlocal overlaps, peak
        key = (msg.partition(), msg.key())
        assert key not in active, "two messages of one key ran at once"
        active[key] = msg.offset()
        peak = max(peak, len(active))
        seen.setdefault(key, []).append(msg.offset())
        await asyncio.sleep(0.0005)
        del active[key]

    log = MemoryLog(partitions=2, count=2000, keys=8)
    run(Consumer(MemorySource(log), handler, concurrency=64, ordering="key", max_messages=2000))
    assert peak == 8  # every key busy at once, never more than one message each
    assert all(offs == sorted(offs) for offs in seen.values())
    assert sum(len(offs) for offs in seen.values()) == 2000


def test_null_keys_order_like_their_partition(impl):
    handler = Recorder(work=0.0002)
    log = MemoryLog(partitions=2, count=400, keys=0)
    run(Consumer(MemorySource(log), handler, concurrency=16, ordering="key", max_messages=400))
    assert handler.peak == 2
    assert offsets_by_partition(handler.started) == {0: list(range(200)), 1: list(range(200))}


def test_stop_waits_for_started_handlers_and_commits_every_handled_message(impl):
    log = MemoryLog(partitions=3, keys=9)  # endless; few keys, so lanes hold back lower offsets
    handler = Recorder(work=0.01)
    ten_started = threading.Event()

    async def observed(msg):
        if len(handler.started) >= 10:
            ten_started.set()
        await handler(msg)

    consumer = Consumer(MemorySource(log), observed, concurrency=16)
    consumer.start()
    assert ten_started.wait(10)
    summary = consumer.stop()
    assert handler.running == 0
    assert len(handler.finished) == len(handler.started) == summary.handled > 0
    # Every handled message, and nothing else, is committed: no gap, no duplicate on the next run.
    handled = offsets_by_partition(handler.finished)
    committed = log.committed(GROUP)
    for p, offsets in handled.items():
        assert sorted(offsets) == list(range(committed[p]))
    assert consumer.stop() is summary  # idempotent


def test_stop_before_start_is_a_no_op():
    consumer = Consumer(MemorySource(), Recorder())
    assert consumer.stop() is None
    assert consumer.stop() is None


def test_a_restart_resumes_where_the_last_run_committed(impl):
    log = MemoryLog(partitions=3, count=3000, keys=100)
    first, second = Recorder(work=0), Recorder(work=0)
    run(Consumer(MemorySource(log), first, max_messages=1000))
    run(Consumer(MemorySource(log), second, max_messages=3000 - len(first.finished)))
    seen = [(m.partition(), m.offset()) for m in first.finished + second.finished]
    assert len(seen) == len(set(seen)) == 3000  # all of them, none twice


def test_a_failed_handler_stops_and_commits_exactly_below_the_failed_message(impl):
    log = MemoryLog(partitions=3, count=3000, keys=9)
    handler = Recorder(work=0.0005, fail_at=(1, 300))
    with pytest.raises(HandlerError) as info:
        run(Consumer(MemorySource(log), handler, concurrency=32))
    err = info.value
    assert (err.topic, err.partition, err.offset) == ("foo", 1, 300)
    assert isinstance(err.__cause__, RuntimeError) and "poison" in str(err)
    committed = log.committed(GROUP)
    assert committed[1] == 300
    handled = offsets_by_partition(handler.finished)
    assert set(range(300)) <= set(handled[1])


def test_the_error_policy_can_let_a_failed_message_pass(impl):
    failed = []

    async def skip(messages, error, attempts):
        assert attempts == 1 and isinstance(error, RuntimeError)
        failed.extend(messages)
        return Outcome.SKIPPED

    log = MemoryLog(partitions=2, count=200)
    handler = Recorder(work=0, fail_at=(0, 10))
    summary = run(Consumer(MemorySource(log), handler, on_error=skip, max_messages=199))
    assert [(m.partition(), m.offset()) for m in failed] == [(0, 10)]
    assert summary.failed == 1 and summary.handled == 199
    assert log.committed(GROUP) == {0: 100, 1: 100}


def test_batch_handler_gets_lists_in_key_order(impl):
    batches = []

    @batch
    async def handle(messages):
        batches.append(messages)
        await asyncio.sleep(0)

    log = MemoryLog(partitions=2, count=5000, keys=0)  # null keys: one lane per partition
    summary = run(Consumer(MemorySource(log), handle, concurrency=4, batch_size=250, max_messages=5000))
    assert summary.handled == 5000
    assert max(len(b) for b in batches) == 250
    got = offsets_by_partition(m for b in batches for m in b)
    assert got == {0: list(range(2500)), 1: list(range(2500))}
    assert log.committed(GROUP) == {0: 2500, 1: 2500}


def test_batch_handler_failure_commits_below_the_batch(impl):
    @batch
    async def handle(messages):
        if any(m.partition() == 0 and m.offset() >= 100 for m in messages):
            raise ValueError("bad batch")

    log = MemoryLog(partitions=1, count=1000, keys=0)
    with pytest.raises(HandlerError, match="bad batch"):
        run(Consumer(MemorySource(log), handle, concurrency=2, batch_size=50))
    assert log.committed(GROUP) == {0: 100}


def test_async_context_manager_and_aclose(impl):
    log = MemoryLog(partitions=2, keys=16)
    handler = Recorder(work=0.001)

    async def main():
        enough = asyncio.Event()

        async def observed(msg):
            await handler(msg)
            if len(handler.finished) == 200:
                enough.set()

        async with Consumer(MemorySource(log), observed) as consumer:
            await enough.wait()
        return consumer.summary

    summary = asyncio.run(main())
    assert handler.running == 0 and summary.handled == len(handler.finished) >= 200
    assert sum(c["offset"] for c in summary.committed) == summary.handled


def test_run_until_aclose_from_another_task(impl):
    log = MemoryLog(partitions=2, keys=16)

    async def main():
        enough = asyncio.Event()

        async def handler(msg):
            if msg.offset() == 50:
                enough.set()

        consumer = Consumer(MemorySource(log), handler)
        task = asyncio.ensure_future(consumer.run())
        await enough.wait()
        closed = await consumer.aclose()
        assert await task is closed
        return closed

    summary = asyncio.run(main())
    assert summary.handled >= 51 and summary.error is None


def test_abandon_does_not_wait_for_stuck_handlers_and_commits_only_what_completed(impl):
    log = MemoryLog(partitions=1, count=100, keys=0)
    stuck = []

    async def main():
        consumer = None
        forever = asyncio.Event()

        async def handler(msg):
            if msg.offset() == 5:
                stuck.append(msg)
                consumer.request_stop()
                consumer.request_stop(abandon=True)
                await forever.wait()

        consumer = Consumer(MemorySource(log), handler, concurrency=4, ordering="unordered")
        return await consumer.run()

    summary = asyncio.run(main())
    assert stuck and summary.abandoned >= 1
    assert log.committed(MemorySource().group) == {0: 5}


def test_shutdown_timeout_bounds_a_stop(impl):
    log = MemoryLog(partitions=1, count=100, keys=0)

    async def main():
        forever = asyncio.Event()
        consumer = None

        async def handler(msg):
            if msg.offset() == 3:
                consumer.request_stop()
                await forever.wait()

        consumer = Consumer(MemorySource(log), handler, ordering="unordered", shutdown_timeout=0.05)
        return await consumer.run()

    summary = asyncio.run(main())
    assert summary.abandoned == 1
    assert log.committed(GROUP) == {0: 3}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"ordering": "fifo"}, "ordering must be one of"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1"),
        ({"commit_interval": 0}, "commit_interval must be > 0"),
        ({"max_buffered": 10, "batch_size": 100}, "max_buffered"),
    ],
)
def test_bad_configuration_is_refused_up_front(kwargs, message):
    async def handler(msg):
        pass

    with pytest.raises(ConfigError, match=message):
        Consumer(MemorySource(), handler, **kwargs)


def test_a_handler_must_be_a_coroutine_function():
    with pytest.raises(ConfigError, match="must be a coroutine function"):
        Consumer(MemorySource(), print)
