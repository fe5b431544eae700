"""Error policies: what happens to a message whose handler still fails after its retries.

A policy is ``async def policy(messages, error, attempts) -> Outcome``: ``Outcome.SKIPPED`` or
``Outcome.DEAD_LETTERED`` count the messages as done (their offsets may be committed), ``Outcome.STOPPED``
stops the consumer with them uncommitted, so they are delivered again on the next run. A policy that raises
or returns anything else stops it too.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import KafkaException, Message, Producer

from fastconsumer.errors import ConfigError

log = logging.getLogger("fastconsumer")

HEADER_PREFIX = "fastconsumer."


class Outcome(enum.Enum):
    """How a message that was handed to a handler ended."""

    HANDLED = "handled"  # the handler finished (perhaps on a retry)
    SKIPPED = "skipped"  # the policy let it pass
    DEAD_LETTERED = "dead_lettered"  # the policy wrote it elsewhere
    RELEASED = "released"  # the policy gave it back to a share group, for another delivery (share groups)
    STOPPED = "stopped"  # the policy stopped the consumer: it stays uncommitted
    INTERRUPTED = "interrupted"  # a stop came while it waited for a retry: it stays uncommitted
    REVOKED = "revoked"  # its partition was revoked first: left uncommitted for the next owner
    FATAL = "fatal"  # the handler raised what ends the process (SystemExit, KeyboardInterrupt): uncommitted

    @property
    def done(self) -> bool:
        """Whether it is finished here: its offset may be committed (a released one went back to its share
        group, which alone can deliver it again)."""
        return self in _DONE


_DONE = frozenset((Outcome.HANDLED, Outcome.SKIPPED, Outcome.DEAD_LETTERED, Outcome.RELEASED))
POLICY_OUTCOMES = (Outcome.SKIPPED, Outcome.DEAD_LETTERED, Outcome.STOPPED)
#: What a policy may return with a source that settles messages (a share group): RELEASED too.
SHARE_POLICY_OUTCOMES = (*POLICY_OUTCOMES, Outcome.RELEASED)

PolicyFunction = Callable[[list[Message], BaseException, int], Awaitable[Outcome]]


class Policy:
    """The base of the built-in policies: a call per failed message (or batch), and a close at the end."""

    name = "policy"

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> Outcome:
        raise NotImplementedError

    async def close(self) -> None:
        """Release what the policy holds (a producer); the consumer calls it once, when it stops."""


class _Function(Policy):
    def __init__(self, fn: PolicyFunction) -> None:
        self.fn = fn
        self.name = getattr(fn, "__qualname__", type(fn).__qualname__)

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> Outcome:
        return await self.fn(messages, error, attempts)


class Stop(Policy):
    """The default: stop, commit everything below the failed message and nothing at or above it."""

    name = "stop"

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> Outcome:
        return Outcome.STOPPED


class Skip(Policy):
    """Log the message and go on past it: for messages that are worth less than the consumer's progress."""

    name = "skip"

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> Outcome:
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
        return Outcome.SKIPPED


class Release(Policy):
    """Share groups only: give the message back to the broker, which delivers it again to any member, up to
    the group's ``share.delivery.count.limit`` (then archives it)."""

    name = "release"

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> Outcome:
        for msg in messages:
            log.warning(
                "releasing %s[%d]@%d (delivery %s) after %d attempt(s): %s: %s",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                msg.delivery_count(),
                attempts,
                type(error).__name__,
                error,
            )
        return Outcome.RELEASED


class DeadLetterError(RuntimeError):
    """The dead-letter write was not acknowledged: the message stays uncommitted and the consumer stops."""


class DeadLetter(Policy):
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

    async def __call__(self, messages: list[Message], error: BaseException, attempts: int) -> Outcome:
        producer = self._ensure_producer()
        failures: list[Any] = []
        delivered: list[bool] = []

        def on_delivery(err: Any, _msg: Message) -> None:
            (failures.append(err) if err is not None else delivered.append(True))

        from fastconsumer import tracing  # here: it imports the engine, which imports this module

        reason = f"{type(error).__name__}: {error}".encode()
        # With tracing on, a send span; its context replaces the message's traceparent (a no-op otherwise).
        with tracing.sending(self.topic, len(messages)) as stamp:
            for msg in messages:
                headers: list[tuple[str, str | bytes | None]] = list(msg.headers() or [])  # type: ignore[arg-type]
                headers += [
                    (HEADER_PREFIX + "topic", str(msg.topic()).encode()),
                    (HEADER_PREFIX + "partition", str(msg.partition()).encode()),
                    (HEADER_PREFIX + "offset", str(msg.offset()).encode()),
                    (HEADER_PREFIX + "error", reason),
                    (HEADER_PREFIX + "attempts", str(attempts).encode()),
                ]
                producer.produce(
                    self.topic,
                    key=msg.key(),
                    value=msg.value(),
                    headers=stamp(headers),
                    on_delivery=on_delivery,
                )
            await asyncio.to_thread(producer.flush, self.timeout)
            if failures or len(delivered) < len(messages):
                first = messages[0]
                why = failures[0] if failures else f"not acknowledged within {self.timeout:g} s"
                raise DeadLetterError(
                    f"dead-letter write of {first.topic()}[{first.partition()}]@{first.offset()} "
                    f"to {self.topic!r} failed: {why}"
                )
        return Outcome.DEAD_LETTERED

    async def close(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, self.timeout)


def resolve(on_error: str | Policy | PolicyFunction) -> Policy:
    """``"stop"``, ``"skip"``, a ``Policy`` or a policy function, as a ``Policy``."""
    if isinstance(on_error, Policy):
        return on_error
    if isinstance(on_error, str):
        if on_error == "stop":
            return Stop()
        if on_error == "skip":
            return Skip()
        if on_error == "release":
            return Release()
        if on_error == "dlq":
            raise ConfigError("on_error='dlq' needs a topic: pass policy.DeadLetter(topic, producer_config)")
        raise ConfigError(f"on_error must be 'stop', 'skip', 'release', 'dlq' or a policy; got {on_error!r}")
    if not callable(on_error):
        raise ConfigError(f"on_error must be 'stop', 'skip', a Policy or an async function; got {on_error!r}")
    return _Function(on_error)


ErrorPolicy = str | Policy | PolicyFunction
