"""What the event loop asks of the Kafka thread: one type per request, served in the order sent."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from confluent_kafka import Message, TopicPartition


@dataclass(frozen=True)
class Fetch:
    """Up to ``wanted`` messages now; then up to ``prefetch`` more may be fetched ahead for next time."""

    wanted: int
    prefetch: int
    reply: asyncio.Future[list[Message]]


@dataclass(frozen=True)
class Commit:
    """An asynchronous commit: its result reaches the listener's ``on_commit``."""

    offsets: list[TopicPartition]


@dataclass(frozen=True)
class CommitSync:
    """Commit and wait: the reply is the offsets as committed, which may be further than asked (past
    transaction markers); it fails if any partition failed."""

    offsets: list[TopicPartition]
    reply: asyncio.Future[list[TopicPartition]]


@dataclass(frozen=True)
class Pause:
    """Fetch nothing more from ``partitions`` until resumed (``paused``: False resumes them)."""

    partitions: frozenset[tuple[str, int]]
    paused: bool


@dataclass(frozen=True)
class Close:
    """Leave the group (the revoke commits what is safe) and end the thread."""

    reply: asyncio.Future[None]


Command = Fetch | Commit | CommitSync | Pause | Close
