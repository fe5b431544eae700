"""``python -m fastconsumer.produce``: ``produce()`` from a shell, with a progress line on a terminal and a
summary (``--json``: one JSON line) on stdout. Exit codes: 0 when every message was delivered, 1 when the
cluster failed us, 2 for bad usage (found before connecting), 130 when interrupted."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, TextIO

from fastconsumer.cli.parser import Parser, int_at_least, kafka_property
from fastconsumer.errors import ConfigError
from fastconsumer.produce.producer import ProduceError, log, produce

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


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
    parser.add_argument(
        "--trace",
        action="store_true",
        help="a W3C traceparent header on every message: a send span's when OpenTelemetry is configured "
        "(OTEL_TRACES_EXPORTER=console, OTEL_EXPORTER_OTLP_ENDPOINT=...), a random one otherwise",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary line on stdout")
    return parser


class Progress:
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


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
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
        return _run(parser, args, out, err)
    finally:
        log.removeHandler(handler)
        log.level, log.propagate = saved


def _run(parser: Parser, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    progress = Progress(err) if err.isatty() else None
    summary: dict[str, Any] | None
    code = EXIT_OK
    try:
        summary = _produce(args, progress)
    except ProduceError as exc:
        err.write(f"{parser.prog}: error: {exc}\n")
        summary, code = exc.summary, EXIT_FAILED
    except (ValueError, ConfigError) as exc:  # before connecting: --size too small, a bad -X or OTEL_*
        parser.error(str(exc))
    except KeyboardInterrupt:
        err.write(f"{parser.prog}: interrupted\n")
        return EXIT_INTERRUPTED
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


def _produce(args: argparse.Namespace, progress: Progress | None) -> dict[str, Any]:
    try:
        return produce(
            args.bootstrap_servers,
            args.topic,
            args.count,
            size=args.size,
            keys=args.keys,
            partitions=args.partitions,
            start=args.start,
            config=dict(args.config),
            progress=progress,
            trace=args.trace,
        )
    finally:
        if progress is not None:
            progress.clear()  # before any line that says how it went


if __name__ == "__main__":
    sys.exit(main())
