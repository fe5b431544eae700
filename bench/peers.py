"""The framework peers of bench/test_kafka.py: sentry-arroyo and Pyrallel-Consumer, each set up as its own
documentation does, with a no-op handler and with a 1 ms I/O handler at concurrency 64.

They are slow next to the bare ``consume()`` loop (arroyo polls one message at a time through its strategy
chain; Pyrallel schedules every message through its work manager), so they read a smaller topic of their own
(bench/test_kafka.py ``peer_topic``) and stop early at a time budget: ``messages`` says how many they handled,
``read_to_end`` whether that was the whole topic; the rate is over what they handled (first message to last,
as ``bench.runners.Run``). The run then stops the peer the way its documentation says (arroyo:
``StreamProcessor.signal_shutdown()``; Pyrallel: ``await PyrallelConsumer.stop()``), and once it has closed,
a plain confluent_kafka Consumer reads the group's committed offsets and compares them with the topic's high
watermarks: ``committed_to_end``.

``python -m bench.peers SPEC`` prints one JSON line, as ``python -m bench.runners SPEC`` does (which hands
these specs here). This module imports neither fastconsumer nor bench.runners: Pyrallel-Consumer needs
Python >= 3.12, and this checkout's fastconsumer is built for the Python of the bench, so the Pyrallel rows
run in another interpreter (``pyrallel_python()``), one with confluent-kafka, pyrallel-consumer and uvloop::

    python3.12 -m venv ../venv312    # next to the checkout (elsewhere: FASTCONSUMER_PYRALLEL_PYTHON)
    ../venv312/bin/pip install confluent-kafka pyrallel-consumer==1.0.0 uvloop

Without one the Pyrallel rows are skipped, and say why. sentry-arroyo is in the ``bench`` extra.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaException, TopicPartition

from bench.timing import FAST_BACKOFF, TIMEOUT, Run, new_group

POLL = 0.02  # seconds between two looks at a budget
ARROYO_MAX_PENDING = 8  # RunTaskInThreads: max_pending_futures = this x concurrency (see arroyo_run)
PYRALLEL_PYTHON_ENV = "FASTCONSUMER_PYRALLEL_PYTHON"
REPO = Path(__file__).resolve().parents[1]


class Progress:
    """What a peer's handler calls once per message handled (``handled()``, thread-safe): notes the first
    and the last, and calls ``stop`` at the ``total``-th message or, from ``expired()``, once ``budget``
    seconds have passed since the first (the rate is then over the messages handled until then)."""

    def __init__(self, total: int, budget: float | None, stop: Callable[[], None]) -> None:
        self.total = total
        self.budget = budget
        self.started = time.monotonic()
        self.n = 0
        self.first = self.last = 0.0
        self.stopped = False
        self._stop = stop
        self._lock = threading.Lock()

    def handled(self) -> None:
        with self._lock:
            if self.stopped:
                return
            self.n += 1
            if self.n == 1:
                self.first = time.monotonic()
            if self.n >= self.total:
                self._end()

    def expired(self) -> bool:
        """True once the run is over; stops it at its budget, raises ``TimeoutError`` at ``TIMEOUT``."""
        with self._lock:
            now = time.monotonic()
            if not self.stopped and self.first and self.budget is not None and now - self.first > self.budget:
                self._end()
            elif not self.stopped and now - self.started > TIMEOUT:
                raise TimeoutError(f"{self.n:,} of {self.total:,} messages after {TIMEOUT:g} s")
            return self.stopped

    def _end(self) -> None:
        self.last = time.monotonic()
        self.stopped = True
        self._stop()

    def row(self, ended: float) -> dict[str, Any]:
        """``Run.row()`` of what was handled, and whether that was the whole topic."""
        run = Run(self.n, self.started, self.first, self.last, ended)
        return {**run.row(), "read_to_end": self.n >= self.total}


def committed_to_end(bootstrap: str, topic: str, group: str) -> dict[str, Any]:
    """``group``'s committed offsets on ``topic`` against its high watermarks, read with a plain consumer that
    does not join the group: ``{"committed_to_end", "committed_messages", "end_messages"}`` (offsets summed
    over the partitions; a partition never committed counts 0)."""
    c = KafkaConsumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        partitions = sorted(c.list_topics(topic, timeout=30).topics[topic].partitions)
        tps = [TopicPartition(topic, p) for p in partitions]
        for attempt in range(10):  # the coordinator may still be settling the group the peer just left
            try:
                committed = {tp.partition: tp.offset for tp in c.committed(tps, timeout=30)}
                break
            except KafkaException:
                if attempt == 9:
                    raise
                time.sleep(0.5)
        ends = {tp.partition: c.get_watermark_offsets(tp, timeout=30, cached=False)[1] for tp in tps}
    finally:
        c.close()
    return {
        "committed_to_end": all(committed[p] == ends[p] for p in partitions),
        "committed_messages": sum(max(committed[p], 0) for p in partitions),
        "end_messages": sum(ends.values()),
    }


# -- sentry-arroyo


def arroyo_run(
    bootstrap: str, topic: str, total: int, handler: str, concurrency: int = 64, budget: float | None = None
) -> dict[str, Any]:
    """arroyo's ``KafkaConsumer`` and ``StreamProcessor`` as its getting-started guide sets them up
    (``build_kafka_consumer_configuration``, commit policy ``ONCE_PER_SECOND``), with the strategy chain
    its documentation gives for the work: ``noop``: ``RunTask(handler)`` -> ``CommitOffsets``; ``io_1ms``:
    ``RunTaskInThreads(handler, concurrency, max_pending_futures)`` (``time.sleep(0.001)`` in each of
    ``concurrency`` threads) -> ``CommitOffsets``. max_pending_futures is ``ARROYO_MAX_PENDING`` x
    concurrency: past its limit the StreamProcessor backs off 10 ms, so a small window starves the threads
    (on this project's 2-core machine, 50k messages: 1x 6k msgs/s, 2x 13k, 4x 18k, 8x 21k, 16x 19k).
    Per-key order: RunTask calls the handler on the consumer's thread, one message at a time in the order
    polled, so a key's messages (all in one partition) are handled in order, at concurrency 1;
    RunTaskInThreads runs ``concurrency`` of them at once whatever their keys, so it does not keep it (arroyo
    has no per-key scheduling: only the commits stay in offset order).
    """
    import arroyo
    from arroyo.backends.kafka import KafkaConsumer as ArroyoConsumer
    from arroyo.backends.kafka import KafkaPayload, build_kafka_consumer_configuration
    from arroyo.commit import ONCE_PER_SECOND
    from arroyo.processing import StreamProcessor
    from arroyo.processing.strategies import (
        CommitOffsets,
        ProcessingStrategy,
        ProcessingStrategyFactory,
        RunTask,
        RunTaskInThreads,
    )
    from arroyo.types import Commit, Message, Partition, Topic

    processor: StreamProcessor[KafkaPayload] | None = None
    progress = Progress(total, budget, lambda: processor.signal_shutdown())  # type: ignore[union-attr]

    def noop(message: Message[KafkaPayload]) -> None:
        progress.handled()

    def io_1ms(message: Message[KafkaPayload]) -> None:
        time.sleep(0.001)
        progress.handled()

    class Factory(ProcessingStrategyFactory[KafkaPayload]):
        def create_with_partitions(
            self, commit: Commit, partitions: dict[Partition, int]
        ) -> ProcessingStrategy[KafkaPayload]:
            if handler == "noop":
                return RunTask(noop, CommitOffsets(commit))
            if handler == "io_1ms":
                pending = ARROYO_MAX_PENDING * concurrency
                return RunTaskInThreads(io_1ms, concurrency, pending, CommitOffsets(commit))
            raise ValueError(f"unknown handler {handler!r}")

    group = new_group("arroyo")
    progress.started = time.monotonic()
    config = build_kafka_consumer_configuration(
        default_config={},
        bootstrap_servers=[bootstrap],
        group_id=group,
        auto_offset_reset="earliest",
        override_params=FAST_BACKOFF,
    )
    processor = StreamProcessor(ArroyoConsumer(config), Topic(topic), Factory(), ONCE_PER_SECOND)
    watch_error: list[BaseException] = []

    def watch() -> None:
        try:
            while not progress.expired():
                time.sleep(POLL)
        except TimeoutError as exc:
            watch_error.append(exc)
            processor.signal_shutdown()  # type: ignore[union-attr]

    watcher = threading.Thread(target=watch, name="budget", daemon=True)
    watcher.start()
    processor.run()  # until signal_shutdown(); then closes the strategies (a last commit) and the consumer
    ended = time.monotonic()
    if watch_error:
        raise TimeoutError(f"arroyo: {watch_error[0]}")
    row = progress.row(ended)
    return {**row, **committed_to_end(bootstrap, topic, group), "version": _version("sentry-arroyo", arroyo)}


# -- Pyrallel-Consumer


async def pyrallel_run(
    bootstrap: str,
    topic: str,
    total: int,
    handler: str,
    ordering: str,
    concurrency: int | None = None,
    budget: float | None = None,
) -> dict[str, Any]:
    """``PyrallelConsumer`` as its README sets it up: a ``KafkaConfig``, the asyncio execution engine,
    ``ordering_mode`` ``key_hash`` (per-key order), ``partition`` or ``unordered``, and an async worker
    (``noop``; ``io_1ms``: ``await asyncio.sleep(0.001)``). ``concurrency`` sets ``execution.max_in_flight``
    (the engine's semaphore; its default, 1000, when None). The DLQ is off (it is on by default and caches
    every payload for it; no other row has one), and librdkafka gets ``FAST_BACKOFF`` like every peer (its
    ``KafkaConfig`` passes no extra consumer settings through, hence the subclass)."""
    import pyrallel_consumer  # noqa: F401 - its version, below
    from pyrallel_consumer.config import KafkaConfig
    from pyrallel_consumer.consumer import PyrallelConsumer
    from pyrallel_consumer.dto import ExecutionMode, OrderingMode, WorkItem

    class Config(KafkaConfig):
        def get_consumer_config(self) -> dict[str, Any]:
            return {**super().get_consumer_config(), **FAST_BACKOFF}

    done = asyncio.Event()
    progress = Progress(total, budget, done.set)

    async def noop(item: WorkItem) -> None:
        progress.handled()

    async def io_1ms(item: WorkItem) -> None:
        await asyncio.sleep(0.001)
        progress.handled()

    workers = {"noop": noop, "io_1ms": io_1ms}
    group = new_group("pyrallel")
    progress.started = time.monotonic()
    config = Config(BOOTSTRAP_SERVERS=[bootstrap], CONSUMER_GROUP=group, AUTO_OFFSET_RESET="earliest")
    config.dlq_enabled = False
    config.parallel_consumer.ordering_mode = OrderingMode(ordering)
    config.parallel_consumer.execution.mode = ExecutionMode.ASYNC
    if concurrency is not None:
        config.parallel_consumer.execution.max_in_flight = concurrency
    consumer = PyrallelConsumer(config=config, worker=workers[handler], topic=topic)
    await consumer.start()
    try:
        while not progress.expired():
            try:
                await asyncio.wait_for(done.wait(), POLL)
            except asyncio.TimeoutError:
                pass
    except TimeoutError as exc:
        raise TimeoutError(f"Pyrallel-Consumer: {exc}") from None
    finally:
        await consumer.stop()
    ended = time.monotonic()
    row = progress.row(ended)
    return {**row, **committed_to_end(bootstrap, topic, group), "version": _version("pyrallel-consumer")}


def _version(dist: str, module: Any = None) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return str(getattr(module, "__version__", "?"))


def _new_loop() -> asyncio.AbstractEventLoop:
    """uvloop where it is installed (as bench.runners' peers run), asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


# -- the command line: one measurement per process


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``spec["what"]`` in this process: ``arroyo`` (``handler``: noop or io_1ms; ``concurrency``) or
    ``pyrallel`` (``handler``; ``ordering``: key_hash, partition or unordered; ``concurrency``), reading
    ``topic`` (``total`` messages) at ``bootstrap`` until its end or ``budget`` seconds after the first
    message: ``Run.row()`` with ``committed_to_end``, ``committed_messages``, ``end_messages``, ``version``
    and ``python``."""
    what = spec["what"]
    args = (spec["bootstrap"], spec["topic"], spec["total"], spec["handler"])
    budget = spec.get("budget")
    if what == "arroyo":
        row = arroyo_run(*args, concurrency=spec.get("concurrency", 64), budget=budget)
    elif what == "pyrallel":
        loop = _new_loop()
        try:
            coro = pyrallel_run(*args, spec["ordering"], concurrency=spec.get("concurrency"), budget=budget)
            row = loop.run_until_complete(coro)
        finally:
            loop.close()
    else:
        raise ValueError(f"unknown measurement {what!r}")
    return {**row, "python": ".".join(map(str, sys.version_info[:3]))}


def pyrallel_python() -> tuple[str | None, str]:
    """An interpreter that can run the Pyrallel rows (Python >= 3.12 with pyrallel_consumer and
    confluent_kafka), and how it was found or why there is none: ``$FASTCONSUMER_PYRALLEL_PYTHON``, this
    interpreter, or ``venv312`` next to the checkout (the module docstring says how to make one)."""
    candidates = []
    if os.environ.get(PYRALLEL_PYTHON_ENV):
        candidates.append(os.environ[PYRALLEL_PYTHON_ENV])
    candidates += [sys.executable, str(REPO.parent / "venv312" / "bin" / "python")]
    probe = "import sys, pyrallel_consumer, confluent_kafka; assert sys.version_info >= (3, 12)"
    for python in candidates:
        if not Path(python).exists():
            continue
        try:
            proc = subprocess.run([python, "-c", probe], capture_output=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode == 0:
            return python, python
    here = ".".join(map(str, sys.version_info[:2]))
    return None, (
        f"Pyrallel-Consumer needs Python >= 3.12 and this is Python {here}: no Python >= 3.12 with "
        f"pyrallel-consumer found (${PYRALLEL_PYTHON_ENV}, or ../venv312 next to the checkout; "
        f"bench/peers.py says how to make one)"
    )


def in_subprocess(
    spec: dict[str, Any], cwd: str, python: str | None = None, timeout: float = TIMEOUT + 60
) -> Any:
    """``measure(spec)`` in a new process of ``python`` (default: this one), started in ``cwd``."""
    cmd = [python or sys.executable, "-m", "bench.peers", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise AssertionError(f"{spec['what']} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: python -m bench.peers SPEC (JSON)\n\n{measure.__doc__}", file=sys.stderr)
        return 2
    print(json.dumps(measure(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
