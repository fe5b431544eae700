"""From parsed flags to a consumer, in two steps: ``check()`` refuses every bad flag without creating a Kafka
client, ``consumer()`` then makes the source and the ``Consumer``.

The parent of ``--processes`` stops after the first step: its children build their own consumers, and a
mistake is one line from the parent rather than one from each child. What only librdkafka can judge (a
``-X`` property) is found when the source opens.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from fastconsumer import tracing
from fastconsumer.cli.demo import make_handler
from fastconsumer.engine import BatchHandler, Consumer, Handler, Settings
from fastconsumer.errors import ConfigError
from fastconsumer.policy import DeadLetter
from fastconsumer.sources import KafkaShareSource, KafkaSource, MemoryLog, MemorySource, Source


@dataclass(frozen=True)
class Plan:
    """What the flags ask for, checked; nothing connects to anything yet."""

    handler: Handler | BatchHandler
    on_error: str | DeadLetter
    settings: Settings


def check(args: argparse.Namespace) -> Plan:
    """Every check that needs no Kafka client; ``ConfigError`` names the flag to fix."""
    if args.processes > 1 and not args.bootstrap_servers:
        raise ConfigError(
            "--processes needs --bootstrap-servers (with the memory source each process would consume its "
            "own log)"
        )
    handler = load_handler(args.handler) if args.handler else make_handler(args.latency_ms)
    on_error = error_policy(args)
    if args.retry_backoff_ms > args.retry_backoff_max_ms:
        raise ConfigError("--retry-backoff-ms must not exceed --retry-backoff-max-ms")
    if args.exit_at_end and not args.bootstrap_servers and args.count is None:
        raise ConfigError("--exit-at-end on the endless memory source never ends: add --count N")
    check_source(args)
    ordering = check_share_group(args)
    settings = Settings(
        concurrency=args.concurrency,
        ordering=ordering,
        batch_size=args.batch_size,
        max_buffered=args.max_buffered,
        max_buffered_bytes=round(args.max_buffered_mb * 1024 * 1024),
        commit_interval=args.commit_interval,
        shutdown_timeout=args.shutdown_timeout,
        max_messages=args.max_messages,
        exit_at_end=args.exit_at_end,
        retries=args.retries,
        retry_backoff_ms=args.retry_backoff_ms,
        retry_backoff_max_ms=args.retry_backoff_max_ms,
        handler_timeout=args.handler_timeout,
        tracing=args.tracing,
    )
    return Plan(handler, on_error, settings)


def consumer(args: argparse.Namespace, plan: Plan) -> Consumer:
    tracing.provider_for(plan.settings.tracing)  # the SDK set up from OTEL_*: a bad exporter is exit 2 now
    return Consumer(source(args), plan.handler, on_error=plan.on_error, **dataclasses.asdict(plan.settings))


def load_handler(path: str) -> Handler | BatchHandler:
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
    # The Consumer would refuse it too, but under --processes no Consumer is made here.
    call = getattr(target, "__call__", None)  # noqa: B004 - an object with an async __call__ will do
    if not (inspect.iscoroutinefunction(target) or inspect.iscoroutinefunction(call)):
        raise ConfigError(f"--handler {path!r} must be a coroutine function (async def)")
    handler: Handler | BatchHandler = target
    return handler


def error_policy(args: argparse.Namespace) -> str | DeadLetter:
    if args.on_error != "dlq":
        if args.dlq_topic:
            raise ConfigError("--dlq-topic needs --on-error dlq")
        on_error: str = args.on_error
        return on_error
    if not args.dlq_topic:
        raise ConfigError("--on-error dlq needs --dlq-topic")
    if not args.bootstrap_servers:
        raise ConfigError(
            "--on-error dlq needs --bootstrap-servers (the memory source has no topics to write)"
        )
    return DeadLetter(args.dlq_topic, {"bootstrap.servers": args.bootstrap_servers})  # no client until used


def check_source(args: argparse.Namespace) -> None:
    if args.bootstrap_servers:
        if not args.topic:
            raise ConfigError("--bootstrap-servers needs at least one --topic")
        if args.count is not None or args.partitions != 3 or args.keys != 1024:
            raise ConfigError("--count, --partitions and --keys shape the memory source, not Kafka")
        return
    if args.topic or args.config or args.from_beginning:
        raise ConfigError(
            "--topic, -X and --from-beginning need --bootstrap-servers (without it the memory source runs)"
        )
    if args.keys < 0:
        raise ConfigError(f"--keys must be >= 0, got {args.keys}")


def check_share_group(args: argparse.Namespace) -> str:
    """The ordering; what a share group refuses (it keeps no order and has no end), and ``release``
    without one."""
    if not args.share_group:
        if args.on_error == "release":
            raise ConfigError(
                "--on-error release needs --share-group (it hands records back to a share group)"
            )
        return str(args.ordering or "key")
    if args.group is not None:
        raise ConfigError(
            "--share-group and --group: a member is in a share group or a consumer group, not both"
        )
    if not args.bootstrap_servers:
        raise ConfigError("--share-group needs --bootstrap-servers")
    if args.ordering not in (None, "unordered"):
        raise ConfigError(
            f"--ordering {args.ordering}: a share group keeps no order (other members handle the records "
            "around each one); leave it out or pass --ordering unordered"
        )
    if args.exit_at_end:
        raise ConfigError("--exit-at-end: a share group has no end to read to (records keep coming back)")
    return "unordered"


def source(args: argparse.Namespace) -> Source:
    """The source of checked flags."""
    if args.bootstrap_servers and args.share_group:
        return KafkaShareSource(
            args.bootstrap_servers,
            args.topic,
            args.share_group,
            config=dict(args.config),
            consumers=args.share_consumers,
            from_beginning=args.from_beginning,
        )
    if args.bootstrap_servers:
        return KafkaSource(
            args.bootstrap_servers,
            args.topic,
            args.group or "fastconsumer",
            config=dict(args.config),
            from_beginning=args.from_beginning,
        )
    return MemorySource(MemoryLog(partitions=args.partitions, count=args.count, keys=args.keys))
