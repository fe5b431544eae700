"""Which partitions the Kafka thread has paused, and the messages it keeps back for them.

Two reasons to pause: the engine asks for a partition that holds its share of the look-ahead
(``Source.pause``), or the engine is full and every partition pauses while the member goes on polling.
librdkafka is told only the difference from what it has. A message of a partition paused by the engine that
was fetched already (ahead, or in the same ``consume()``) is parked, not delivered, and goes out first, in
order, once the partition resumes: librdkafka then fetches from one past it.
"""

from __future__ import annotations

from collections.abc import Collection

from confluent_kafka import Consumer as KafkaConsumer
from confluent_kafka import Message, TopicPartition

from fastconsumer.sources.base import Partition


class Pauses:
    def __init__(self) -> None:
        self.held_back: set[Partition] = set()  # paused at the engine's request
        self.parked: dict[Partition, list[Message]] = {}  # fetched before or while held back
        self.everything = False  # the engine is full: everything paused
        self._applied: set[Partition] = set()  # what librdkafka has paused, by us

    def ask(
        self, partitions: Collection[Partition], paused: bool, assignment: set[Partition], held: list[Message]
    ) -> list[Message]:
        """The engine's pause or resume, given the messages fetched and not yet delivered (``held``); returns
        them as they now stand. A pause parks the held messages of its partitions; a resume puts theirs
        back in front, in order (nothing of theirs came after them)."""
        if paused:
            keys = {key for key in partitions if key in assignment} - self.held_back
            if not keys:
                return held
            self.held_back |= keys
            kept = []
            for msg in held:
                key = (msg.topic(), msg.partition())
                if key in keys:
                    self.parked.setdefault(key, []).append(msg)
                else:
                    kept.append(msg)
            return kept
        self.held_back.difference_update(partitions)
        back: list[Message] = []
        for key in partitions:
            back += self.parked.pop(key, [])
        return back + held if back else held

    def park(self, messages: list[Message]) -> list[Message]:
        """Of freshly fetched ``messages``, those that may be delivered; the others wait in ``parked``."""
        held_back = self.held_back
        if not held_back:
            return messages
        out = []
        for msg in messages:
            key: Partition = (msg.topic(), msg.partition())  # type: ignore[assignment]
            if key in held_back:
                self.parked.setdefault(key, []).append(msg)
            else:
                out.append(msg)
        return out

    def apply(self, consumer: KafkaConsumer, assignment: set[Partition], everything: bool) -> None:
        """Pause what should be (all of ``assignment`` when ``everything``), resume the rest."""
        if not everything and not self.held_back and not self._applied and not self.everything:
            return  # the usual case: nothing paused, nothing to do
        self.everything = everything
        target = set(assignment) if everything else self.held_back & assignment
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
        target = set(assignment) if self.everything else self.held_back & assignment
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
        self._applied -= keys
        for key in keys:
            self.parked.pop(key, None)

    def parked_keys(self) -> set[Partition]:
        return {key for key, messages in self.parked.items() if messages}
