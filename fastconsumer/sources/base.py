"""The contract between the engine and where messages come from (the memory log, Kafka)."""

from __future__ import annotations

from typing import Protocol

from confluent_kafka import KafkaException, Message, TopicPartition


class SourceListener(Protocol):
    """What a source tells the engine. Called on the engine's event loop."""

    def on_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        """An asynchronous commit finished (``error`` is None when it succeeded)."""

    async def on_revoke(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Partitions are leaving: let their running handlers finish, forget them, and return the offsets
        the source must commit for them before it lets them go."""

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Partitions are already gone: forget them without committing."""


class Source(Protocol):
    name: str

    def describe(self) -> str:
        """Where messages come from, for people: "Kafka at host:9092, topics a, b, group g"."""

    async def open(self, listener: SourceListener) -> None:
        """Connect and subscribe; raise if that cannot happen."""

    async def fetch(self, max_messages: int, prefetch: int = 0) -> list[Message]:
        """Up to ``max_messages`` messages, waiting a short while for some; may return an empty list.

        ``prefetch``: how many more the source may fetch ahead, for the next call, without passing the
        engine's cap."""

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Request an asynchronous commit; its result reaches ``listener.on_commit``."""

    async def commit_sync(self, offsets: list[TopicPartition]) -> None:
        """Commit and wait for the result; raise if it failed."""

    def at_end(self) -> bool:
        """True when every assigned partition has been fetched to its end."""

    async def close(self) -> None:
        """Leave the group and release resources."""
