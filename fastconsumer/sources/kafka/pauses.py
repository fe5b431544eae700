"""Which partitions the Kafka thread holds back, and the messages it keeps for them meanwhile.

The engine asks to pause a partition that holds its share of the look-ahead (``Source.pause``). Pausing
it in librdkafka at once would be slow to undo: a pause drops what librdkafka fetched ahead for it, and a
resume waits for the next fetch request, which can sit out ``fetch.wait.max.ms`` (500 ms) behind a long
poll of the other partitions (measured: 4 to 500 ms). So a held-back partition's messages are parked here
instead, in order, and go out first once it resumes; only when it has ``park_bytes`` parked (about one
fetch response: ``max.partition.fetch.bytes``) is it paused in librdkafka too. Parking also lets the other
partitions' messages, queued in librdkafka behind a long run of this one, reach the engine.

And when the engine is full, every partition is paused in librdkafka while the member goes on polling.
"""

from __future__ import annotations

from collections.abc import Collection

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import Message, TopicPartition

from fastconsumer.sources.base import Partition


def size_of(msg: Message) -> int:
    """A message's key and value in bytes (at least 1): what a count of its like is sized by."""
    value, key = msg.value(), msg.key()
    return max(1, (len(value) if value else 0) + (len(key) if key else 0))


class Pauses:
    def __init__(self, park_bytes: int) -> None:
        self.park_bytes = park_bytes
        self.held_back: set[Partition] = set()  # the engine asked to pause them
        self.parked: dict[Partition, list[Message]] = {}  # their messages fetched meanwhile, in order
        self.everything = False  # the engine is full: every partition paused in librdkafka
        self._parked_bytes: dict[Partition, int] = {}
        self._full: set[Partition] = set()  # held back with park_bytes parked: paused in librdkafka too
        self._applied: set[Partition] = set()  # what librdkafka has paused, by us

    def ask(
        self, partitions: Collection[Partition], paused: bool, assignment: set[Partition], held: list[Message]
    ) -> list[Message]:
        """The engine's pause or resume, given the messages fetched and not yet delivered (``held``); returns
        those as they now stand. A pause parks the held messages of its partitions; a resume puts theirs
        back in front, in order (nothing of theirs came after them). ``apply`` then tells librdkafka."""
        if paused:
            keys = {key for key in partitions if key in assignment} - self.held_back
            if not keys:
                return held
            self.held_back |= keys
            kept = []
            for msg in held:
                key: Partition = (msg.topic(), msg.partition())  # type: ignore[assignment]
                if key in keys:
                    self._park(key, msg)
                else:
                    kept.append(msg)
            return kept
        back: list[Message] = []
        for key in partitions:
            if key in self.held_back:
                self.held_back.discard(key)
                self._full.discard(key)
                self._parked_bytes.pop(key, None)
                back += self.parked.pop(key, [])
        return back + held if back else held

    def park(self, consumer: KafkaConsumer, messages: list[Message]) -> list[Message]:
        """Of freshly fetched ``messages``, those that may be delivered; the others are parked, and a
        partition that parked ``park_bytes`` is paused in librdkafka."""
        held_back = self.held_back
        if not held_back:
            return messages
        out = []
        full = []
        for msg in messages:
            key: Partition = (msg.topic(), msg.partition())  # type: ignore[assignment]
            if key in held_back:
                if self._park(key, msg) and key not in self._full:
                    full.append(key)
            else:
                out.append(msg)
        if full:
            self._full.update(full)
            if not self.everything:
                consumer.pause([TopicPartition(t, p) for t, p in full])
                self._applied.update(full)
        return out

    def _park(self, key: Partition, msg: Message) -> bool:
        """Park ``msg``; True when its partition has about ``park_bytes`` parked (its count times the size of
        its first parked message: no per-message sizes on this thread, which holds the GIL meanwhile)."""
        parked = self.parked.get(key)
        if parked is None:
            parked = self.parked[key] = []
            self._parked_bytes[key] = size_of(msg)
        parked.append(msg)
        return len(parked) * self._parked_bytes[key] >= self.park_bytes

    def apply(self, consumer: KafkaConsumer, assignment: set[Partition], everything: bool) -> None:
        """Pause in librdkafka what should be (all of ``assignment`` when ``everything``), resume the rest."""
        if not everything and not self._applied and not self.everything:
            return  # the usual case: nothing paused in librdkafka, nothing to do
        self.everything = everything
        target = set(assignment) if everything else self._full & assignment
        applied = self._applied
        if target == applied:
            return
        pause = [TopicPartition(t, p) for t, p in target - applied]
        resume = [TopicPartition(t, p) for t, p in applied - target if (t, p) in assignment]
        if pause:
            consumer.pause(pause)
        if resume:
            consumer.resume(resume)
        self._applied = target

    def reassigned(self, consumer: KafkaConsumer, assignment: set[Partition]) -> None:
        """After a rebalance: librdkafka keeps a partition's pause across a revoke and a new assignment, so
        every assigned partition is set afresh."""
        target = set(assignment) if self.everything else self._full & assignment
        pause = [TopicPartition(t, p) for t, p in assignment if (t, p) in target]
        resume = [TopicPartition(t, p) for t, p in assignment if (t, p) not in target]
        if pause:
            consumer.pause(pause)
        if resume:
            consumer.resume(resume)
        self._applied = target

    def forget(self, keys: set[Partition]) -> None:
        """Partitions that left: their pause ends with them, and their parked messages belong to the next
        owner."""
        self.held_back -= keys
        self._full -= keys
        self._applied -= keys
        for key in keys:
            self.parked.pop(key, None)
            self._parked_bytes.pop(key, None)

    def parked_keys(self) -> set[Partition]:
        return {key for key, messages in self.parked.items() if messages}
