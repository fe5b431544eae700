"""What can go wrong, named so callers can tell a bad configuration from a failed message."""

from __future__ import annotations

from typing import Any


class ConfigError(ValueError):
    """The consumer was set up wrongly; the message says what to change."""


class HandlerError(RuntimeError):
    """A handler raised and the error policy stopped the consumer; ``__cause__`` is what it raised."""

    def __init__(self, topic: str, partition: int, offset: int, error: BaseException) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.error = error
        super().__init__(f"handler failed on {topic}[{partition}]@{offset}: {type(error).__name__}: {error}")

    @classmethod
    def for_message(cls, msg: Any, error: BaseException) -> HandlerError:
        exc = cls(msg.topic(), msg.partition(), msg.offset(), error)
        exc.__cause__ = error
        return exc


class HandlerTimeout(TimeoutError):
    """A handler ran longer than ``handler_timeout`` and was cancelled; it counts as a failure."""
