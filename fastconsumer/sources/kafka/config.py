"""The client settings fastconsumer sets, and errors worded for whoever must fix them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaError, KafkaException

DEFAULTS: dict[str, Any] = {
    "enable.auto.commit": False,  # offsets are committed only from the tracker
    "enable.auto.offset.store": False,
    "enable.partition.eof": True,  # tells --exit-at-end where the ends are
    # librdkafka's default backoff stalls a fast consumer whose fetch queue ran dry for 1 s at a time.
    "fetch.queue.backoff.ms": 10,
    # A partition resumed after a pause (engine/lookahead.py) is fetched with the next fetch request, which
    # waits for the one in flight: a long poll of idle partitions, up to 500 ms by default.
    "fetch.wait.max.ms": 100,
}

#: Seconds ``close()`` waits for librdkafka to leave the group. It takes far less: the revoke's commit is
#: tried for 3 s and the LeaveGroup request times out after 5 s. But a member whose coordinator connection
#: stayed down through a broker restart waited over 60 s, and its stop with it (librdkafka's close can go on
#: looking for a coordinator that does not answer: confluentinc/librdkafka#3740, open); a share consumer
#: facing a broker that stopped answering waits out its request timeout, 60 s. Past this the member goes
#: without leaving: the group drops it when its session times out, and a share group's broker releases its
#: records when their locks expire.
CLOSE_TIMEOUT_S = 15.0

#: Set only under the classic group protocol: with ``group.protocol=consumer`` (KIP-848) the broker assigns
#: partitions and librdkafka refuses ``partition.assignment.strategy`` (and ``session.timeout.ms``,
#: ``heartbeat.interval.ms``, ``group.protocol.type``, which the broker holds too), so none is set there.
CLASSIC_DEFAULTS: dict[str, Any] = {
    "partition.assignment.strategy": "cooperative-sticky",
}


def consumer_protocol(config: Mapping[str, Any]) -> bool:
    """Whether ``config`` asks for the KIP-848 consumer group protocol (``group.protocol=consumer``;
    librdkafka reads the value without regard to case or surrounding spaces)."""
    return str(config.get("group.protocol", "classic")).strip().lower() == "consumer"


def with_defaults(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` over fastconsumer's defaults, those of the classic protocol only under it."""
    classic = {} if consumer_protocol(config) else CLASSIC_DEFAULTS
    return {**DEFAULTS, **classic, **config}


def incremental(config: Mapping[str, Any]) -> bool:
    """Whether assignments come incrementally (each ``on_assign`` adds partitions, each ``on_revoke`` takes
    some away) rather than eagerly (each ``on_assign`` is the whole assignment): always under the consumer
    protocol, and under the classic one with a cooperative strategy (librdkafka's default, range then
    roundrobin, is eager)."""
    if consumer_protocol(config):
        return True
    return "cooperative" in str(config.get("partition.assignment.strategy", "range,roundrobin"))


class SourceError(RuntimeError):
    """Kafka could not be used (unreachable, misconfigured); the message says what to check."""


def reason(exc: BaseException) -> str:
    """librdkafka's own words for a failure, without the exception's wrapping."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return str(exc.args[0].str())
    return str(exc)
