"""The client settings fastconsumer sets, and errors worded for whoever must fix them."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException

DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,  # offsets are committed only from the tracker
    "enable.auto.offset.store": False,
    "partition.assignment.strategy": "cooperative-sticky",
    "enable.partition.eof": True,  # tells --exit-at-end where the ends are
    # librdkafka's default backoff stalls a fast consumer whose fetch queue ran dry for 1 s at a time.
    "fetch.queue.backoff.ms": 10,
}


class SourceError(RuntimeError):
    """Kafka could not be used (unreachable, misconfigured); the message says what to check."""


def reason(exc: BaseException) -> str:
    """librdkafka's own words for a failure, without the exception's wrapping."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return str(exc)
