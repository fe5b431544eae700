"""``python -m fastconsumer``: run a handler over a source until stopped, with progress and a summary."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import json
import logging
import os
import signal
import sys
import threading
from typing import Any, TextIO

from fastconsumer import config_file, logs
from fastconsumer.arguments import (
    EXIT_USAGE,
    Parser,
    int_at_least,
    kafka_property,
    non_negative_float,
    positive_float,
)
from fastconsumer.engine import Consumer, Summary
from fastconsumer.demo import make_handler
from fastconsumer.errors import ConfigError, HandlerError
from fastconsumer.sources import KafkaSource
from fastconsumer.loops import LOOPS, new_event_loop
from fastconsumer.sources import MemoryLog, MemorySource
from fastconsumer.policy import DeadLetter
from fastconsumer.progress import LOG_EVERY, Progress, format_summary
from fastconsumer.sources import Source

log = logging.getLogger("fastconsumer")

EXIT_OK, EXIT_FAILED = 0, 1


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def port_number(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number 0-65535 (0: any free port), got {value}")
    return value


class ReplaceAppend(argparse._AppendAction):
    """Repeatable, and the command line's values replace a list that came from the environment or a config
    file instead of adding to it: the flag wins."""

    def __call__(self, parser, namespace, values, option_string=None):  # type: ignore[no-untyped-def]
        if getattr(namespace, self.dest, None) is self.default:
            setattr(namespace, self.dest, [])
        super().__call__(parser, namespace, values, option_string)


def apply_environment(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """``FASTCONSUMER_<FLAG>`` sets a flag's default (``FASTCONSUMER_CONCURRENCY=8``); the flag wins."""
    for action in parser._actions:
        if not action.option_strings or not action.option_strings[-1].startswith("--"):
            continue
        name = "FASTCONSUMER_" + action.dest.upper()
        raw = environ.get(name)
        if raw is None or action.dest in ("help", "config", "config_file", "process_index"):
            continue
        try:
            if isinstance(action, argparse._StoreTrueAction):
                value: Any = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(action, argparse._AppendAction):
                value = [part.strip() for part in raw.split(",") if part.strip()]
            else:
                value = action.type(raw) if action.type else raw
                if action.choices is not None and value not in action.choices:
                    raise argparse.ArgumentTypeError(f"must be one of {', '.join(action.choices)}")
        except (argparse.ArgumentTypeError, ValueError) as exc:
            parser.error(f"environment variable {name}={raw!r}: {exc}")
        parser.set_defaults(**{action.dest: value})


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        label="fastconsumer",
        prog="python -m fastconsumer",
        description="Consume messages with a concurrent asyncio handler; Ctrl-C stops gracefully.",
    )
    parser.add_argument("--concurrency", type=positive_int, default=64, help="handler calls at once (64)")
    parser.add_argument(
        "--ordering",
        choices=("key", "partition", "unordered"),
        default="key",
        help="key: one at a time per key (default); partition: per partition; unordered: no order",
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
    failures = parser.add_argument_group("failures")
    failures.add_argument(
        "--retries", type=non_negative_int, default=0, help="retries of a failed handler call (0)"
    )
    failures.add_argument(
        "--retry-backoff-ms", type=positive_float, default=100.0, help="first retry's backoff (100)"
    )
    failures.add_argument(
        "--retry-backoff-max-ms", type=positive_float, default=10_000.0, help="longest backoff (10000)"
    )
    failures.add_argument(
        "--on-error",
        choices=("stop", "dlq", "skip"),
        default="stop",
        help="after the last retry: stop (commit below it, exit 1), dlq (write it to --dlq-topic), skip",
    )
    failures.add_argument("--dlq-topic", help="dead-letter topic for --on-error dlq")
    failures.add_argument(
        "--handler-timeout", type=positive_float, help="seconds after which a handler call is cancelled"
    )
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
    ops = parser.add_argument_group("operating it")
    ops.add_argument("--log-level", choices=logs.LEVELS, default="info", help="log level (info)")
    ops.add_argument(
        "--log-format", choices=logs.FORMATS, default="text", help="text, or json: one object per line"
    )
    ops.add_argument(
        "--metrics-port",
        type=port_number,
        metavar="PORT",
        help="serve Prometheus /metrics and the /healthz and /readyz probes on this port (off by default)",
    )
    ops.add_argument(
        "--metrics-host", default="0.0.0.0", metavar="HOST", help="address to serve metrics on (0.0.0.0)"
    )
    ops.add_argument(
        "--stall-timeout",
        type=positive_float,
        metavar="S",
        default=60.0,
        help="seconds a partition's committed offset may stand still while messages wait before /readyz "
        "fails (60)",
    )
    ops.add_argument(
        "--processes",
        type=positive_int,
        metavar="N",
        default=1,
        help="consumer processes in the group, for CPU-bound handlers (Kafka only; 1)",
    )
    ops.add_argument("--process-index", type=non_negative_int, help=argparse.SUPPRESS)  # set by --processes
    kafka = parser.add_argument_group("Kafka (without --bootstrap-servers: the memory source)")
    kafka.add_argument("--bootstrap-servers", metavar="HOST:PORT[,...]", help="Kafka brokers to consume from")
    kafka.add_argument("--topic", action=ReplaceAppend, default=[], help="topic to consume (repeatable)")
    kafka.add_argument("--group", default="fastconsumer", help="consumer group (fastconsumer)")
    kafka.add_argument(
        "-X",
        dest="config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        type=kafka_property,
        help="librdkafka consumer property, passed through (repeatable)",
    )
    kafka.add_argument(
        "--from-beginning", action="store_true", help="a new group starts at the earliest offsets"
    )
    kafka.add_argument(
        "--exit-at-end",
        action="store_true",
        help="stop gracefully once every assigned partition is read to its end and handled",
    )
    memory = parser.add_argument_group("memory source (the default)")
    memory.add_argument("--partitions", type=positive_int, default=3, help="partitions of the memory log (3)")
    memory.add_argument("--keys", type=int, default=1024, help="distinct keys, 0 for null keys (1024)")
    memory.add_argument("--count", type=positive_int, help="messages in the memory log (default: endless)")
    return parser


def load_handler(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--handler {path!r}: expected MODULE:FUNCTION, e.g. myapp.handlers:handle")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--handler {path!r}: cannot import {module_name!r}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ConfigError(f"--handler {path!r}: module {module_name!r} has no {attr!r}") from None
    return target


def build_source(args: argparse.Namespace) -> Source:
    if args.bootstrap_servers:
        if not args.topic:
            raise ConfigError("--bootstrap-servers needs at least one --topic")
        if args.count is not None or args.partitions != 3 or args.keys != 1024:
            raise ConfigError("--count, --partitions and --keys shape the memory source, not Kafka")
        return KafkaSource(
            args.bootstrap_servers,
            args.topic,
            args.group,
            config=dict(args.config),
            from_beginning=args.from_beginning,
        )
    if args.topic or args.config or args.from_beginning:
        raise ConfigError(
            "--topic, -X and --from-beginning need --bootstrap-servers (without it the memory source runs)"
        )
    if args.keys < 0:
        raise ConfigError(f"--keys must be >= 0, got {args.keys}")
    return MemorySource(MemoryLog(partitions=args.partitions, count=args.count, keys=args.keys))


def build_policy(args: argparse.Namespace) -> str | DeadLetter:
    if args.on_error != "dlq":
        if args.dlq_topic:
            raise ConfigError("--dlq-topic needs --on-error dlq")
        return args.on_error
    if not args.dlq_topic:
        raise ConfigError("--on-error dlq needs --dlq-topic")
    if not args.bootstrap_servers:
        raise ConfigError(
            "--on-error dlq needs --bootstrap-servers (the memory source has no topics to write)"
        )
    return DeadLetter(args.dlq_topic, {"bootstrap.servers": args.bootstrap_servers})


def build_consumer(args: argparse.Namespace) -> Consumer:
    handler = load_handler(args.handler) if args.handler else make_handler(args.latency_ms)
    if args.metrics_port is not None:
        from fastconsumer import metrics

        handler = metrics.timed(handler)  # the handler latency histogram
    on_error = build_policy(args)
    if args.retry_backoff_ms > args.retry_backoff_max_ms:
        raise ConfigError("--retry-backoff-ms must not exceed --retry-backoff-max-ms")
    if args.exit_at_end and not args.bootstrap_servers and args.count is None:
        raise ConfigError("--exit-at-end on the endless memory source never ends: add --count N")
    source = build_source(args)
    return Consumer(
        source,
        handler,
        concurrency=args.concurrency,
        ordering=args.ordering,
        batch_size=args.batch_size,
        commit_interval=args.commit_interval,
        shutdown_timeout=args.shutdown_timeout,
        max_messages=args.max_messages,
        exit_at_end=args.exit_at_end,
        retries=args.retries,
        retry_backoff_ms=args.retry_backoff_ms,
        retry_backoff_max_ms=args.retry_backoff_max_ms,
        handler_timeout=args.handler_timeout,
        on_error=on_error,
    )


async def run(consumer: Consumer, args: argparse.Namespace, err: TextIO) -> Summary:
    loop = asyncio.get_running_loop()
    signals = 0

    def on_signal(signum: int) -> None:
        nonlocal signals
        signals += 1
        name = signal.Signals(signum).name
        if signals == 1:
            log.warning("%s: stopping gracefully (again to abandon running handlers)", name)
            consumer.request_stop()
        else:
            log.warning("%s: abandoning running handlers; committing only what completed", name)
            consumer.request_stop(abandon=True)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)
    progress = Progress(consumer, err)
    if args.log_format == "json" or args.process_index is not None:
        ticker = loop.create_task(log_progress(progress))  # lines through logging, never a live line
    else:
        ticker = loop.create_task(progress.run())
    try:
        return await consumer.run()
    finally:
        ticker.cancel()
        progress.clear()


async def log_progress(progress: Progress) -> None:
    last = progress.consumer.stats.handled
    while True:
        await asyncio.sleep(LOG_EVERY)
        now = progress.consumer.stats.handled
        log.info("%s", progress.line((now - last) / LOG_EVERY))
        last = now


def parse(argv: list[str], environ: dict[str, str]) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    """Flags over the --config file over FASTCONSUMER_* variables over the defaults."""
    parser = build_parser()
    apply_environment(parser, environ)
    args = parser.parse_args(argv)  # exits 2 with one line on bad usage
    if args.config_file:  # the file's settings become defaults: then only a flag overrides them
        try:
            parser.set_defaults(**config_file.load(args.config_file, parser))
        except config_file.FileError as exc:
            parser.error(str(exc))
        args = parser.parse_args(argv)
    return parser, args


def watch_parent(consumer: Consumer) -> None:
    """Under --processes: stop gracefully when the parent's end of stdin closes (the parent died)."""

    def wait() -> None:
        try:
            while os.read(0, 65536):  # the raw descriptor: a buffered reader's lock would hold up the exit
                pass
        except OSError:
            pass
        consumer.request_stop()

    threading.Thread(target=wait, name="fastconsumer-parent", daemon=True).start()


def tune_gc() -> None:
    """The CLI owns its process, so it may tune the collector (a library must not): every message
    allocates, and the default first-generation threshold of 700 runs a collection every few hundred
    messages for cycles that a consumer hardly makes; about 10% of the Kafka throughput (measured). What
    start-up built is frozen out of the collections."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def main(argv: list[str] | None = None, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, args = parse(argv, dict(os.environ))
    logs.configure(err, args.log_level, args.log_format, args.process_index)
    server = None
    try:
        if args.processes > 1 and not args.bootstrap_servers:
            raise ConfigError(
                "--processes needs --bootstrap-servers (with the memory source each process would consume "
                "its own log)"
            )
        # Under --processes too: bad input is one line here, not one per process.
        consumer = build_consumer(args)
        if args.processes > 1:
            from fastconsumer import processes

            return processes.run(argv, args, out)
        loop = new_event_loop(args.loop)
        if args.metrics_port is not None:
            from fastconsumer import metrics

            server = metrics.serve(
                consumer, args.metrics_port, args.metrics_host, stall_timeout=args.stall_timeout
            )
    except ConfigError as exc:
        parser.exit(EXIT_USAGE, f"fastconsumer: error: {exc}\n")
    if args.process_index is not None:
        if server is not None:
            emit(out, json.dumps({"metrics": server.url}))
        watch_parent(consumer)
    tune_gc()
    code = EXIT_OK
    try:
        loop.run_until_complete(run(consumer, args, err))
    except HandlerError as exc:
        log.error("stopped by a handler failure: %s", exc)
        code = EXIT_FAILED
    except ConfigError as exc:
        log.error("error: %s", exc)
        code = EXIT_USAGE
    except Exception as exc:  # a runtime failure: name it, exit 1
        log.error("stopped by an error: %s: %s", type(exc).__name__, exc)
        code = EXIT_FAILED
    finally:
        loop.close()
        if server is not None:
            server.close()
    summary = consumer.summary
    if summary is not None and code != EXIT_USAGE:
        emit(out, json.dumps(summary.to_dict()) if args.json else format_summary(summary))
    return code


def emit(out: TextIO, line: str) -> None:
    """A line on stdout; a reader that went away (a dead --processes parent, ``| head``) is no error."""
    try:
        out.write(line + "\n")
        out.flush()
    except BrokenPipeError:
        if out is sys.stdout:  # nor is the flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
