"""The share-group source (KIP-932, "queues for Kafka"): the event loop's side of a share-group member.

Members of a share group read the same partitions; the broker hands each record to one member and locks it
for ``share.record.lock.duration.ms`` (a group config, 30 s by default), and each record is acknowledged on
its own: ACCEPT (done), RELEASE (deliver it again, to any member, up to ``share.delivery.count.limit``),
REJECT (archive it). So this source has no offsets to commit: the engine reports each message's end to
``settle`` (``Source.settles_messages``), which becomes its acknowledgement:

- ``HANDLED`` and ``DEAD_LETTERED``: ACCEPT;
- ``SKIPPED``: REJECT (the broker archives it);
- ``RELEASED`` (``on_error="release"``), ``STOPPED``, ``INTERRUPTED``, ``FATAL``: RELEASE.

What the engine fetched and did not start by the stop, and what it abandoned, is released by ``close()``,
so the other members get it at once rather than when its lock expires.

Several ``ShareConsumer`` run per source (``consumers``), each on its own thread with one polled batch
open (``share_member.py``): explicit acknowledgement allows the next ``poll()`` only once every record of
the previous one is acknowledged, and one consumer would leave handler slots idle while a batch's last
records run.

The engine's ordering means nothing here (another member holds the neighbouring records), and a share
group has no end to read to: a ``Consumer`` refuses ``ordering`` other than ``unordered`` and
``exit_at_end`` with this source. ``from_beginning`` sets the group's ``share.auto.offset.reset`` to
``earliest`` with the admin client; it counts only for partitions the group has not started on.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from collections.abc import Collection
from typing import Any

from confluent_kafka import AcknowledgeType, KafkaException, Message, ShareConsumer, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource

from fastconsumer.errors import ConfigError
from fastconsumer.policy import Outcome
from fastconsumer.sources.base import Partition, Source, SourceListener
from fastconsumer.sources.kafka.client import leave_in_time, resolve
from fastconsumer.sources.kafka.config import SourceError, reason
from fastconsumer.sources.kafka.share_member import Ack as AckCommand
from fastconsumer.sources.kafka.share_member import Flush, Member, Stop, librdkafka_log

log = logging.getLogger("fastconsumer.kafka")

#: The acknowledgement each outcome the engine reports becomes.
ACKS: dict[Outcome, AcknowledgeType] = {
    Outcome.HANDLED: AcknowledgeType.ACCEPT,
    Outcome.DEAD_LETTERED: AcknowledgeType.ACCEPT,
    Outcome.SKIPPED: AcknowledgeType.REJECT,
    Outcome.RELEASED: AcknowledgeType.RELEASE,
    Outcome.STOPPED: AcknowledgeType.RELEASE,
    Outcome.INTERRUPTED: AcknowledgeType.RELEASE,
    Outcome.FATAL: AcknowledgeType.RELEASE,
    Outcome.REVOKED: AcknowledgeType.RELEASE,
}
#: What ``stats.acks`` counts.
ACK_COUNTERS = (
    "accepted",
    "released",
    "rejected",
    "redelivered",
    "max_delivery_count",
    "ack_failures",
    "late",
)
#: Properties fastconsumer sets on every share consumer.
FORCED = {"share.acknowledgement.mode": "explicit"}
#: Properties the admin client (topics, group configs) takes from the consumer's configuration.
ADMIN_PREFIXES = ("security.", "sasl.", "ssl.", "client.", "socket.", "broker.address.family")
#: The group's record lock duration when it cannot be read (the broker's default).
LOCK_MS_DEFAULT = 30_000
#: Of the lock duration (and of max.poll.interval.ms), how much a polled batch may stay open: the rest is
#: the margin for the release to reach the broker before the locks expire.
DEADLINE_SHARE = 0.8


class KafkaShareSource(Source):
    """Consumes ``topics`` as a member of the share group ``group`` (Kafka 4.2+), with ``consumers``
    share consumers. Making one creates no client; ``open()`` checks the broker, the topics and the
    configuration (a bad property is a ``ConfigError`` naming it)."""

    name = "kafka-share"
    settles_messages = True

    def __init__(
        self,
        bootstrap_servers: str,
        topics: list[str],
        group: str,
        *,
        config: dict[str, Any] | None = None,
        consumers: int = 4,
        from_beginning: bool = False,
        connect_timeout: float = 10.0,
        poll_timeout: float = 0.1,
    ) -> None:
        super().__init__()
        if not topics:
            raise ConfigError("at least one --topic is needed")
        if any(t.startswith("^") for t in topics):
            raise ConfigError("a share group subscribes to topic names, not patterns (^...)")
        if isinstance(consumers, bool) or not isinstance(consumers, int) or consumers < 1:
            raise ConfigError(f"consumers must be an integer >= 1, got {consumers!r}")
        self.bootstrap_servers = bootstrap_servers
        self.topics = list(topics)
        self.group = group
        self.consumers = consumers
        self.from_beginning = from_beginning
        self.connect_timeout = connect_timeout
        self.poll_timeout = poll_timeout
        self.config: dict[str, Any] = {
            **(config or {}),
            **FORCED,
            "bootstrap.servers": bootstrap_servers,
            "group.id": group,
        }
        self.max_poll_interval = int(self.config.get("max.poll.interval.ms", 300_000)) / 1000.0
        self.lock_ms = LOCK_MS_DEFAULT
        self.ack_deadline = DEADLINE_SHARE * min(self.lock_ms / 1000.0, self.max_poll_interval)
        self._members: list[Member] = []
        self._lock = threading.Lock()
        self._ready: dict[Partition, deque[Message]] = {}  # delivered, not yet handed to the engine
        self._buffered = 0
        self._owner: dict[int, Member] = {}  # id() -> member, of every record delivered and not settled
        self._paused: set[Partition] = set()
        self._seen: set[Partition] = set()
        self._target = 0  # records the engine may take: members poll while fewer are buffered
        self._loop: asyncio.AbstractEventLoop | None = None
        self._arrived: asyncio.Event | None = None
        self._counts_lock = threading.Lock()
        # What the summary and the metrics report: records accepted, released, rejected; records delivered
        # more than once and the highest delivery count seen; acknowledgements the broker refused; outcomes
        # that came after their record was released at its deadline.
        self.stats.acks.update(
            dict.fromkeys(
                ACK_COUNTERS,
                0,
            )
        )
        self.acks = self.stats.acks

    def describe(self) -> str:
        return f"Kafka at {self.bootstrap_servers}, topics {', '.join(self.topics)}, share group {self.group}"

    def assignment(self) -> set[Partition]:
        """The partitions this member has had records from: a share consumer does not tell its assignment."""
        return set(self._seen)

    # -- the engine's side

    async def open(self, listener: SourceListener) -> None:
        self._loop = asyncio.get_running_loop()
        self._arrived = asyncio.Event()
        self.lock_ms = await asyncio.to_thread(self._prepare_group)
        self.ack_deadline = DEADLINE_SHARE * min(self.lock_ms / 1000.0, self.max_poll_interval)
        members = [Member(i, self, self.config) for i in range(self.consumers)]
        try:  # librdkafka checks the configuration when the client is made: a bad one is exit 2
            ShareConsumer({**self.config, "logger": librdkafka_log}).close()
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Kafka share consumer property: {reason(exc)}") from None
        self._members = members
        for member in members:
            member.start()

    def _prepare_group(self) -> int:
        """Check the broker and the topics, apply ``from_beginning``, and read the group's lock duration."""
        admin_config: dict[str, Any] = {
            k: v for k, v in self.config.items() if k == "bootstrap.servers" or k.startswith(ADMIN_PREFIXES)
        }
        try:
            admin = AdminClient(admin_config, logger=librdkafka_log)
        except (KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(f"invalid Kafka property: {reason(exc)}") from None
        try:
            metadata = admin.list_topics(timeout=self.connect_timeout)
        except KafkaException:
            raise SourceError(
                f"cannot reach Kafka at {self.bootstrap_servers} within {self.connect_timeout:g} s: "
                "check --bootstrap-servers and that the broker is up"
            ) from None
        missing = [t for t in self.topics if t not in metadata.topics]
        if missing:
            raise ConfigError(f"topic {missing[0]!r} does not exist on {self.bootstrap_servers}")
        group = ConfigResource(ConfigResource.Type.GROUP, self.group)
        if self.from_beginning:
            earliest = ConfigEntry(
                "share.auto.offset.reset", "earliest", incremental_operation=AlterConfigOpType.SET
            )
            resource = ConfigResource(ConfigResource.Type.GROUP, self.group, incremental_configs=[earliest])
            try:
                for future in admin.incremental_alter_configs([resource]).values():
                    future.result(timeout=self.connect_timeout)
            except Exception as exc:
                raise SourceError(
                    f"cannot set share.auto.offset.reset=earliest on share group {self.group!r}: "
                    f"{reason(exc)}"
                ) from None
            log.info("share group %s: share.auto.offset.reset=earliest", self.group)
        try:
            for future in admin.describe_configs([group]).values():
                entry = future.result(timeout=self.connect_timeout).get("share.record.lock.duration.ms")
                if entry is not None and entry.value:
                    return int(entry.value)
        except Exception as exc:  # not allowed to describe it: the broker's default
            log.debug("cannot read share group %s's lock duration: %s", self.group, exc)
        return LOCK_MS_DEFAULT

    async def fetch(self, max_messages: int, prefetch: int = 0) -> list[Message]:
        self._check_members()
        arrived = self._arrived
        assert arrived is not None, "the share source is not open"
        self._target = max_messages + prefetch
        if self._available() == 0:
            arrived.clear()
            if self._available() == 0:
                try:
                    await asyncio.wait_for(arrived.wait(), self.poll_timeout)
                except asyncio.TimeoutError:
                    return []
                except asyncio.CancelledError:  # the engine stops fetching: so do the members
                    self._target = 0
                    raise
                self._check_members()
        out: list[Message] = []
        with self._lock:
            ready = self._ready
            while len(out) < max_messages:  # a run of each partition in turn, in the order delivered
                took = False
                for key, queue in ready.items():
                    if queue and key not in self._paused:
                        n = min(len(queue), max_messages - len(out))
                        out.extend(queue.popleft() for _ in range(n))
                        took = True
                if not took:
                    break
            self._buffered -= len(out)
        return out

    def settle(self, messages: list[Message], outcome: Outcome) -> None:
        kind = ACKS[outcome]
        late = 0
        with self._lock:  # Member.take_back() relies on it: an owner popped here has its Ack queued
            owner = self._owner
            for msg in messages:
                member = owner.pop(id(msg), None)
                if member is None:
                    late += 1
                else:
                    member.commands.put(AckCommand(msg, kind))
        if late:
            log.debug("%d outcome(s) for records released already (their deadline passed)", late)
            self._add("late", late)

    def pause(self, partitions: Collection[Partition]) -> None:
        self._paused.update(partitions)

    def resume(self, partitions: Collection[Partition]) -> None:
        self._paused.difference_update(partitions)
        if self._arrived is not None:
            self._arrived.set()

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Nothing to do: each member sends its acknowledgements as they come (every 100 ms at most)."""

    async def commit_sync(self, offsets: list[TopicPartition]) -> list[TopicPartition]:
        """Send every acknowledgement recorded and wait for the broker; no offsets are committed."""
        alive = [member for member in self._members if member.thread.is_alive()]
        await asyncio.gather(*(self._ask(member, Flush) for member in alive))
        return []

    def at_end(self) -> bool:
        return False  # a share group has no end to read to

    async def close(self) -> None:
        members, self._members = self._members, []
        alive = [m for m in members if m.thread.is_alive()]
        stops = asyncio.gather(*(self._ask(m, Stop) for m in alive), return_exceptions=True)
        self._seen = set()
        then = "the broker hands this member's records to others when their locks expire"
        if not await leave_in_time(stops, f"share group {self.group!r}", then):
            return
        results = stops.result()
        for member in members:
            await asyncio.to_thread(member.thread.join)  # each ends right after its close
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise SourceError(f"closing the share consumers failed: {reason(errors[0])}") from errors[0]

    # -- what the members call, from their threads

    def wants_more(self) -> bool:
        return self._buffered < self._target

    def deliver(self, member: Member, records: list[Message]) -> None:
        redelivered = 0
        highest = 0
        with self._lock:
            for msg in records:
                key = (msg.topic(), msg.partition())
                queue = self._ready.get(key)  # type: ignore[arg-type]
                if queue is None:
                    queue = self._ready[key] = deque()  # type: ignore[index]
                    self._seen.add(key)  # type: ignore[arg-type]
                queue.append(msg)
                self._owner[id(msg)] = member
                count = msg.delivery_count() or 1
                if count > 1:
                    redelivered += 1
                    highest = max(highest, count)
            self._buffered += len(records)
        if redelivered:
            with self._counts_lock:
                self.acks["redelivered"] += redelivered
                self.acks["max_delivery_count"] = max(self.acks["max_delivery_count"], highest)
        self.wake()

    def take_back(self, member: Member, records: list[Message]) -> tuple[list[Message], int]:
        """Of ``records``, those still unsettled (``member``'s, and no outcome reported), taken back from
        the engine's reach, and how many of them it had not fetched yet."""
        taken: list[Message] = []
        ids: set[int] = set()
        with self._lock:
            owner = self._owner
            for msg in records:
                if owner.get(id(msg)) is member:
                    del owner[id(msg)]
                    taken.append(msg)
                    ids.add(id(msg))
            unstarted = 0
            for queue in self._ready.values():
                if any(id(m) in ids for m in queue):
                    kept = [m for m in queue if id(m) not in ids]
                    unstarted += len(queue) - len(kept)
                    queue.clear()
                    queue.extend(kept)
            self._buffered -= unstarted
        return taken, unstarted

    def count(self, kind: AcknowledgeType, n: int) -> None:
        name = {
            AcknowledgeType.ACCEPT: "accepted",
            AcknowledgeType.RELEASE: "released",
            AcknowledgeType.REJECT: "rejected",
        }[kind]
        self._add(name, n)

    def count_failures(self, n: int) -> None:
        self._add("ack_failures", n)

    def wake(self) -> None:
        loop, arrived = self._loop, self._arrived
        if loop is not None and arrived is not None:
            try:
                loop.call_soon_threadsafe(arrived.set)
            except RuntimeError:  # the loop is closed: nobody waits any more (a close that ran out of time)
                pass

    # -- internals

    def _add(self, name: str, n: int) -> None:
        with self._counts_lock:
            self.acks[name] += n

    def _available(self) -> int:
        if not self._paused:
            return self._buffered
        with self._lock:
            return sum(len(q) for key, q in self._ready.items() if key not in self._paused)

    def _check_members(self) -> None:
        for member in self._members:
            if member.failure is not None:
                raise SourceError(
                    f"share consumer {member.index} failed: {reason(member.failure)}"
                ) from member.failure

    async def _ask(self, member: Member, command: type[Flush] | type[Stop]) -> None:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def answer(error: BaseException | None) -> None:
            resolve(loop, done, error, error=error is not None)

        member.commands.put(command(answer))
        if not member.thread.is_alive():  # died meanwhile: nobody will answer
            return
        await done
