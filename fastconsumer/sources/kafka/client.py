"""The thread that owns the confluent_kafka.Consumer and is its only caller.

librdkafka's consumer is not meant to be shared between threads, and its rebalance callbacks run inside
``consume()``; so fetches, commits, pause/resume and rebalances all happen on this thread, which serves the
event loop's commands (``commands.py``) in the order sent. Between commands it keeps polling: fetching ahead
within what the engine's cap allows, or paused at the cap, so the member stays in the group.

Commits past offsets that hold no message. A transactional producer ends each transaction with a commit or
abort marker (a control record), which takes an offset but is never delivered; aborted records are not
delivered either under read_committed. The engine commits one past the last message handled, which is then a
marker's offset, and a partition whose log ends with a marker would never reach lag 0. What librdkafka does,
checked against a broker with a transactional producer (librdkafka 2.16): ``position()`` is one past the last
message ``consume()`` returned, and moves past markers and aborted records as ``consume()`` serves their
control records: within the same call if the batch was not full, else at the next call, even one that returns
nothing (``rd_kafka_fetch_op_app_prepare`` stores the position of a control record and drops it). It stops at
the last stable offset (an open transaction) and never passes a message ``consume()`` did not return. So when
every message this client delivered for a partition is handled (the engine asks for one past the last of
them) and none is held back here, the partition's position is what to commit; and since a marker can be
served after that commit (or written after it, under read_uncommitted), such partitions are watched
(``_tail``) and their position committed when it moves without a message (``_follow_up``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from fastconsumer import core
from fastconsumer.errors import ConfigError
from fastconsumer.sources.base import Partition, SourceListener, SourceStats
from fastconsumer.sources.kafka.commands import Close, Command, Commit, CommitSync, Fetch, Pause
from fastconsumer.sources.kafka.config import CLOSE_TIMEOUT_S, SourceError, incremental, reason
from fastconsumer.sources.kafka.pauses import Pauses, size_of

log = logging.getLogger("fastconsumer.kafka")
librdkafka_log = logging.getLogger("fastconsumer.librdkafka")

# What _on_stats keeps of each partition's statistics.
STATS_KEPT = ("hi_offset", "ls_offset", "lo_offset", "committed_offset", "consumer_lag", "fetchq_cnt")

#: Seconds a synchronous commit goes on retrying a coordinator that moved, loads or timed out; a revoke's
#: commit, which holds up the group's rebalance, gets less.
COMMIT_RETRY_S = 5.0
REVOKE_COMMIT_RETRY_S = 3.0
#: Errors a commit is tried again for, besides those librdkafka marks retriable.
RETRIABLE = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
        KafkaError._WAIT_COORD,
    }
)
#: librdkafka's default max.partition.fetch.bytes: what a held-back partition parks before it is paused.
PARK_BYTES = 1_048_576
#: Seconds a wait for messages goes without looking for a command from the event loop.
SLICE = 0.01
#: Seconds between looks at the positions of caught-up partitions (``_follow_up``).
FOLLOW_UP_S = 0.5

T = TypeVar("T")


class _ClientLog:
    """librdkafka's log for one client, held back while it connects: an unreachable broker is then reported
    once, in one line, instead of a line per retry."""

    def __init__(self) -> None:
        self.connecting = False

    def log(self, level: int, msg: str, *args: Any) -> None:
        if not self.connecting:
            librdkafka_log.log(level, msg, *args)


def resolve(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], value: Any, error: bool = False
) -> None:
    """Settle ``fut`` from the client's thread, unless its loop is closed."""

    def apply() -> None:
        if not fut.done():
            fut.set_exception(value) if error else fut.set_result(value)

    try:
        loop.call_soon_threadsafe(apply)
    except RuntimeError:  # the loop is closed: nobody waits any more (a close that ran out of time)
        pass


