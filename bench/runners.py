"""The Kafka measurements of bench/test_kafka.py: fastconsumer, the ceilings it is compared with, and peers.

Every run reads a whole topic of known size with a new consumer group and stops at its end. It is timed from
just before its client is made (so group join counts, process start does not) to the last message handled;
``Run`` also keeps the first message's time, so the rate can be given without the join, and the close.

Each measurement runs in a process of its own, ``python -m bench.runners SPEC`` (``SPEC`` is JSON, see
``measure``), which prints its result as one JSON line: a fresh interpreter like an application's, not
pytest's. It matters: the garbage collector walks every tracked object of the process now and then, and in
a pytest process (twice the objects, plus what earlier rows left behind) even the bare consume() loop ran
~10-40% slower than in a fresh one.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import Consumer as KafkaConsumer

from bench.timing import FAST_BACKOFF, TIMEOUT, Run, new_group
from fastconsumer import Consumer, Summary
from fastconsumer.loops import new_event_loop
from fastconsumer.sources import KafkaSource

CONSUME_BATCH = 10_000  # messages per consume()/getmany() call for the ceiling and the no-processing peers
HANDWRITTEN_BATCH = 500  # the hand-written pattern fetches what fastconsumer's default batch_size fetches
POLL = 0.002  # seconds between two looks at a running fastconsumer's progress


def _check(deadline: float, n: int, total: int, what: str) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"{what}: {n:,} of {total:,} messages after {TIMEOUT:g} s")


# -- the ceiling: a bare consume() loop


def bare_consume(bootstrap: str, topic: str, total: int, config: dict[str, Any] | None = None) -> Run:
    """``confluent_kafka.Consumer.consume(10000)`` in a loop that only touches each message's value."""
    started = time.monotonic()
    deadline = started + TIMEOUT
    consumer = KafkaConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": new_group("bare"),
            "auto.offset.reset": "earliest",
            **(config or {}),
        }
    )
    consumer.subscribe([topic])
    n = 0
    first = 0.0
    try:
        while n < total:
            batch = consumer.consume(CONSUME_BATCH, 0.5)
            if batch and not first:
                first = time.monotonic()
            for msg in batch:
                msg.value()
            n += len(batch)
            _check(deadline, n, total, "bare consume()")
        last = time.monotonic()
    finally:
        consumer.close()
    return Run(n, started, first, last, time.monotonic())


def bare_first_message(bootstrap: str, topic: str) -> float:
    """Seconds from making a bare consumer in a new group to its first message."""
    started = time.monotonic()
    consumer = KafkaConsumer(
        {"bootstrap.servers": bootstrap, "group.id": new_group("bare-first"), "auto.offset.reset": "earliest"}
    )
    consumer.subscribe([topic])
    try:
        while True:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                return time.monotonic() - started
            _check(started + TIMEOUT, 0, 1, "bare first message")
    finally:
        consumer.close()


# -- fastconsumer


def fastconsumer_run(
    bootstrap: str, topic: str, total: int, handler: Callable[..., Awaitable[Any]], **options: Any
) -> tuple[Run, Summary]:
    """A ``fastconsumer.Consumer`` with ``exit_at_end``, started on its own thread as an application would.

    The handler is left alone (no clock in it): this thread looks at ``consumer.stats.handled`` every ``POLL``
    seconds instead, so first and last are up to ``POLL`` late, and the stop is measured from the last look
    that saw every message handled.
    """
    started = time.monotonic()
    source = KafkaSource(bootstrap, [topic], new_group("fastconsumer"), from_beginning=True)
    consumer = Consumer(source, handler, exit_at_end=True, **options)
    consumer.start()
    first = last = 0.0
    summary = None
    while summary is None:
        summary = consumer.join(POLL)
        now = time.monotonic()
        n = consumer.stats.handled
        if n and not first:
            first = now
        if n >= total and not last:
            last = now
        if now - started > TIMEOUT:
            consumer.stop()
            raise TimeoutError(f"fastconsumer: {n:,} of {total:,} messages after {TIMEOUT:g} s")
    ended = time.monotonic()
    if summary.handled != total or summary.error:
        raise AssertionError(f"fastconsumer handled {summary.handled:,} of {total:,}: {summary}")
    return Run(summary.handled, started, first, last, ended), summary


