"""Producing the test messages: one librdkafka producer, a hot loop of one %-format and one ``produce()`` per
message, and a wait until every message is delivered, so a filled topic holds exactly what was asked for."""

from __future__ import annotations

import concurrent.futures
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from fastconsumer.produce.messages import message_value, segments

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("fastconsumer.produce")  # the package's name: what a user configures

#: Producer settings for throughput; ``config`` (``-X``) overrides them. acks stays librdkafka's default, all.
#: Measured on the local broker of dev/broker.py (2 CPUs shared with it), 1,000,000 messages of 100 bytes
#: into 4 partitions: ~1.1 M/s with lz4, 0.6-1.0 M/s without compression (lz4 never lost; the "pad" of
#: x's compresses well, real payloads less), ~0.9 M/s with keys. The batch settings made no measurable
#: difference against librdkafka's defaults: the Python loop, ~0.8 us per produce() call, is the limit.
DEFAULT_CONFIG: dict[str, Any] = {
    "linger.ms": 50,
    "batch.num.messages": 100_000,
    "batch.size": 1_000_000,  # the most that message.max.bytes (1,000,000) lets a batch hold anyway
    "queue.buffering.max.messages": 1_000_000,  # room to run ahead of the broker without BufferError
    "compression.type": "lz4",
    "log_level": 4,  # librdkafka's own log (sent to Python logging): warnings and worse only
}

CONNECT_TIMEOUT = 10.0  # seconds to reach the cluster before giving up
TOPIC_TIMEOUT = 30.0  # seconds for the cluster to create a topic
POLL_EVERY = 1_000  # messages produced between two poll(0) calls (and progress checks)
PROGRESS_EVERY = 1.0  # seconds between progress reports


class ProduceError(Exception):
    """The cluster could not be reached, the topic not created, or messages were not delivered.

    ``summary`` is the run's summary when messages were produced (``failed`` says how many were lost).
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary


class _ClientEvents:
    """librdkafka's log and errors for one run: the ``logger`` and ``error_cb`` of its clients.

    Log lines go to Python logging (``fastconsumer.produce.librdkafka``), without consecutive repeats (a
    broker that is down makes librdkafka log the same failed connect many times a second). Errors from
    ``error_cb`` are remembered, not logged: the log has them already, and the last one explains a failure.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger("fastconsumer.produce.librdkafka")
        self.quiet = False
        self.last_error: KafkaError | None = None
        self.fatal: KafkaError | None = None
        self._last_line: str | None = None
        self._repeats = 0

    def log(self, level: int, msg: str, *args: Any, **kwargs: Any) -> None:  # the `logger` protocol
        if self.quiet:
            return
        line = msg % args if args else msg
        if line == self._last_line:
            self._repeats += 1
            return
        if self._repeats:
            self.logger.log(level, "(last message repeated %d times)", self._repeats)
        self._last_line, self._repeats = line, 0
        self.logger.log(level, "%s", line)

    def error(self, err: KafkaError) -> None:
        self.last_error = err
        if err.fatal():
            self.fatal = err


