"""Error policies: what happens to a message whose handler still fails after its retries."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from confluent_kafka import KafkaException, Message, Producer

from fastconsumer.errors import ConfigError

log = logging.getLogger("fastconsumer")

HEADER_PREFIX = "fastconsumer."


class ErrorPolicy(Protocol):
    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> bool:
        """Return True when the messages count as done (their offsets may be committed), False to stop the
        consumer with them uncommitted, so they are delivered again on the next run. Raising stops it too."""
        ...


class Stop:
    """The default: stop, commit everything below the failed message and nothing at or above it."""

    name = "stop"

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> bool:
        return False


class Skip:
    """Log the message and go on past it: for messages that are worth less than the consumer's progress."""

    name = "skip"

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> bool:
        for msg in messages:
            log.error(
                "skipping %s[%d]@%d after %d attempt(s): %s: %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                attempts,
                type(error).__name__,
                error,
            )
        return True


class DeadLetterError(RuntimeError):
    """The dead-letter write was not acknowledged: the message stays uncommitted and the consumer stops."""


class DeadLetter:
    """Write the message to a dead-letter topic, with its key, value and headers plus headers that name where
    it came from and why; its offset becomes committable only once the broker acknowledged the write."""

    name = "dlq"

    def __init__(self, topic: str, config: dict[str, Any], *, timeout: float = 30.0) -> None:
        if not topic:
            raise ConfigError("the dead-letter policy needs a topic (--dlq-topic)")
        self.topic = topic
        self.timeout = timeout
        self.config = {"acks": "all", "linger.ms": 5, **config}
        self._producer: Producer | None = None

    def _ensure_producer(self) -> Producer:
        if self._producer is None:
            try:
                self._producer = Producer(self.config, logger=logging.getLogger("fastconsumer.librdkafka"))
            except KafkaException as exc:
                raise ConfigError(f"invalid dead-letter producer configuration: {exc}") from None
        return self._producer

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> bool:
        producer = self._ensure_producer()
        failures: list[Any] = []
        delivered: list[bool] = []

        def on_delivery(err: Any, _msg: Message) -> None:
            (failures.append(err) if err is not None else delivered.append(True))

        reason = f"{type(error).__name__}: {error}".encode()
        for msg in messages:
            headers = list(msg.headers() or [])
            headers += [
                (HEADER_PREFIX + "topic", msg.topic().encode()),
                (HEADER_PREFIX + "partition", str(msg.partition()).encode()),
                (HEADER_PREFIX + "offset", str(msg.offset()).encode()),
                (HEADER_PREFIX + "error", reason),
                (HEADER_PREFIX + "attempts", str(attempts).encode()),
            ]
            producer.produce(
                self.topic, key=msg.key(), value=msg.value(), headers=headers, on_delivery=on_delivery
            )
        await asyncio.to_thread(producer.flush, self.timeout)
        if failures or len(delivered) < len(messages):
            first = messages[0]
            why = failures[0] if failures else f"not acknowledged within {self.timeout:g} s"
            raise DeadLetterError(
                f"dead-letter write of {first.topic()}[{first.partition()}]@{first.offset()} "
                f"to {self.topic!r} failed: {why}"
            )
        return True

    async def close(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, self.timeout)


def named(name: str) -> ErrorPolicy:
    if name == "stop":
        return Stop()
    if name == "skip":
        return Skip()
    if name == "dlq":
        raise ConfigError("on_error='dlq' needs a topic: pass policy.DeadLetter(topic, producer_config)")
    raise ConfigError(f"on_error must be 'stop', 'skip', 'dlq' or a policy; got {name!r}")
