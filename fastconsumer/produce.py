"""``python -m fastconsumer.produce``: fill a Kafka topic with the test messages, fast.

Tests and benchmarks of the consumer need topics holding known messages, from a thousand to millions:
``{"foo": "foo<i>", "bar": "bar<i>"}`` for consecutive ``i``, optionally padded to a fixed size and keyed.
This writes them with the same confluent-kafka (librdkafka) the consumer uses, so no other tool (kcat,
the Java console producer, Docker) is needed, and fast enough that filling a topic takes seconds.

    python -m fastconsumer.produce --bootstrap-servers 127.0.0.1:9092 --topic foo --count 1000000 \\
        --size 100 --keys 1000 --partitions 4 --json

The library function ``produce()`` does the work; the tests call it (or this CLI) too.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from fastconsumer.arguments import Parser, int_at_least, kafka_property

__all__ = ["DEFAULT_CONFIG", "ProduceError", "message_value", "produce"]

log = logging.getLogger("fastconsumer.produce")

EXIT_OK, EXIT_FAILED = 0, 1

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

_PAD_FIELD = ', "pad": "'


class ProduceError(Exception):
    """The cluster could not be reached, the topic not created, or messages were not delivered.

    ``summary`` is the run's summary when messages were produced (``failed`` says how many were lost).
    """

    def __init__(self, message: str, summary: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.summary = summary


def _template(digits: int, size: int | None) -> bytes:
    """``template % (i, i)`` is the value of every message ``i`` with ``digits`` digits: with a ``size``,
    all of them are the same length, ``size`` (``ValueError`` if they do not fit)."""
    base = '{"foo": "foo%d", "bar": "bar%d"}'
    if size is None:
        return base.encode()
    head, tail = base[:-1] + _PAD_FIELD, '"}'
    pad = size - (len(head) - len("%d%d") + 2 * digits + len(tail))
    if pad < 0:
        raise ValueError(f"size {size} is too small: the JSON of a {digits}-digit i needs {size - pad} bytes")
    return (head + "x" * pad + tail).encode()


def message_value(i: int, size: int | None = None) -> bytes:
    """Message ``i``'s value: ``{"foo": "foo<i>", "bar": "bar<i>"}``; with ``size``, a ``"pad"`` field of
    ``x`` makes it exactly ``size`` bytes (``ValueError`` if it does not fit)."""
    return _template(len(str(i)), size) % (i, i)


def _segments(start: int, count: int, size: int | None) -> list[tuple[int, int, bytes]]:
    """``(lo, hi, template)`` for each run ``lo <= i < hi`` of ``i`` with the same number of digits."""
    out = []
    lo, end = start, start + count
    while lo < end:
        digits = len(str(lo))
        hi = min(end, 10**digits)
        out.append((lo, hi, _template(digits, size)))
        lo = hi
    return out


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
) -> dict[str, Any]:
    """Produce messages ``start`` .. ``start + count - 1`` to ``topic`` and wait until all are delivered.

    Message ``i`` has the value ``message_value(i, size)`` and the key ``key-<i % keys>`` (no key if
    ``keys`` is 0), so each key's messages land in one partition. ``partitions`` creates the topic with that
    many partitions if it does not exist (otherwise the broker's auto-creation, if enabled, makes it).
    ``config`` is librdkafka producer settings over ``DEFAULT_CONFIG``. ``progress(delivered, count, rate)``
    is called about every second.

    Returns the summary ``{"topic", "count", "bytes", "elapsed_s", "rate", "failed"}``: ``bytes`` counts
    the message values, ``elapsed_s`` runs from the first message produced to the last one delivered.
    Raises ``ValueError`` on bad arguments (a ``size`` too small for the JSON, a ``config`` librdkafka
    rejects) before connecting, and ``ProduceError`` if the cluster is not reachable within
    ``connect_timeout`` seconds, the topic cannot be created, or any message was not delivered (its
    ``summary`` then says how many failed).
    """
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    if start < 0:
        raise ValueError(f"start must be >= 0, got {start}")
    if keys < 0:
        raise ValueError(f"keys must be >= 0, got {keys}")
    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    if size is not None:
        message_value(start + count - 1, size)  # the longest message: ValueError if it does not fit
    segments = _segments(start, count, size)

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

    key_values: list[bytes | None] = [f"key-{k}".encode() for k in range(keys)] if keys else [None]
    nkeys = len(key_values)
    send = producer.produce
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
        for lo, hi, template in segments:
            for chunk in range(lo, hi, POLL_EVERY):
                chunk_end = min(chunk + POLL_EVERY, hi)
                for i in range(chunk, chunk_end):
                    value = template % (i, i)
                    try:
                        send(topic, value, key_values[i % nkeys])
                    except BufferError:  # the local queue is full: serve deliveries until there is room
                        _send_when_room(producer, topic, value, key_values[i % nkeys])
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
    elapsed = monotonic() - t0

    summary = {
        "topic": topic,
        "count": count,
        "bytes": sum((hi - lo) * len(template % (lo, lo)) for lo, hi, template in segments),
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


def _send_when_room(producer: Producer, topic: str, value: bytes, key: bytes | None) -> None:
    while True:
        producer.poll(0.1)
        try:
            producer.produce(topic, value, key)
            return
        except BufferError:
            continue


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> Parser:
    parser = Parser(
        prog="python -m fastconsumer.produce",
        description='Produce JSON messages {"foo": "foo<i>", "bar": "bar<i>"} to a Kafka topic, fast.',
    )
    parser.add_argument("--bootstrap-servers", required=True, metavar="HOST:PORT", help="Kafka to write to")
    parser.add_argument("--topic", required=True, help="topic to write to")
    parser.add_argument("--count", type=int_at_least(1), default=100, help="messages to produce (100)")
    parser.add_argument("--start", type=int_at_least(0), default=0, help="i of the first message (0)")
    parser.add_argument(
        "--size", type=int_at_least(1), metavar="N", help='pad each value to exactly N bytes (a "pad" field)'
    )
    parser.add_argument(
        "--keys", type=int_at_least(0), default=0, metavar="K", help="keys key-<i %% K>; 0: no keys (0)"
    )
    parser.add_argument(
        "--partitions",
        type=int_at_least(1),
        metavar="P",
        help="create the topic with P partitions if it does not exist",
    )
    parser.add_argument(
        "-X",
        dest="config",
        action="append",
        type=kafka_property,
        default=[],
        metavar="KEY=VALUE",
        help="librdkafka producer property, e.g. -X compression.type=none (repeatable)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary line on stdout")
    return parser


class _Progress:
    """``produced N/M (rate/s)`` redrawn about every second on a terminal; nothing when not a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.drawn = False

    def __call__(self, done: int, count: int, rate: float) -> None:
        self.stream.write(f"\r\033[Kproduced {done:,}/{count:,} ({rate:,.0f}/s)")
        self.stream.flush()
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.drawn = False


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with one line on bad usage
    # warnings (ours, and librdkafka's through its child logger) as lines on stderr, only while main() runs
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter("fastconsumer.produce: %(message)s"))
    saved = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.WARNING)
    log.propagate = False
    try:
        return _main(parser, args, out, err)
    finally:
        log.removeHandler(handler)
        log.level, log.propagate = saved


