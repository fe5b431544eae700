"""The thread that owns the confluent_kafka.Consumer and is its only caller.

librdkafka's consumer is not meant to be shared between threads, and its rebalance callbacks run inside
``consume()``; so fetches, commits, pause/resume and rebalances all happen on this thread, which serves the
event loop's commands (``commands.py``) in the order sent. Between commands it keeps polling: fetching ahead
within what the engine's cap allows, or paused at the cap, so the member stays in the group.
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Coroutine
from typing import Any, TypeVar

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from fastconsumer.errors import ConfigError
from fastconsumer.sources.base import Partition, SourceListener, SourceStats
from fastconsumer.sources.kafka.commands import Close, Command, Commit, CommitSync, Fetch
from fastconsumer.sources.kafka.config import SourceError, reason

log = logging.getLogger("fastconsumer.kafka")
librdkafka_log = logging.getLogger("fastconsumer.librdkafka")

# What _on_stats keeps of each partition's statistics.
STATS_KEPT = ("hi_offset", "ls_offset", "lo_offset", "committed_offset", "consumer_lag", "fetchq_cnt")

T = TypeVar("T")


class _ClientLog:
    """librdkafka's log for one client, held back while it connects: an unreachable broker is then reported
    once, in one line, instead of a line per retry."""

    def __init__(self) -> None:
        self.connecting = False

    def log(self, level: int, msg: str, *args: Any) -> None:
        if not self.connecting:
            librdkafka_log.log(level, msg, *args)


def _resolve(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: Any, error: bool = False
) -> None:
    def apply() -> None:
        if not fut.done():
            fut.set_exception(value) if error else fut.set_result(value)

    loop.call_soon_threadsafe(apply)


class Client:
    """One member's client and the thread that runs it. ``assignment``, ``eof`` and ``partition_stats`` are
    written here and read from other threads (each replaced or changed by one operation at a time)."""

    def __init__(
        self,
        config: dict[str, Any],
        topics: list[str],
        listener: SourceListener,
        loop: asyncio.AbstractEventLoop,
        stats: SourceStats,
        *,
        connect_timeout: float,
        poll_timeout: float,
    ) -> None:
        self.config = config
        self.topics = topics
        self.bootstrap_servers = str(config["bootstrap.servers"])
        self.connect_timeout = connect_timeout
        self.poll_timeout = poll_timeout
        self.stats = stats
        self.assignment: set[Partition] = set()
        self.eof: set[Partition] = set()
        # librdkafka's statistics of each assigned partition, replaced every statistics.interval.ms
        self.partition_stats: dict[Partition, dict[str, Any]] = {}
        self.failure: BaseException | None = None  # why the thread died
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self._listener = listener
        self._loop = loop
        self._log = _ClientLog()
        self._held: list[Message] = []  # fetched while nobody asked: handed out first next time
        self._gone: set[Partition] = set()  # revoked or lost during the current fetch
        self._ahead = 0  # how many messages the engine's cap lets this thread hold for its next fetch
        self._paused = False
        self._reassigned = False
        self._commits_sent: deque[float] = deque()  # when each asynchronous commit in flight was sent
        self.thread: threading.Thread | None = None

    def start(self, opened: asyncio.Future[None]) -> None:
        self.thread = threading.Thread(
            target=self._main, args=(opened,), name="fastconsumer-kafka", daemon=True
        )
        self.thread.start()

    def _main(self, opened: asyncio.Future[None]) -> None:
        loop = self._loop
        client_log = self._log
        try:
            callbacks: dict[str, Any] = {"on_commit": self._on_commit, "error_cb": self._on_error}
            if int(self.config.get("statistics.interval.ms") or 0) > 0:
                callbacks["stats_cb"] = self._on_stats
            consumer = KafkaConsumer({**self.config, **callbacks}, logger=client_log)
        except (KafkaException, ValueError, TypeError) as exc:
            _resolve(loop, opened, ConfigError(f"invalid Kafka consumer property: {reason(exc)}"), error=True)
            return
        client_log.connecting = True
        try:
            metadata = consumer.list_topics(timeout=self.connect_timeout)
        except KafkaException:
            consumer.close()
            error = SourceError(
                f"cannot reach Kafka at {self.bootstrap_servers} within {self.connect_timeout:g} s: "
                "check --bootstrap-servers and that the broker is up"
            )
            _resolve(loop, opened, error, error=True)
            return
        finally:
            client_log.connecting = False
        missing = [t for t in self.topics if not t.startswith("^") and t not in metadata.topics]
        if missing:
            consumer.close()
            where = self.bootstrap_servers
            _resolve(loop, opened, ConfigError(f"topic {missing[0]!r} does not exist on {where}"), error=True)
            return
        consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        _resolve(loop, opened, None)
        try:
            self._serve(consumer)
        except BaseException as exc:  # surfaces through the next fetch and stops the run
            log.exception("the Kafka consumer thread failed")
            self.failure = exc
            self._fail_pending(exc)

    def _serve(self, consumer: KafkaConsumer) -> None:
        loop = self._loop
        commands = self.commands
        while True:
            try:
                command = commands.get(timeout=self.poll_timeout)
            except queue.Empty:
                room = self._ahead - len(self._held)
                if room > 0:
                    # The engine is busy, not full: keep fetching ahead, within what its cap allowed.
                    self._set_paused(consumer, False)
                    self._held.extend(self._consume(consumer, room))
                else:
                    # The engine is at its cap: pause, but keep polling so the member stays in the group
                    # and rebalances are served.
                    self._set_paused(consumer, True)
                    self._held.extend(self._consume(consumer, 1000))
                continue
            reply = None if isinstance(command, Commit) else command.reply
            try:
                self._apply(consumer, command)
            except KafkaException as exc:
                if reply is not None:  # the engine decides: a failed fetch stops the run
                    _resolve(loop, reply, exc, error=True)
            except BaseException as exc:
                if reply is not None:
                    _resolve(loop, reply, RuntimeError(f"Kafka consumer thread failed: {exc!r}"), error=True)
                raise
            if isinstance(command, Close):
                return

    def _apply(self, consumer: KafkaConsumer, command: Command) -> None:
        """One command from the event loop; an exception raised here fails its reply."""
        loop = self._loop
        if isinstance(command, Fetch):
            self._fetch(consumer, command)
        elif isinstance(command, Commit):
            # A commit queued while a revoke was under way must not move a partition that left: its
            # synchronous commit on revoke is the newer one.
            offsets = [tp for tp in command.offsets if (tp.topic, tp.partition) in self.assignment]
            if not offsets:
                return
            self._commits_sent.append(time.monotonic())
            try:
                consumer.commit(offsets=offsets, asynchronous=True)
            except KafkaException as exc:
                self._commits_sent.pop()  # no callback follows
                self._report_commit(offsets, exc)
        elif isinstance(command, CommitSync):
            self._commit_sync(consumer, command.offsets)
            _resolve(loop, command.reply, None)
        else:
            try:
                consumer.close()  # leaves the group: the revoke callback commits what is safe
            finally:
                _resolve(loop, command.reply, None)

    def _fetch(self, consumer: KafkaConsumer, command: Fetch) -> None:
        wanted = command.wanted
        self._set_paused(consumer, False)
        messages, self._held = self._held[:wanted], self._held[wanted:]
        if len(messages) < wanted:
            self._gone = set()
            fresh = self._consume(consumer, wanted - len(messages))
            if self._gone:  # held messages of partitions revoked meanwhile belong to the next owner
                messages = [m for m in messages if (m.topic(), m.partition()) not in self._gone]
            messages.extend(fresh)  # fetched after the rebalance: from the partitions owned now
        _resolve(self._loop, command.reply, messages)
        # Fetch the next batch while the loop handles this one (librdkafka waits without the GIL).
        self._ahead = min(command.prefetch, wanted)
        prefetch = self._ahead - len(self._held)
        if prefetch > 0 and self.commands.empty():
            self._held.extend(self._consume(consumer, prefetch, timeout=0))

    def _commit_sync(self, consumer: KafkaConsumer, offsets: list[TopicPartition]) -> None:
        """Commit and wait, timed; librdkafka calls no on_commit for a synchronous commit."""
        started = time.monotonic()
        consumer.commit(offsets=offsets, asynchronous=False)
        self.stats.commit_latency.observe(time.monotonic() - started)
        self.stats.commits += 1

    def _consume(self, consumer: KafkaConsumer, n: int, timeout: float | None = None) -> list[Message]:
        batch = consumer.consume(num_messages=n, timeout=self.poll_timeout if timeout is None else timeout)
        if self._reassigned:
            # librdkafka keeps a partition's pause across a revoke and a new assignment: set it afresh.
            self._reassigned = False
            assignment = consumer.assignment()
            if assignment:
                consumer.pause(assignment) if self._paused else consumer.resume(assignment)
        out = batch
        eof = self.eof
        for msg in batch:
            err = msg.error()
            if err is not None or eof:
                out = self._sift(batch)
                break
        return out

    def _sift(self, batch: list[Message]) -> list[Message]:
        """The slow path: drop end-of-partition events (noting them) and report errors."""
        out = []
        eof = self.eof
        for msg in batch:
            err = msg.error()
            if err is None:
                if eof:
                    eof.discard((msg.topic(), msg.partition()))
                out.append(msg)
            elif err.code() == KafkaError._PARTITION_EOF:
                eof.add((msg.topic(), msg.partition()))  # type: ignore[arg-type]
            elif err.fatal():
                raise KafkaException(err)
            else:
                log.warning("consumer error: %s", err)
        return out

    def _set_paused(self, consumer: KafkaConsumer, paused: bool) -> None:
        if paused == self._paused:
            return
        self._paused = paused
        assignment = consumer.assignment()
        if assignment:
            consumer.pause(assignment) if paused else consumer.resume(assignment)

    def _call_engine(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run an engine coroutine on the event loop and wait for it from this thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def _report_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        self._loop.call_soon_threadsafe(self._listener.on_commit, offsets, error)

    def _on_assign(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        keys = {(tp.topic, tp.partition) for tp in partitions}
        if "cooperative" not in str(self.config["partition.assignment.strategy"]):
            self.assignment = keys  # eager: each assignment is the whole of it
        else:
            self.assignment |= keys
        self.eof -= keys
        self._reassigned = True
        log.info("assigned %s", _names(partitions))

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Partitions that left: none of their held messages may reach the engine any more."""
        self.stats.rebalances += 1
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in keys]
        self._gone |= keys
        self.assignment -= keys
        self.eof -= keys

    def _on_revoke(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        offsets = self._call_engine(self._listener.on_revoke(partitions))
        if offsets:
            try:
                self._commit_sync(consumer, offsets)
                self._report_commit(offsets, None)
            except KafkaException as exc:
                log.warning("commit on revoke failed; those messages will be delivered again: %s", exc)
                self._report_commit(offsets, exc)
        log.info("revoked %s", _names(partitions))

    def _on_lost(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        self._call_engine(_call(self._listener.on_lost, partitions))
        log.warning("lost %s: dropped without committing", _names(partitions))

    def _on_commit(self, error: KafkaError | None, offsets: list[TopicPartition]) -> None:
        if self._commits_sent:  # results come in the order the commits were sent
            self.stats.commit_latency.observe(time.monotonic() - self._commits_sent.popleft())
        if error is None:
            self.stats.commits += 1
        self._report_commit(offsets, KafkaException(error) if error is not None else None)

    def _on_stats(self, raw: str) -> None:
        """librdkafka's statistics (JSON), every statistics.interval.ms: keep those of the assigned
        partitions, whose watermarks give the consumer lag."""
        try:
            topics = json.loads(raw).get("topics") or {}
        except ValueError:
            return
        assignment = self.assignment
        kept = {}
        for topic, tstats in topics.items():
            for partition, pstats in (tstats.get("partitions") or {}).items():
                key = (topic, int(partition))
                if key in assignment:
                    kept[key] = {name: pstats.get(name) for name in STATS_KEPT}
        self.partition_stats = kept

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("fatal Kafka error: %s", error)
        else:
            log.debug("Kafka error (librdkafka retries it): %s", error)

    def _fail_pending(self, exc: BaseException) -> None:
        loop = self._loop
        failure = exc if isinstance(exc, Exception) else RuntimeError(exc)
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            if not isinstance(command, Commit):
                _resolve(loop, command.reply, failure, error=True)


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"