def fastconsumer_first_message(bootstrap: str, topic: str) -> float:
    """Seconds from making a fastconsumer ``Consumer`` (and its source) in a new group to its first handled
    message; the handler stops the run."""
    handled: list[float] = []
    consumer: Consumer | None = None

    async def handler(msg):
        if not handled:
            handled.append(time.monotonic())
            consumer.request_stop()  # type: ignore[union-attr]

    started = time.monotonic()
    consumer = Consumer(KafkaSource(bootstrap, [topic], new_group("first"), from_beginning=True), handler)
    consumer.start()
    consumer.join(TIMEOUT)
    if not handled:
        consumer.stop()
        raise AssertionError("fastconsumer handled no message")
    return handled[0] - started


# -- peers, each on its own event loop (uvloop, as fastconsumer uses)


def on_new_loop(coro_fn: Callable[[], Awaitable[Run]]) -> Run:
    loop = new_event_loop("auto")
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


async def handwritten(bootstrap: str, topic: str, total: int, concurrency: int = 64) -> Run:
    """The usual hand-written asyncio consumer: ``consume()`` in the default executor feeds an
    ``asyncio.Queue``, ``concurrency`` worker coroutines await a no-op handler, and a task commits
    asynchronously every second (the consumed positions: this pattern is not at-least-once)."""
    loop = asyncio.get_running_loop()
    started = time.monotonic()
    consumer = KafkaConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": new_group("handwritten"),
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            **FAST_BACKOFF,
        }
    )
    consumer.subscribe([topic])
    queue: asyncio.Queue = asyncio.Queue(maxsize=4 * HANDWRITTEN_BATCH)
    done = asyncio.Event()
    count = 0
    first = last = 0.0

    async def handler(msg):
        pass

    async def worker():
        nonlocal count, last
        while True:
            msg = await queue.get()
            await handler(msg)
            queue.task_done()
            count += 1
            if count == total:
                last = time.monotonic()
                done.set()

    async def fetcher():
        nonlocal first
        while True:
            batch = await loop.run_in_executor(None, consumer.consume, HANDWRITTEN_BATCH, 0.1)
            if batch and not first:
                first = time.monotonic()
            for msg in batch:
                if msg.error() is None:
                    await queue.put(msg)

    async def committer():
        while True:
            await asyncio.sleep(1.0)
            try:
                consumer.commit(asynchronous=True)
            except Exception:  # noqa: BLE001 - nothing consumed yet (_NO_OFFSET)
                pass

    tasks = [loop.create_task(worker()) for _ in range(concurrency)]
    tasks += [loop.create_task(fetcher()), loop.create_task(committer())]
    try:
        await asyncio.wait_for(done.wait(), TIMEOUT)
    except asyncio.TimeoutError:
        raise TimeoutError(f"hand-written: {count:,} of {total:,} messages after {TIMEOUT:g} s") from None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # a consume() may still run in the executor: close only after it returned
        await loop.run_in_executor(None, consumer.close)
    return Run(count, started, first, last, time.monotonic())


async def aiokafka_getmany(bootstrap: str, topic: str, total: int) -> Run:
    """aiokafka's ``getmany()`` loop, counting the messages and nothing else."""
    from aiokafka import AIOKafkaConsumer

    started = time.monotonic()
    deadline = started + TIMEOUT
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=new_group("aiokafka"), auto_offset_reset="earliest"
    )
    await consumer.start()
    n = 0
    first = 0.0
    try:
        while n < total:
            batches = await consumer.getmany(timeout_ms=100, max_records=CONSUME_BATCH)
            for messages in batches.values():
                n += len(messages)
            if n and not first:
                first = time.monotonic()
            _check(deadline, n, total, "aiokafka getmany()")
        last = time.monotonic()
    finally:
        await consumer.stop()
    return Run(n, started, first, last, time.monotonic())


async def aio_consumer(bootstrap: str, topic: str, total: int) -> Run:
    """``confluent_kafka.aio.AIOConsumer.consume(10000)`` (confluent-kafka >= 2.12; each call runs in its
    thread pool), counting the messages and nothing else."""
    from confluent_kafka.aio import AIOConsumer

    started = time.monotonic()
    deadline = started + TIMEOUT
    consumer = AIOConsumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": new_group("aioconsumer"),
            "auto.offset.reset": "earliest",
            **FAST_BACKOFF,
        }
    )
    await consumer.subscribe([topic])
    n = 0
    first = 0.0
    try:
        while n < total:
            batch = await consumer.consume(CONSUME_BATCH, 0.1)
            n += len(batch)
            if n and not first:
                first = time.monotonic()
            _check(deadline, n, total, "AIOConsumer.consume()")
        last = time.monotonic()
    finally:
        await consumer.close()
    return Run(n, started, first, last, time.monotonic())


