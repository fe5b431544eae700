"""The Kafka source: the event loop's side of a consumer-group member; ``client.py`` is the thread's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from typing import Any, TypeVar

from confluent_kafka import Message, TopicPartition

from fastconsumer.errors import ConfigError
from fastconsumer.sources.base import Partition, Source, SourceListener, Watermarks
from fastconsumer.sources.kafka.client import Client, leave_in_time
from fastconsumer.sources.kafka.commands import Close, Command, Commit, CommitSync, Fetch, Pause
from fastconsumer.sources.kafka.config import SourceError, with_defaults

EARLIEST = ("earliest", "smallest", "beginning")

T = TypeVar("T")


class KafkaSource(Source):
    """Consumes ``topics`` as a member of ``group``.

    Making one creates no client: librdkafka checks the configuration when ``open()`` makes the client, and
    a bad property is then a ``ConfigError`` naming it.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str,
        topics: list[str],
        group: str,
        *,
        config: dict[str, Any] | None = None,
        from_beginning: bool = False,
        connect_timeout: float = 10.0,
        poll_timeout: float = 0.1,
    ) -> None:
        super().__init__()
        if not topics:
            raise ConfigError("at least one --topic is needed")
        self.bootstrap_servers = bootstrap_servers
        self.topics = list(topics)
        self.group = group
        self.connect_timeout = connect_timeout
        self.poll_timeout = poll_timeout
        # the assignment strategy only under the classic protocol: librdkafka refuses it under KIP-848's
        self.config: dict[str, Any] = with_defaults(
            {
                "auto.offset.reset": "earliest" if from_beginning else "latest",
                **(config or {}),
                "bootstrap.servers": bootstrap_servers,
                "group.id": group,
            }
        )
        self._client: Client | None = None

    def describe(self) -> str:
        return f"Kafka at {self.bootstrap_servers}, topics {', '.join(self.topics)}, group {self.group}"

    # -- what observability reads

    def enable_statistics(self, interval_ms: int = 5000) -> None:
        """librdkafka's statistics (watermarks, for the lag) every ``interval_ms``, unless
        ``statistics.interval.ms`` is configured already."""
        self.config.setdefault("statistics.interval.ms", interval_ms)

    def assignment(self) -> set[Partition]:
        return set(self._client.assignment) if self._client is not None else set()

    def watermarks(self) -> dict[Partition, Watermarks]:
        if self._client is None:
            return {}
        # librdkafka's isolation.level defaults to read_committed: the end is then the last stable offset
        # (the first offset of a transaction still open), which is as far as this member can read.
        uncommitted = self.config.get("isolation.level") == "read_uncommitted"
        field = "hi_offset" if uncommitted else "ls_offset"
        earliest = str(self.config.get("auto.offset.reset")) in EARLIEST
        out = {}
        for key, pstats in dict(self._client.partition_stats).items():
            end = _offset(pstats.get(field))
            out[key] = Watermarks(_offset(pstats.get("lo_offset")) if earliest else end, end)
        return out

    # -- the engine's side

    async def open(self, listener: SourceListener) -> None:
        loop = asyncio.get_running_loop()
        self._client = Client(
            self.config,
            self.topics,
            listener,
            loop,
            self.stats,
            connect_timeout=self.connect_timeout,
            poll_timeout=self.poll_timeout,
        )
        opened = loop.create_future()
        self._client.start(opened)
        await opened

    async def fetch(self, max_messages: int, prefetch: int = 0) -> list[Message]:
        return await self._ask(lambda reply: Fetch(max_messages, prefetch, reply))

    def pause(self, partitions: Collection[Partition]) -> None:
        if self._client is not None:
            self._client.commands.put(Pause(frozenset(partitions), True))

    def resume(self, partitions: Collection[Partition]) -> None:
        if self._client is not None:
            self._client.commands.put(Pause(frozenset(partitions), False))

    def commit(self, offsets: list[TopicPartition]) -> None:
        if self._client is not None:
            self._client.commands.put(Commit(offsets))

    async def commit_sync(self, offsets: list[TopicPartition]) -> list[TopicPartition]:
        return await self._ask(lambda reply: CommitSync(offsets, reply))

    def at_end(self) -> bool:
        if self._client is None:
            return False
        assignment = self._client.assignment
        return bool(assignment) and assignment <= self._client.eof and not self._client.holding()

    async def close(self) -> None:
        client = self._client
        if client is None or client.thread is None or not client.thread.is_alive():
            return
        then = "the group drops this member when its session times out"
        if await leave_in_time(self._ask(Close), f"group {self.group!r}", then):
            await asyncio.to_thread(client.thread.join)  # the thread ends right after the close
        client.assignment = set()

    async def _ask(self, command: Callable[[asyncio.Future[T]], Command]) -> T:
        client = self._client
        if client is None:
            raise RuntimeError("the Kafka source is not open")
        if client.failure is not None:
            raise SourceError(f"the Kafka consumer thread failed: {client.failure}") from client.failure
        reply: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        client.commands.put(command(reply))
        return await reply


def _offset(value: Any) -> int | None:
    return value if isinstance(value, int) and value >= 0 else None