class _Deliveries:
    """The delivery callback: with ``delivery.report.only.error`` only failed messages reach it."""

    def __init__(self) -> None:
        self.failed = 0
        self.first_error: KafkaError | None = None

    def __call__(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self.failed += 1
            if self.first_error is None:
                self.first_error = err


def _kafka_error(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def _ensure_topic(conf: dict[str, Any], metadata: Any, topic: str, partitions: int) -> None:
    """Create ``topic`` with ``partitions`` partitions unless it exists; warn if it has another count."""
    existing = metadata.topics.get(topic)
    if existing is None or existing.error is not None:
        admin = AdminClient(conf)
        future = admin.create_topics([NewTopic(topic, partitions)], request_timeout=TOPIC_TIMEOUT)[topic]
        try:
            future.result(timeout=TOPIC_TIMEOUT)
            log.info("created topic %s with %d partitions", topic, partitions)
            return
        except concurrent.futures.TimeoutError:
            raise ProduceError(f"topic {topic!r} was not created within {TOPIC_TIMEOUT:g} s") from None
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
                raise ProduceError(f"cannot create topic {topic!r}: {_kafka_error(exc)}") from None
        # created by someone else meanwhile: look at what they made
        try:
            existing = admin.list_topics(topic, timeout=CONNECT_TIMEOUT).topics.get(topic)
        except KafkaException as exc:
            raise ProduceError(f"cannot read the metadata of topic {topic!r}: {_kafka_error(exc)}") from None
        if existing is None or existing.error is not None:
            return
    if len(existing.partitions) != partitions:
        log.warning(
            "topic %s exists with %d partitions, not %d: producing to it as it is",
            topic,
            len(existing.partitions),
            partitions,
        )


def produce(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    size: int | None = None,
    keys: int = 0,
    partitions: int | None = None,
    start: int = 0,
    config: Mapping[str, Any] | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    connect_timeout: float = CONNECT_TIMEOUT,
    trace: bool = False,
) -> dict[str, Any]:
    """Produce messages ``start`` .. ``start + count - 1`` to ``topic`` and wait until all are delivered.

    Message ``i`` has the value ``message_value(i, size)`` and the key ``key-<i % keys>`` (no key if
    ``keys`` is 0), so each key's messages land in one partition. ``partitions`` creates the topic with that
    many partitions if it does not exist (otherwise the broker's auto-creation, if enabled, makes it).
    ``config`` is librdkafka producer settings over ``DEFAULT_CONFIG``. ``progress(delivered, count, rate)``
    is called about every second. ``trace`` gives every message a W3C ``traceparent`` header: the context
    of a ``send <topic>`` PRODUCER span when OpenTelemetry is configured (``OTEL_TRACES_EXPORTER``, ...; see
    ``fastconsumer.tracing``), a random sampled one otherwise.

    Returns the summary ``{"topic", "count", "bytes", "elapsed_s", "rate", "failed"}``: ``bytes`` counts
    the message values, ``elapsed_s`` runs from the first message produced to the last one delivered.
    Raises ``ValueError`` on bad arguments (a ``size`` too small for the JSON, a ``config`` librdkafka
    rejects) and ``fastconsumer.ConfigError`` (an ``OTEL_*`` setting, with ``trace``) before connecting,
    and ``ProduceError`` if the cluster is not reachable within ``connect_timeout`` seconds, the topic
    cannot be created, or any message was not delivered (its ``summary`` then says how many failed).
    """
    _check(count, start, keys, partitions)
    if size is not None:
        message_value(start + count - 1, size)  # the longest message: ValueError if it does not fit
    runs = segments(start, count, size)
    provider = _trace_provider() if trace else None  # a bad OTEL_* setting: ConfigError, before connecting
    events = _ClientEvents()
    deliveries = _Deliveries()
    client_conf: dict[str, Any] = {
        **DEFAULT_CONFIG,
        **(config or {}),
        "bootstrap.servers": bootstrap,
        "logger": events,
        "error_cb": events.error,
    }
    try:
        producer = Producer({**client_conf, "on_delivery": deliveries, "delivery.report.only.error": True})
    except KafkaException as exc:
        raise ValueError(f"invalid producer configuration: {_kafka_error(exc)}") from None
    try:
        metadata = producer.list_topics(timeout=connect_timeout)
    except KafkaException as exc:
        # What librdkafka saw (a refused connection, an unknown host) names the cause better than "failed to
        # get metadata". Serve its errors without logging them: this one line says it all.
        events.quiet = True
        producer.poll(0)
        cause = events.last_error.str() if events.last_error is not None else _kafka_error(exc)
        raise ProduceError(f"cannot reach Kafka at {bootstrap} in {connect_timeout:g} s: {cause}") from None
    if partitions is not None:
        _ensure_topic(client_conf, metadata, topic, partitions)
    if trace:
        elapsed = _traced(producer, events, topic, runs, keys, progress, provider)
    else:
        elapsed = _send_all(producer, events, topic, runs, keys, progress)
    summary = {
        "topic": topic,
        "count": count,
        "bytes": sum((hi - lo) * len(template % (lo, lo)) for lo, hi, template in runs),
        "elapsed_s": round(elapsed, 3),
        "rate": round(count / elapsed, 1),
        "failed": deliveries.failed,
    }
    if deliveries.failed:
        first = deliveries.first_error.str() if deliveries.first_error is not None else "unknown error"
        raise ProduceError(
            f"{deliveries.failed:,} of {count:,} messages to {topic} not delivered; first error: {first}",
            summary,
        )
    return summary


def _check(count: int, start: int, keys: int, partitions: int | None) -> None:
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if keys < 0:
        raise ValueError(f"keys must be >= 0, got {keys}")
    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")


def _send_all(
    producer: Producer,
    events: _ClientEvents,
    topic: str,
    runs: list[tuple[int, int, bytes]],
    keys: int,
    progress: Callable[[int, int, float], None] | None,
    send: Callable[[str, bytes, bytes | None], None] | None = None,
) -> float:
    """Produce every message of ``runs`` and wait until all are delivered; the seconds that took.
    ``send(topic, value, key)`` produces one message (default: ``producer.produce``)."""
    key_values: list[bytes | None] = [f"key-{k}".encode() for k in range(keys)] if keys else [None]
    nkeys = len(key_values)
    start, count = runs[0][0], runs[-1][1] - runs[0][0]
    send = producer.produce if send is None else send
    poll = producer.poll
    monotonic = time.monotonic
    produced = 0
    t0 = last_t = monotonic()
    last_done = 0

    def report(now: float) -> None:
        nonlocal last_t, last_done
        done = produced - len(producer)
        if progress is not None:
            progress(done, count, (done - last_done) / (now - last_t))
        last_t, last_done = now, done

    # The hot loop: one bytes %-format and one produce() per message, poll(0) every POLL_EVERY messages.
    try:
        for lo, hi, template in runs:
            for chunk in range(lo, hi, POLL_EVERY):
                chunk_end = min(chunk + POLL_EVERY, hi)
                for i in range(chunk, chunk_end):
                    value = template % (i, i)
                    try:
                        send(topic, value, key_values[i % nkeys])
                    except BufferError:  # the local queue is full: serve deliveries until there is room
                        _send_when_room(producer, send, topic, value, key_values[i % nkeys])
                produced = chunk_end - start
                poll(0)
                if events.fatal is not None:
                    raise ProduceError(f"fatal Kafka error: {events.fatal.str()}")
                now = monotonic()
                if now - last_t >= PROGRESS_EVERY:
                    report(now)
        while producer.flush(PROGRESS_EVERY) > 0:
            report(monotonic())
    except KafkaException as exc:  # refused locally: a message over message.max.bytes, an invalid topic name
        raise ProduceError(f"cannot produce to {topic}: {_kafka_error(exc)}") from None
    return monotonic() - t0


def _send_when_room(
    producer: Producer,
    send: Callable[[str, bytes, bytes | None], None],
    topic: str,
    value: bytes,
    key: bytes | None,
) -> None:
    while True:
        producer.poll(0.1)
        try:
            send(topic, value, key)
            return
        except BufferError:
            continue


def _trace_provider() -> TracerProvider | None:
    """OpenTelemetry's tracer provider when it is configured (as for the consumer: ``tracing="auto"``)."""
    from fastconsumer import tracing

    return tracing.provider_for("auto")


def _traced(
    producer: Producer,
    events: _ClientEvents,
    topic: str,
    runs: list[tuple[int, int, bytes]],
    keys: int,
    progress: Callable[[int, int, float], None] | None,
    provider: TracerProvider | None,
) -> float:
    """``_send_all`` with a ``traceparent`` header on every message (the untraced loop stays as it is)."""
    if provider is None:

        def send(topic: str, value: bytes, key: bytes | None) -> None:
            traceparent = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            producer.produce(topic, value, key, headers=[("traceparent", traceparent.encode())])

        return _send_all(producer, events, topic, runs, keys, progress, send)

    from opentelemetry import propagate, trace

    from fastconsumer import __version__, tracing

    tracer = provider.get_tracer("fastconsumer.produce", __version__)
    name = f"send {topic}"
    attributes = {
        tracing.SYSTEM: "kafka",
        tracing.OPERATION_NAME: "send",
        tracing.OPERATION_TYPE: "send",
        tracing.DESTINATION: topic,
    }

    def send_in_span(topic: str, value: bytes, key: bytes | None) -> None:
        span = tracer.start_span(name, kind=trace.SpanKind.PRODUCER, attributes=attributes)
        carrier: dict[str, str] = {}
        propagate.inject(carrier, trace.set_span_in_context(span))
        try:
            producer.produce(topic, value, key, headers=[(k, v.encode()) for k, v in carrier.items()])
        finally:
            span.end()

    try:
        return _send_all(producer, events, topic, runs, keys, progress, send_in_span)
    finally:
        flush = getattr(provider, "force_flush", None)
        if callable(flush):
            flush()
