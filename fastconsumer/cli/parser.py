"""The flags: their types, the parser, and errors of one line that name the flag to fix.

The load generator (``python -m fastconsumer.produce``) takes its flags with the same types and parser.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from fastconsumer.cli.logs import FORMATS, LEVELS
from fastconsumer.loops import LOOPS

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    def __init__(self, *, label: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.label = label or self.prog

    def error(self, message: str) -> NoReturn:
        """One line, not the whole usage block: the line names the flag to fix."""
        self.exit(EXIT_USAGE, f"{self.label}: error: {message} (see --help)\n")


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_float(text: str) -> float:
    value = number(text)
    if not value > 0:  # not `<= 0`: NaN is refused too
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535 (0: any free port), got {value}")
    return value


def kafka_property(text: str) -> tuple[str, str]:
    """``-X key=value``, as kcat takes librdkafka properties."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


class ReplaceAppend(argparse._AppendAction):
    """Repeatable, yet the command line's values replace a list that came from the environment or a config
    file instead of adding to it: the flag wins."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        if getattr(namespace, self.dest, None) is self.default:
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def build_parser() -> Parser:
    parser = Parser(
        label="fastconsumer",
        prog="python -m fastconsumer",
        description="Consume messages with a concurrent asyncio handler; Ctrl-C stops gracefully.",
    )
    _add_engine_flags(parser)
    _add_failure_flags(parser.add_argument_group("failures"))
    parser.add_argument(
        "--loop", choices=LOOPS, default="auto", help="event loop (auto: uvloop if installed)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON summary on stdout at exit")
    parser.add_argument(
        "--config",
        dest="config_file",
        metavar="FILE",
        help="TOML file of the flags' settings (concurrency = 64, a [kafka] table, ...); flags win over it",
    )
    _add_operations_flags(parser.add_argument_group("operating it"))
    _add_kafka_flags(parser.add_argument_group("Kafka (without --bootstrap-servers: the memory source)"))
    memory = parser.add_argument_group("memory source (the default)")
    memory.add_argument("--partitions", type=positive_int, default=3, help="partitions of the memory log (3)")
    memory.add_argument("--keys", type=int, default=1024, help="distinct keys, 0 for null keys (1024)")
    memory.add_argument("--count", type=positive_int, help="messages in the memory log (default: endless)")
    return parser


def _add_engine_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", type=positive_int, default=64, help="handler calls at once (64)")
    parser.add_argument(
        "--ordering",
        choices=("key", "partition", "unordered"),
        default=None,
        help="key: one at a time per key (default); partition: per partition; unordered: no order (the "
        "default and only choice with --share-group)",
    )
    parser.add_argument(
        "--handler",
        metavar="MODULE:FUNCTION",
        help="async handler to run (default: the demo handler, which parses JSON and waits --latency-ms)",
    )
    parser.add_argument(
        "--latency-ms", type=non_negative_float, default=1.0, help="demo handler's simulated I/O (1.0)"
    )
    parser.add_argument("--batch-size", type=positive_int, default=500, help="messages per fetch (500)")
    parser.add_argument(
        "--commit-interval", type=positive_float, default=1.0, help="seconds between async commits (1.0)"
    )
    parser.add_argument(
        "--shutdown-timeout",
        type=non_negative_float,
        default=30.0,
        help="seconds a stop waits for running handlers before abandoning them (30)",
    )
    parser.add_argument("--max-messages", type=positive_int, help="stop gracefully after N handled")
    parser.add_argument(
        "--max-buffered",
        type=positive_int,
        help="messages fetched and not yet handled, at most; the look-ahead starts at 4 x --batch-size or "
        "8 x --concurrency and grows to this while handlers starve behind the ordering (10 x that)",
    )
    parser.add_argument(
        "--max-buffered-mb",
        type=positive_float,
        default=64.0,
        help="MiB of keys and values fetched and not yet handled, at most (64)",
    )


def _add_failure_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument(
        "--retries", type=non_negative_int, default=0, help="retries of a failed handler call (0)"
    )
    group.add_argument(
        "--retry-backoff-ms", type=positive_float, default=100.0, help="first retry's backoff (100)"
    )
    group.add_argument(
        "--retry-backoff-max-ms", type=positive_float, default=10_000.0, help="longest backoff (10000)"
    )
    group.add_argument(
        "--on-error",
        choices=("stop", "dlq", "skip", "release"),
        default="stop",
        help="after the last retry: stop (commit below it, exit 1), dlq (write it to --dlq-topic), skip, "
        "release (--share-group: the broker delivers it again, up to the group's delivery count limit)",
    )
    group.add_argument("--dlq-topic", help="dead-letter topic for --on-error dlq")
    group.add_argument(
        "--handler-timeout", type=positive_float, help="seconds after which a handler call is cancelled"
    )


def _add_operations_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--log-level", choices=LEVELS, default="info", help="log level (info)")
    group.add_argument(
        "--log-format", choices=FORMATS, default="text", help="text, or json: one object per line"
    )
    group.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus /metrics and the /healthz and /readyz probes on this port (off by default)",
    )
    group.add_argument(
        "--metrics-host", default="0.0.0.0", metavar="HOST", help="address to serve metrics on (0.0.0.0)"
    )
    group.add_argument(
        "--stall-timeout",
        type=positive_float,
        metavar="S",
        default=60.0,
        help="seconds a partition's committed offset may stand still while messages wait before /readyz "
        "fails (60)",
    )
    group.add_argument(
        "--processes",
        type=positive_int,
        metavar="N",
        default=1,
        help="consumer processes in the group, for CPU-bound handlers (Kafka only; 1)",
    )
    group.add_argument("--process-index", type=non_negative_int, help=argparse.SUPPRESS)  # set by --processes
    group.add_argument(
        "--tracing",
        choices=("off", "on", "auto"),
        default="auto",
        help="OpenTelemetry spans per handler call (pip install 'fastconsumer[otel]'); auto: when OTEL_* "
        "variables configure an exporter (OTEL_TRACES_EXPORTER=console, OTEL_EXPORTER_OTLP_ENDPOINT=...)",
    )


def _add_kafka_flags(group: argparse._ArgumentGroup) -> None:
    group.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]", help="Kafka brokers to consume from")
    group.add_argument("--topic", action=ReplaceAppend, default=[], help="topic to consume (repeatable)")
    group.add_argument("--group", default=None, help="consumer group (fastconsumer)")
    group.add_argument(
        "--share-group",
        metavar="NAME",
        help="consume as a member of this share group (KIP-932, Kafka 4.2+) instead of a consumer group",
    )
    group.add_argument(
        "--share-consumers",
        type=positive_int,
        default=4,
        help="share consumers per process with --share-group, each with a polled batch in flight (4)",
    )
    group.add_argument(
        "-X",
        dest="config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=kafka_property,
        help="librdkafka consumer property, passed through (repeatable)",
    )
    group.add_argument(
        "--from-beginning", action="store_true", help="a new group starts at the earliest offsets"
    )
    group.add_argument(
        "--exit-at-end",
        action="store_true",
        help="stop gracefully once every assigned partition is read to its end and handled",
    )
