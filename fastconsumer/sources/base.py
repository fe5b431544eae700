"""The contract between the engine and where messages come from, including what observability reads.

A new source implements ``Source`` and passes ``tests/test_source_contract.py``; the engine, the metrics and
the probes then work with it unchanged.
"""

from __future__ import annotations

import abc
from collections.abc import Collection
from dataclasses import dataclass, field

from confluent_kafka import KafkaException, Message, TopicPartition

from fastconsumer.histogram import Histogram
from fastconsumer.policy import Outcome

Partition = tuple[str, int]


class SourceListener(abc.ABC):
    """What a source tells the engine, on the engine's event loop."""

    @abc.abstractmethod
    def on_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        """A commit requested with ``Source.commit`` (or made for a revoke) finished: ``offsets`` as
        committed; ``error`` fails them all, a partition's ``TopicPartition.error`` that one alone."""

    @abc.abstractmethod
    def on_assign(self, committed: list[TopicPartition]) -> None:
        """Partitions were assigned, each with the group's committed offset and that commit's metadata
        (``offset`` < 0 where none is known); before any of their messages is fetched."""

    @abc.abstractmethod
    async def on_revoke(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Partitions are leaving: let their running handlers finish, forget them, and return the offsets
        the source must commit for them (then report to ``on_commit``) before it lets them go."""

    @abc.abstractmethod
    def on_lost(self, partitions: list[TopicPartition]) -> None:
        """Partitions are already gone: forget them without committing."""


@dataclass(frozen=True)
class Watermarks:
    """Where a partition's messages begin for a member without a committed offset (``start``: its
    auto.offset.reset position) and the next offset to be written (``end``); None where unknown."""

    start: int | None
    end: int | None


@dataclass(eq=False)
class SourceStats:
    """Counters a source keeps for metrics, written on the thread that talks to the broker."""

    commits: int = 0  # commits the broker acknowledged
    commit_latency: Histogram = field(default_factory=Histogram)  # seconds from a commit to its result
    rebalances: int = 0  # assignments, revokes and losses
    #: Per-record acknowledgements, of a source that settles messages (a share group): "accepted",
    #: "released", "rejected", ...; empty for the others.
    acks: dict[str, int] = field(default_factory=dict)


class Source(abc.ABC):
    """A consumer-group member's view of its partitions. All methods run on the engine's event loop, except
    the observability ones (``assignment``, ``watermarks``, ``stats``), which a metrics scrape may call
    from another thread: they only read."""

    #: A short name for summaries and metrics: "memory", "kafka".
    name: str = "source"
    #: True for a source that acknowledges each message on its own instead of committing offsets (a share
    #: group): the engine then reports how each message ended to ``settle``, keeps no order among them
    #: (``ordering="unordered"`` only) and never asks for an end (no ``exit_at_end``).
    settles_messages: bool = False

    def __init__(self) -> None:
        self.stats = SourceStats()

    @abc.abstractmethod
    def describe(self) -> str:
        """Where messages come from, for people: "Kafka at host:9092, topics a, b, group g"."""

    @abc.abstractmethod
    async def open(self, listener: SourceListener) -> None:
        """Connect and subscribe; raise (``ConfigError`` for what the user must fix) if that cannot happen."""

    @abc.abstractmethod
    async def fetch(self, max_messages: int, prefetch: int = 0) -> list[Message]:
        """Up to ``max_messages`` messages in offset order per partition, waiting a short while for some;
        may return an empty list. ``prefetch``: how many more the source may fetch ahead, for the next
        call, without passing the engine's cap."""

    @abc.abstractmethod
    def pause(self, partitions: Collection[Partition]) -> None:
        """Fetch nothing more from ``partitions`` (they hold their share of the engine's look-ahead) while
        the others go on: ``fetch`` returns none of their messages until ``resume``. The member stays in
        the group. Partitions this member does not own are ignored, and a pause ends with the assignment."""

    @abc.abstractmethod
    def resume(self, partitions: Collection[Partition]) -> None:
        """Fetch from ``partitions`` again, from where their delivered messages end."""

    @abc.abstractmethod
    def commit(self, offsets: list[TopicPartition]) -> None:
        """Request an asynchronous commit; its result reaches ``listener.on_commit``."""

    @abc.abstractmethod
    async def commit_sync(self, offsets: list[TopicPartition]) -> list[TopicPartition]:
        """Commit and wait; return the offsets as committed (a source may commit further than asked, past
        offsets that hold no message, such as transaction markers). A partition not assigned here any more
        is left out of both. Raise if any partition failed."""

    def settle(self, messages: list[Message], outcome: Outcome) -> None:  # noqa: B027 - optional hook
        """How messages handed out by ``fetch`` ended, for a source that ``settles_messages`` (the others
        are never called): ``HANDLED``, ``SKIPPED``, ``DEAD_LETTERED``, ``RELEASED``, ``STOPPED``,
        ``INTERRUPTED`` or ``FATAL``, once per message. Messages a stop abandoned or never started get
        no call: ``close`` gives them back. On the event loop; must not block."""

    @abc.abstractmethod
    def at_end(self) -> bool:
        """True when every assigned partition has been fetched to its end."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Leave the group and release resources."""

    # -- what observability reads

    @abc.abstractmethod
    def assignment(self) -> set[Partition]:
        """The partitions this member owns now (none before ``open`` and after ``close``)."""

    def watermarks(self) -> dict[Partition, Watermarks]:
        """Per assigned partition where known, for the consumer lag; empty when the source cannot tell."""
        return {}

    def enable_statistics(self, interval_ms: int) -> None:  # noqa: B027 - optional, a no-op by default
        """Ask for what ``watermarks`` needs every ``interval_ms`` (before ``open``); by default, none."""
