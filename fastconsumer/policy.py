"""Error policies: what happens to a message whose handler raised."""

from __future__ import annotations

from typing import Protocol

from confluent_kafka import Message


class ErrorPolicy(Protocol):
    async def __call__(self, messages: list[Message], error: Exception) -> bool:
        """Return True when the messages count as done (their offsets may be committed), False to stop the
        consumer with the messages left uncommitted, so they are delivered again on the next run."""
        ...


async def stop(messages: list[Message], error: Exception) -> bool:
    """The default: stop, commit everything below the failed message and nothing at or above it."""
    return False