# -- the I/O ceiling: no Kafka at all


async def sleepers(n: int, seconds: float, delay: float = 0.001, warmup: float = 0.2) -> float:
    """Completions per second of ``n`` coroutines each looping on ``await asyncio.sleep(delay)``: what a
    1 ms handler at concurrency ``n`` could reach on this event loop if fetching and bookkeeping were free."""
    completed = 0
    running = True

    async def sleeper():
        nonlocal completed
        while running:
            await asyncio.sleep(delay)
            completed += 1

    tasks = [asyncio.ensure_future(sleeper()) for _ in range(n)]
    await asyncio.sleep(warmup)
    c0, t0 = completed, time.monotonic()
    await asyncio.sleep(seconds)
    c1, t1 = completed, time.monotonic()
    running = False
    await asyncio.gather(*tasks)
    return (c1 - c0) / (t1 - t0)


def io_ceiling(n: int, seconds: float) -> float:
    loop = new_event_loop("auto")
    try:
        return loop.run_until_complete(sleepers(n, seconds))
    finally:
        loop.close()


# -- memory over many reads


def memory_kb() -> dict[str, int]:
    """This process's resident set (``vmrss_kb``) and its peak so far (``vmhwm_kb``), from /proc."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name.lower() + "_kb"] = int(value.split()[0])
    return out


def reset_peak() -> bool:
    """Reset ``VmHWM`` to the current resident set (Linux >= 4.0: ``5`` into /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rss_passes(bootstrap: str, topic: str, total: int, passes: int) -> list[dict[str, Any]]:
    """Read the topic ``passes`` times, each with a new fastconsumer ``Consumer`` (no-op handler, new group),
    noting the memory after each: ``[{"pass", "messages" (so far), "seconds", "vmrss_kb", "vmhwm_kb",
    "pass_peak_kb"}]``, pass 0 being before the first read.

    ``vmhwm_kb`` is the process's peak so far; ``pass_peak_kb`` the peak during that pass alone (None where
    the peak cannot be reset). The peak so far is the largest of noisy per-pass peaks (librdkafka's fetch
    buffers fill more or less depending on timing), so it creeps up over passes even without a leak.
    """
    out = [{"pass": 0, "messages": 0, "seconds": 0.0, "pass_peak_kb": None, **memory_kb()}]
    consumed = 0
    peak = out[0]["vmhwm_kb"]
    for i in range(1, passes + 1):
        t0 = time.monotonic()
        resettable = reset_peak()
        run, _ = fastconsumer_run(bootstrap, topic, total, HANDLERS["noop"])
        consumed += run.messages
        now = memory_kb()
        pass_peak = now["vmhwm_kb"] if resettable else None
        peak = max(peak, now["vmhwm_kb"])
        now["vmhwm_kb"] = peak  # the peak since the process started, whatever the resets did to VmHWM
        seconds = round(time.monotonic() - t0, 3)
        out.append({"pass": i, "messages": consumed, "seconds": seconds, "pass_peak_kb": pass_peak, **now})
    return out


# -- tracing


def engine_run(total: int, handler: Callable[..., Awaitable[Any]], **options: Any) -> dict[str, Any]:
    """The engine alone: ``total`` messages of the memory source (4 partitions, 10,000 keys) through a
    ``Consumer`` on its own thread, timed from ``start()`` to the end of the run."""
    from fastconsumer import MemoryLog, MemorySource

    consumer = Consumer(
        MemorySource(MemoryLog(partitions=4, count=total, keys=10_000)),
        handler,
        max_messages=total,
        **options,
    )
    started = time.monotonic()
    consumer.start()
    summary = consumer.join(TIMEOUT)
    elapsed = time.monotonic() - started
    if summary is None or summary.handled != total or summary.error:
        consumer.stop()
        raise AssertionError(f"fastconsumer on the memory source: {summary}")
    return {"messages": total, "msgs_per_s": total / elapsed, "elapsed_s": round(elapsed, 4)}


def traced(sampling: float) -> Any:
    """An OpenTelemetry SDK tracer provider as an application would set one up: a batch span processor and
    a ``sampling`` ratio (parent-based; the bench topic's messages carry no trace context, so the ratio
    decides), with an exporter that drops the spans: the cost of making them, not of shipping them."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Dropped(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(sampling)))
    provider.add_span_processor(BatchSpanProcessor(Dropped()))
    return provider


# -- the command line: one measurement per process

HANDLERS: dict[str, Callable[..., Awaitable[Any]]] = {}


def _handler(name: str):
    def register(fn):
        HANDLERS[name] = fn
        return fn

    return register


@_handler("noop")
async def _noop(msg):
    pass


@_handler("noop_batch")
async def _noop_batch(messages):
    pass


_noop_batch.__fastconsumer_batch__ = True  # what @fastconsumer.batch does


@_handler("io_1ms")
async def _io_1ms(msg):
    await asyncio.sleep(0.001)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the measurement ``spec["what"]`` in this process; a JSON-able result.

    ``bare`` (``config``), ``fastconsumer`` (``handler``: noop, noop_batch or io_1ms; ``options``: Consumer
    keyword arguments; ``sampling``: trace with ``traced(sampling)``), ``engine`` (the same on the memory
    source, ``total`` messages: ``{"msgs_per_s"}``), ``handwritten``, ``aiokafka``,
    ``aioconsumer``: ``Run.row()`` of one read of ``topic`` (``total`` messages) at ``bootstrap``. ``io``
    (``n``, ``seconds``): ``{"msgs_per_s"}``. ``first`` (``repeats``): seconds to the first message,
    fastconsumer and bare, in turns. ``rss`` (``passes``): ``rss_passes()``. ``arroyo``, ``pyrallel``: the
    framework peers, bench/peers.py ``measure()``. ``"gc": "cli"``: with the collector tuned as
    ``python -m fastconsumer`` tunes it (``fastconsumer.cli.run.tune_gc``; a library leaves it alone).
    """
    if spec.get("gc") == "cli":
        from fastconsumer.cli.run import tune_gc

        tune_gc()
    what = spec["what"]
    args = (spec.get("bootstrap"), spec.get("topic"), spec.get("total"))
    if what == "bare":
        return bare_consume(*args, spec.get("config")).row()
    if what == "fastconsumer":
        options = dict(spec.get("options", {}))
        if spec.get("sampling") is not None:
            options["tracing"] = traced(spec["sampling"])
        run, summary = fastconsumer_run(*args, HANDLERS[spec["handler"]], **options)
        return {**run.row(), "core": summary.core, "vmhwm_kb": memory_kb()["vmhwm_kb"]}
    if what == "engine":
        options = dict(spec.get("options", {}))
        if spec.get("sampling") is not None:
            options["tracing"] = traced(spec["sampling"])
        return engine_run(spec["total"], HANDLERS[spec["handler"]], **options)
    if what == "handwritten":
        return on_new_loop(lambda: handwritten(*args, concurrency=spec.get("concurrency", 64))).row()
    if what == "aiokafka":
        import aiokafka

        return {**on_new_loop(lambda: aiokafka_getmany(*args)).row(), "version": aiokafka.__version__}
    if what == "aioconsumer":
        return on_new_loop(lambda: aio_consumer(*args)).row()
    if what == "io":
        return {"msgs_per_s": io_ceiling(spec["n"], spec["seconds"]), "seconds": spec["seconds"]}
    if what == "first":
        ours, bare = [], []
        for _ in range(spec.get("repeats", 3)):
            bare.append(bare_first_message(args[0], args[1]))
            ours.append(fastconsumer_first_message(args[0], args[1]))
        return {"fastconsumer_runs": ours, "bare_runs": bare}
    if what == "rss":
        return {"passes": rss_passes(*args, spec["passes"])}
    if what in ("arroyo", "pyrallel"):
        from bench import peers

        return peers.measure(spec)
    raise ValueError(f"unknown measurement {what!r}")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m bench.runners SPEC (JSON)\n\n{measure.__doc__}", file=sys.stderr)
        return 2
    print(json.dumps(measure(json.loads(argv[0]))), flush=True)
    return 0


def in_subprocess(spec: dict[str, Any], cwd: str, timeout: float = TIMEOUT + 60) -> Any:
    """``measure(spec)`` in a new Python process (the one running this, started in ``cwd``, the checkout)."""
    import subprocess

    cmd = [sys.executable, "-m", "bench.runners", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"{spec['what']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