def _main(parser: Parser, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    progress = _Progress(err) if err.isatty() else None
    summary: dict[str, Any] | None = None
    code = EXIT_OK
    try:
        summary = produce(
            args.bootstrap_servers,
            args.topic,
            args.count,
            size=args.size,
            keys=args.keys,
            partitions=args.partitions,
            start=args.start,
            config=dict(args.config),
            progress=progress,
        )
    except ProduceError as exc:
        if progress is not None:
            progress.clear()
        err.write(f"{parser.prog}: error: {exc}\n")
        summary, code = exc.summary, EXIT_FAILED
    except ValueError as exc:  # found before connecting: --size too small, a -X setting librdkafka rejects
        parser.error(str(exc))
    except KeyboardInterrupt:
        if progress is not None:
            progress.clear()
        err.write(f"{parser.prog}: interrupted\n")
        return 130
    if progress is not None:
        progress.clear()
    if summary is not None:
        if args.json:
            out.write(json.dumps(summary) + "\n")
        elif code == EXIT_OK:
            out.write(
                f"produced {summary['count']:,} messages ({summary['bytes']:,} bytes) to {summary['topic']} "
                f"in {summary['elapsed_s']:.2f} s: {summary['rate']:,.0f}/s\n"
            )
        out.flush()
    return code


if __name__ == "__main__":
    sys.exit(main())
