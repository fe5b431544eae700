"""One share consumer and the thread that is its only caller (confluent-kafka's ``ShareConsumer`` is not
thread-safe); ``share.py`` runs several per source.

In explicit acknowledgement mode a ``poll()`` may only come once every record of the previous one is
acknowledged, so each member holds one polled batch at a time: it hands the batch to the source, applies
the acknowledgements the engine sends back (``acknowledge()`` only records them; they travel with the next
``poll()``, or with the ``commit_async()`` sent every ``FLUSH_S`` while the batch is open, so the records
handled early are not held back by a slow one), and polls again once the batch is settled. A batch still
open at its deadline (a share of the group's record lock duration and of ``max.poll.interval.ms``) has its
unsettled records released: the member polls on and stays in the group, the broker redelivers them now
rather than when their locks expire, and a late outcome from the engine is dropped (the record went to
another delivery).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import AcknowledgeType, KafkaException, Message, ShareConsumer, TopicPartition

from fastconsumer.sources.kafka.config import reason

if TYPE_CHECKING:
    from fastconsumer.sources.kafka.share import KafkaShareSource

log = logging.getLogger("fastconsumer.kafka")
librdkafka_log = logging.getLogger("fastconsumer.librdkafka")

#: Seconds between two ``commit_async()`` of the acknowledgements recorded while a batch is open.
FLUSH_S = 0.1
#: Seconds a member waits for the engine's acknowledgements before it looks at its deadline again.
SLICE = 0.01


@dataclass(frozen=True)
class Ack:
    message: Message
    kind: AcknowledgeType


@dataclass(frozen=True)
class Flush:
    """Send the acknowledgements recorded so far and wait for the broker; ``done`` is called after."""

    done: Callable[[BaseException | None], None]


@dataclass(frozen=True)
class Stop:
    """Release what is still unsettled, send every acknowledgement, leave the group."""

    done: Callable[[BaseException | None], None]


Command = Ack | Flush | Stop


class Member:
    def __init__(self, index: int, source: KafkaShareSource, config: dict[str, Any]) -> None:
        self.index = index
        self.source = source
        self.config = config
        self.commands: queue.SimpleQueue[Command] = queue.SimpleQueue()
        self.open: dict[int, Message] = {}  # id() -> the records of the current batch not yet acknowledged
        self.deadline = 0.0
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._main, name=f"fastconsumer-share-{index}", daemon=True)
        self._consumer: ShareConsumer | None = None
        self._unsent = False  # acknowledgements recorded and not yet sent
        self._flushed_at = 0.0
        self._polled_at = 0.0

    def start(self) -> None:
        self.thread.start()

    # -- the thread

    def _main(self) -> None:
        try:
            consumer = self._consumer = ShareConsumer({**self.config, "logger": librdkafka_log})
            consumer.set_acknowledgement_commit_callback(self._on_acknowledged)
            consumer.subscribe(self.source.topics)
            self._serve(consumer)
        except BaseException as exc:  # surfaces through the source's next fetch and stops the run
            log.exception("share consumer %d failed", self.index)
            self.failure = exc
            self.source.wake()
            self._fail_pending(exc)

    def _serve(self, consumer: ShareConsumer) -> None:
        source = self.source
        commands = self.commands
        keepalive = source.max_poll_interval / 2
        while True:
            try:
                if self.open or not source.wants_more():
                    command = commands.get(timeout=SLICE)
                else:
                    command = commands.get_nowait()
            except queue.Empty:
                command = None
            while command is not None:
                if isinstance(command, Stop):
                    self._stop(consumer, command)
                    return
                self._apply(consumer, command)
                try:
                    command = commands.get_nowait()
                except queue.Empty:
                    command = None
            now = time.monotonic()
            if self.open:
                if now >= self.deadline:
                    self._release_open(consumer, "not finished within the acknowledgement deadline")
                elif self._unsent and now - self._flushed_at >= FLUSH_S:
                    consumer.commit_async()
                    self._unsent, self._flushed_at = False, now
                if self.open:
                    continue
            if source.wants_more() or now - self._polled_at >= keepalive:
                self._poll(consumer)
            elif self._unsent:
                consumer.commit_async()
                self._unsent, self._flushed_at = False, now

    def _poll(self, consumer: ShareConsumer) -> None:
        messages = list(consumer.poll(self.source.poll_timeout))  # sends the acknowledgements recorded
        self._polled_at = time.monotonic()
        self._unsent = False
        records = []
        for msg in messages:
            error = msg.error()
            if error is None:
                records.append(msg)
            elif error.fatal():
                raise KafkaException(error)
            else:
                log.warning("share consumer %d: %s", self.index, error)
        if records:
            self.open = {id(msg): msg for msg in records}
            self.deadline = self._polled_at + self.source.ack_deadline
            self.source.deliver(self, records)

    def _apply(self, consumer: ShareConsumer, command: Command) -> None:
        if isinstance(command, Ack):
            msg = command.message
            if self.open.pop(id(msg), None) is None:
                return  # released at the deadline: the record went back to the broker already
            consumer.acknowledge(msg, command.kind)
            self._unsent = True
            self.source.count(command.kind, 1)
        elif isinstance(command, Flush):
            error: BaseException | None = None
            try:
                self._commit_sync(consumer)
            except Exception as exc:
                error = exc
            command.done(error)

    def _commit_sync(self, consumer: ShareConsumer) -> None:
        results = consumer.commit_sync(self.source.connect_timeout)
        self._unsent, self._flushed_at = False, time.monotonic()
        failed: list[tuple[TopicPartition, BaseException]] = [
            (tp, exc) for tp, exc in results.items() if exc is not None
        ]
        if failed:
            self._note_failures(failed)

    def _release_open(self, consumer: ShareConsumer, why: str) -> None:
        """Release the batch's unsettled records: taken back from the source first, so none of them starts
        after this, and an outcome the engine reports for one later is dropped."""
        records, unstarted = self.source.take_back(self, list(self.open.values()))
        for msg in records:
            del self.open[id(msg)]
        # What is left was settled by the engine meanwhile: its Ack is queued already (share.py puts it
        # under the lock take_back takes), and the next look at the commands applies it.
        if not records:
            return
        started = len(records) - unstarted
        for msg in records:
            consumer.acknowledge(msg, AcknowledgeType.RELEASE)
        self.source.count(AcknowledgeType.RELEASE, len(records))
        self._unsent = True
        if why:
            log.warning(
                "share consumer %d: %d record(s) %s (%d of them still running): released for redelivery",
                self.index,
                len(records),
                why,
                started,
            )

    def _stop(self, consumer: ShareConsumer, command: Stop) -> None:
        error: BaseException | None = None
        try:
            self._release_open(consumer, "")
            self._commit_sync(consumer)
        except Exception as exc:
            error = exc
        finally:
            try:
                consumer.close()  # sends what is left and leaves the group
            except Exception as exc:
                error = error or exc
            self._consumer = None
            command.done(error)

    def _on_acknowledged(self, offsets: dict[TopicPartition, set[int]], error: KafkaException | None) -> None:
        if error is not None:
            failed: list[tuple[TopicPartition, BaseException]] = [(tp, error) for tp in offsets]
            self._note_failures(failed, offsets)

    def _note_failures(
        self,
        failed: list[tuple[TopicPartition, BaseException]],
        offsets: dict[TopicPartition, set[int]] | None = None,
    ) -> None:
        n = sum(len(offsets.get(tp, ())) for tp, _ in failed) if offsets else len(failed)
        self.source.count_failures(n)
        tp, exc = failed[0]
        log.warning(
            "share consumer %d: acknowledgement of %s[%d] failed (the record's lock may have expired: it is "
            "redelivered): %s",
            self.index,
            tp.topic,
            tp.partition,
            reason(exc),
        )

    def _fail_pending(self, exc: BaseException) -> None:
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, Flush | Stop):
                command.done(exc)