async def leave_in_time(leaving: Awaitable[Any], who: str, then: str) -> bool:
    """Await ``leaving`` (a close, which leaves the group) for ``CLOSE_TIMEOUT_S`` at most; past it, say so
    and what follows (``then``), and return False: the thread is left to finish by itself."""
    try:
        await asyncio.wait_for(leaving, CLOSE_TIMEOUT_S)
    except asyncio.TimeoutError:
        log.warning(
            "leaving %s did not finish within %g s (is the broker reachable?): stopping without it; %s",
            who,
            CLOSE_TIMEOUT_S,
            then,
        )
        return False
    return True


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
        # the offset of the last message handed to the engine, per partition since it was assigned
        self._delivered: dict[Partition, int] = {}
        # partitions whose every delivered message was handled as of their last commit here, with the
        # offset committed then (-1: none yet, nothing delivered since the assignment)
        self._tail: dict[Partition, int] = {}
        self._follow_up_at = 0.0
        self._ahead = 0  # how many messages the engine's cap lets this thread hold for its next fetch
        # a held-back partition parks about one fetch response before librdkafka pauses it (pauses.py)
        self._pauses = Pauses(int(config.get("max.partition.fetch.bytes") or PARK_BYTES))
        self._reassigned = False
        self._commits_sent: deque[float] = deque()  # when each asynchronous commit in flight was sent
        self._queued: dict[
            Partition, TopicPartition
        ] = {}  # asked while a commit was in flight (_commit_async)
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
            resolve(loop, opened, ConfigError(f"invalid Kafka consumer property: {reason(exc)}"), error=True)
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
            resolve(loop, opened, error, error=True)
            return
        finally:
            client_log.connecting = False
        missing = [t for t in self.topics if not t.startswith("^") and t not in metadata.topics]
        if missing:
            consumer.close()
            where = self.bootstrap_servers
            resolve(loop, opened, ConfigError(f"topic {missing[0]!r} does not exist on {where}"), error=True)
            return
        consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )
        resolve(loop, opened, None)
        try:
            self._serve(consumer)
        except BaseException as exc:  # surfaces through the next fetch and stops the run
            if loop.is_closed():  # the run ended without waiting for this close (CLOSE_TIMEOUT_S)
                return
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
                    self._hold(consumer, room)
                elif not self._over_cap():
                    # Fetched ahead as far as allowed: poll on, a message at a time, so the member stays in
                    # the group and rebalances are served. Not paused yet: a pause drops what librdkafka
                    # fetched ahead, and a slow handler (a batch taking over poll_timeout) then waited
                    # about a second for each batch to come again from the broker.
                    self._set_paused(consumer, False)
                    self._hold(consumer, 1)
                else:
                    # About a fetch response over the cap (the engine is stuck, or very slow): pause, and
                    # go on polling.
                    self._set_paused(consumer, True)
                    self._hold(consumer, 1000)
                self._between(consumer)
                continue
            reply = None if isinstance(command, (Commit, Pause)) else command.reply
            try:
                self._apply(consumer, command)
            except KafkaException as exc:
                if reply is not None:  # the engine decides: a failed fetch stops the run
                    resolve(loop, reply, exc, error=True)
            except BaseException as exc:
                if reply is not None:
                    resolve(loop, reply, RuntimeError(f"Kafka consumer thread failed: {exc!r}"), error=True)
                raise
            if isinstance(command, Close):
                return
            self._between(consumer)

    def _between(self, consumer: KafkaConsumer) -> None:
        """After each command and each poll: send the commit queued behind one in flight, and commit the
        positions of caught-up partitions that moved past markers."""
        if self._queued and not self._commits_sent:
            queued = [tp for key, tp in self._queued.items() if key in self.assignment]
            self._queued.clear()
            if queued:
                self._commit_async(consumer, queued)
        if self._tail:
            self._follow_up(consumer)

    def _apply(self, consumer: KafkaConsumer, command: Command) -> None:
        """One command from the event loop; an exception raised here fails its reply."""
        loop = self._loop
        if isinstance(command, Fetch):
            self._fetch(consumer, command)
        elif isinstance(command, Commit):
            # A commit queued while a revoke was under way must not move a partition that left: its
            # synchronous commit on revoke is the newer one.
            offsets = [tp for tp in command.offsets if (tp.topic, tp.partition) in self.assignment]
            if offsets:
                self._commit_async(consumer, self._settle(consumer, offsets))
        elif isinstance(command, Pause):
            self._held = self._pauses.ask(command.partitions, command.paused, self.assignment, self._held)
            self._set_paused(consumer, self._pauses.everything)
        elif isinstance(command, CommitSync):
            self._await_commits(consumer, COMMIT_RETRY_S)
            # Only what is assigned now: a partition revoked meanwhile was committed by its revoke, and one
            # lost may have an owner past this offset (the group takes a commit of any of its partitions).
            offsets = [tp for tp in command.offsets if (tp.topic, tp.partition) in self.assignment]
            for tp in offsets:  # older than this commit: never to be sent after it
                self._queued.pop((tp.topic, tp.partition), None)
            done = []
            if offsets:
                done = self._commit_sync(consumer, self._settle(consumer, offsets), COMMIT_RETRY_S)
            failed = [tp for tp in done if tp.error is not None]
            if failed:  # some partitions of a commit that did not fail as a whole
                error = failed[0].error
                assert error is not None
                reason = f"commit of {_offsets(failed)} failed: {error.str()}"
                raise KafkaException(KafkaError(error.code(), reason))
            resolve(loop, command.reply, done)
        else:
            try:
                consumer.close()  # leaves the group: the revoke callback commits what is safe
            finally:
                resolve(loop, command.reply, None)

    def _fetch(self, consumer: KafkaConsumer, command: Fetch) -> None:
        wanted = command.wanted
        self._set_paused(consumer, False)
        if len(self._held) < wanted:
            # A revoke during this consume() drops the held messages of the partitions that left (they
            # belong to the next owner); what it returns was fetched after it, from the partitions owned now.
            self._hold(consumer, wanted - len(self._held))
        messages, self._held = self._held[:wanted], self._held[wanted:]
        resolve(self._loop, command.reply, messages)
        if messages:
            self._note_delivered(messages)
        # Fetch the next batch while the loop handles this one (librdkafka waits without the GIL).
        self._ahead = min(command.prefetch, wanted)
        prefetch = self._ahead - len(self._held)
        if prefetch > 0 and self.commands.empty():
            self._hold(consumer, prefetch, wait=0)

    def _hold(self, consumer: KafkaConsumer, n: int, wait: float | None = None, answer: bool = True) -> int:
        """Fetch up to ``n`` more messages into ``_held``; return how many came (parked ones included).

        What librdkafka has now, at once; when it has nothing, the first to come within ``wait`` seconds
        (``poll_timeout`` by default), then what came with it. librdkafka's ``consume(n, timeout)`` waits
        for all ``n`` or the timeout, so a partial batch would cost the whole timeout: it is never asked to
        wait for more than one. The wait is cut in slices of ``SLICE``, and with ``answer`` ends as soon as
        a command arrives (a resume, a commit), which so waits a slice at most.

        Each consume() call's messages join ``_held`` before the next call: a revoke inside a call replaces
        ``_held`` (dropping the partitions that left), and what an earlier call returned must have been in
        it by then. For the same reason not ``self._held.extend(self._consume(...))``, which binds the list
        before consume() runs.
        """
        got = self._take(consumer, n, 0.0)
        wait = self.poll_timeout if wait is None else wait
        if got or wait <= 0:
            return got
        deadline = time.monotonic() + wait
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (answer and not self.commands.empty()):
                return 0
            if self._take(consumer, 1, min(SLICE, left)):
                return 1 + (self._take(consumer, n - 1, 0.0) if n > 1 else 0)

    def _take(self, consumer: KafkaConsumer, n: int, timeout: float) -> int:
        fresh = self._consume(consumer, n, timeout)
        if fresh:
            self._held.extend(self._pauses.park(consumer, fresh))
        return len(fresh)

    def _over_cap(self) -> bool:
        """Whether the messages held beyond what the engine allowed ahead come to about a fetch response
        (``park_bytes``), sized by the first of them."""
        over = len(self._held) - self._ahead
        if over <= 0:
            return False
        return over * size_of(self._held[self._ahead]) >= self._pauses.park_bytes

    def holding(self) -> bool:
        """Whether messages fetched and not delivered wait here, held ahead or parked for a paused partition
        (read from the event loop too: a partition at its end is not read to its end while they wait)."""
        return bool(self._held) or any(self._pauses.parked.values())

    def _note_delivered(self, messages: list[Message]) -> None:
        """Remember the last offset handed to the engine per partition (a batch is in offset order per
        partition): in the core, which reads each message in place."""
        core.impl.note_last_offsets(messages, self._delivered)

    # -- commits

    def _held_keys(self) -> set[Partition]:
        """Partitions with messages fetched and not delivered: their position is past what the engine has."""
        held: set[Partition] = {(m.topic(), m.partition()) for m in self._held}  # type: ignore[misc]
        return held | self._pauses.parked_keys()

    def _positions(self, consumer: KafkaConsumer, keys: list[Partition]) -> dict[Partition, int]:
        """librdkafka's position of each partition where known: one past the last message consume()
        returned, moved past the control records (and aborted records) it has served since."""
        try:
            found = consumer.position([TopicPartition(t, p) for t, p in keys])
        except KafkaException:
            return {}
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.error is None and tp.offset >= 0}

    def _settle(
        self, consumer: KafkaConsumer, offsets: list[TopicPartition], held: set[Partition] | None = None
    ) -> list[TopicPartition]:
        """What to commit for the engine's ``offsets``: a partition asked for one past the last message
        delivered (all delivered are handled), with nothing held back here, gets its position when that is
        further (past markers and aborted records). Others as asked."""
        delivered = self._delivered
        asked = [
            (tp.topic, tp.partition)
            for tp in offsets
            if delivered.get((tp.topic, tp.partition), -2) == tp.offset - 1
        ]
        if not asked:
            return offsets
        if held is None:
            held = self._held_keys()
        ready = {key for key in asked if key not in held}
        if not ready:
            return offsets
        positions = self._positions(consumer, list(ready))
        tail = self._tail
        out = []
        for tp in offsets:
            key = (tp.topic, tp.partition)
            if key in ready:
                position = positions.get(key, -1)
                if position > tp.offset:
                    tp = TopicPartition(tp.topic, tp.partition, position)
                tail[key] = tp.offset
            out.append(tp)
        return out

    def _moved(
        self, consumer: KafkaConsumer, keys: list[Partition], held: set[Partition]
    ) -> list[TopicPartition]:
        """Of ``keys`` (in ``_tail``), the positions that moved past their last commit here without a
        message: over markers and aborted records served since. A partition that got a message since leaves
        ``_tail``: the engine commits it once handled."""
        tail, delivered = self._tail, self._delivered
        quiet = []
        for key in keys:
            last = delivered.get(key)
            if key in held or (last is not None and last >= tail[key]):
                del tail[key]
            else:
                quiet.append(key)
        if not quiet:
            return []
        out = []
        for key, position in self._positions(consumer, quiet).items():
            if position > tail[key]:
                tail[key] = position
                out.append(TopicPartition(key[0], key[1], position))
        return out

    def _follow_up(self, consumer: KafkaConsumer) -> None:
        """Every FOLLOW_UP_S: commit, asynchronously, the caught-up partitions whose position moved past
        markers since their last commit; the engine asks for nothing more until a message comes."""
        now = time.monotonic()
        if now < self._follow_up_at:
            return
        self._follow_up_at = now + FOLLOW_UP_S
        assignment = self.assignment
        for key in [key for key in self._tail if key not in assignment]:
            del self._tail[key]
        offsets = self._moved(consumer, list(self._tail), self._held_keys())
        if offsets:
            log.debug("committing past markers: %s", _offsets(offsets))
            self._commit_async(consumer, offsets)

    def _commit_async(self, consumer: KafkaConsumer, offsets: list[TopicPartition]) -> None:
        """One asynchronous commit in flight at a time. librdkafka sends a commit the coordinator did not take
        (it moved, or the broker restarted) again later, after the newer ones queued meanwhile, so it lands
        last and takes the group's offset back (seen in a broker restart: 4281 committed after 4800). Offsets
        asked while one is in flight wait in ``_queued``, the newest per partition, and go when it is done."""
        if self._commits_sent:
            for tp in offsets:
                self._queued[(tp.topic, tp.partition)] = tp
            return
        self._commits_sent.append(time.monotonic())
        try:
            consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as exc:
            self._commits_sent.pop()  # no callback follows
            self._report_commit(offsets, exc)

    def _await_commits(self, consumer: KafkaConsumer, within: float) -> None:
        """Wait up to ``within`` seconds for the asynchronous commit in flight, which could otherwise land
        after a synchronous one and take it back. Polling serves its callback; a message the poll returns
        waits in ``_held`` (and keeps that partition's commit from moving past it)."""
        if not self._commits_sent:
            return
        self._set_paused(consumer, True)  # no fetching meanwhile; the next fetch resumes
        deadline = time.monotonic() + within
        while self._commits_sent and time.monotonic() < deadline:
            self._hold(consumer, 1, SLICE, answer=False)

    def _commit_sync(
        self, consumer: KafkaConsumer, offsets: list[TopicPartition], within: float
    ) -> list[TopicPartition]:
        """Commit and wait, timed; librdkafka calls no on_commit for a synchronous commit. A coordinator
        that moved, is loading or timed out (a retriable error, of the whole commit or of some partitions)
        is tried again with backoff for ``within`` seconds. Returns each partition's result: its offset, and
        its ``error`` where that partition failed; raises if the whole commit failed."""
        started = time.monotonic()
        deadline = started + within
        results: dict[Partition, TopicPartition] = {}
        pending, backoff = offsets, 0.05
        while True:
            try:
                done = consumer.commit(offsets=pending, asynchronous=False)
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is None or not _retriable(error) or time.monotonic() + backoff > deadline:
                    if error is None:
                        raise
                    reason = f"commit of {_offsets(pending)} failed: {error.str()}"
                    raise KafkaException(
                        KafkaError(error.code(), reason, fatal=error.fatal(), retriable=error.retriable())
                    ) from exc
                log.debug("commit failed, retrying: %s", error)
            else:
                for tp in done or ():
                    results[(tp.topic, tp.partition)] = tp
                retry = [tp for tp in done or () if tp.error is not None and _retriable(tp.error)]
                if not retry or time.monotonic() + backoff > deadline:
                    break
                log.debug("commit of %s failed, retrying: %s", _offsets(retry), retry[0].error)
                again = {(tp.topic, tp.partition) for tp in retry}
                pending = [tp for tp in offsets if (tp.topic, tp.partition) in again]
            time.sleep(backoff)
            backoff = min(2 * backoff, 0.5)
        self.stats.commit_latency.observe(time.monotonic() - started)
        out = [results.get((tp.topic, tp.partition), tp) for tp in offsets]
        if all(tp.error is None for tp in out):
            self.stats.commits += 1
        return out

    def _consume(self, consumer: KafkaConsumer, n: int, timeout: float | None = None) -> list[Message]:
        batch = consumer.consume(num_messages=n, timeout=self.poll_timeout if timeout is None else timeout)
        if self._reassigned:
            # librdkafka keeps a partition's pause across a revoke and a new assignment: set it afresh.
            self._reassigned = False
            self._pauses.reassigned(consumer, {(tp.topic, tp.partition) for tp in consumer.assignment()})
        if self.eof or core.impl.first_error(batch) >= 0:
            return self._sift(batch)
        return batch

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

    def _set_paused(self, consumer: KafkaConsumer, everything: bool) -> None:
        """Pause everything (the engine is full), or only what the engine asked to pause."""
        self._pauses.apply(consumer, self.assignment, everything)

    def _call_engine(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run an engine coroutine on the event loop and wait for it from this thread; RuntimeError once the
        loop is closed (the run ended without waiting for this thread: a commit or close out of time)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()
            raise
        return future.result()

    def _report_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        try:
            self._loop.call_soon_threadsafe(self._listener.on_commit, offsets, error)
        except RuntimeError:  # the loop is closed: nobody waits for it any more
            pass

    def _on_assign(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self.stats.rebalances += 1
        keys = {(tp.topic, tp.partition) for tp in partitions}
        if not incremental(self.config):
            self.assignment = keys  # eager: each assignment is the whole of it
        else:
            self.assignment |= keys
        self.eof -= keys
        for key in keys:  # nothing delivered yet: a position moved by markers alone is committed
            self._delivered.pop(key, None)
            self._tail[key] = -1
        self._reassigned = True
        log.info("assigned %s", _names(partitions))
        # What the last owners committed, metadata included: the engine skips what they handled already.
        self._call_engine(_call(self._listener.on_assign, self._committed(consumer, partitions)))

    def _committed(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """The group's committed offsets of ``partitions`` with their metadata, a coordinator that is loading
        or moving (after a broker restart) tried again for COMMIT_RETRY_S; unknown (offset -1001) if it
        cannot be read, which only means the engine skips nothing."""
        deadline = time.monotonic() + COMMIT_RETRY_S
        backoff = 0.05
        while True:
            try:
                found = consumer.committed(partitions, timeout=max(0.1, deadline - time.monotonic()))
                retry = [tp for tp in found if tp.error is not None and _retriable(tp.error)]
                if not retry:
                    return [tp for tp in found if tp.error is None]
                error: KafkaError | None = retry[0].error
            except KafkaException as exc:
                error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
                if error is None or not _retriable(error):
                    log.warning("cannot read the committed offsets of %s: %s", _names(partitions), exc)
                    return []
            if time.monotonic() + backoff > deadline:
                log.warning("cannot read the committed offsets of %s: %s", _names(partitions), error)
                return []
            time.sleep(backoff)
            backoff = min(2 * backoff, 0.5)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        """Partitions that left: none of their held messages may reach the engine any more."""
        self.stats.rebalances += 1
        keys = {(tp.topic, tp.partition) for tp in partitions}
        self._held = [m for m in self._held if (m.topic(), m.partition()) not in keys]
        self.assignment -= keys
        self.eof -= keys
        self._pauses.forget(keys)
        for key in keys:  # the revoke's commit is newer; a lost partition is not ours to commit
            self._queued.pop(key, None)

    def _drop(self, keys: set[Partition]) -> None:
        for key in keys:
            self._delivered.pop(key, None)
            self._tail.pop(key, None)

    def _on_revoke(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        keys = {(tp.topic, tp.partition) for tp in partitions}
        held = self._held_keys() & keys  # fetched and never delivered: _forget drops them
        self._forget(partitions)
        try:
            offsets = list(
                self._settle(consumer, self._call_engine(self._listener.on_revoke(partitions)), held)
            )
            asked = {(tp.topic, tp.partition) for tp in offsets}
            offsets += self._moved(consumer, [k for k in keys if k in self._tail and k not in asked], held)
        finally:
            self._drop(keys)
        if offsets:
            try:
                done = self._commit_sync(consumer, offsets, REVOKE_COMMIT_RETRY_S)
            except KafkaException as exc:
                log.warning("commit on revoke failed; those messages will be delivered again: %s", exc)
                self._report_commit(offsets, exc)
            else:
                failed = [tp for tp in done if tp.error is not None]
                if failed:
                    log.warning(
                        "commit on revoke failed for %s; those messages will be delivered again: %s",
                        _offsets(failed),
                        failed[0].error,
                    )
                self._report_commit(done, None)
        log.info("revoked %s", _names(partitions))

    def _on_lost(self, consumer: KafkaConsumer, partitions: list[TopicPartition]) -> None:
        self._forget(partitions)
        self._drop({(tp.topic, tp.partition) for tp in partitions})
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
            if not isinstance(command, (Commit, Pause)):
                resolve(loop, command.reply, failure, error=True)


async def _call(fn: Any, *args: Any) -> Any:
    return fn(*args)


def _names(partitions: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in partitions) or "nothing"


def _offsets(offsets: list[TopicPartition]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in offsets) or "nothing"


def _retriable(error: KafkaError) -> bool:
    return bool(error.retriable()) or error.code() in RETRIABLE
