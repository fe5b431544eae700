"""``python -m fastconsumer``: run a handler over a source until stopped, then print a summary.

Exit codes: 0 when the run stopped as asked (a signal, ``--max-messages``, ``--exit-at-end``); 1 when a
handler failure or another error stopped it; 2 for bad usage, before anything runs or when the source
refuses its configuration as it opens.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, TextIO

from fastconsumer.cli import build, logs, supervisor
from fastconsumer.cli.parser import EXIT_USAGE
from fastconsumer.cli.progress import Progress, emit, format_summary
from fastconsumer.cli.settings import parse
from fastconsumer.engine import Consumer
from fastconsumer.errors import ConfigError, HandlerError
from fastconsumer.loops import new_event_loop

if TYPE_CHECKING:
    from fastconsumer.metrics import MetricsServer

log = logging.getLogger("fastconsumer")

EXIT_OK, EXIT_FAILED = 0, 1


def main(argv: list[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    _, args = parse(argv, os.environ)  # bad usage exits 2 here, with one line
    logs.configure(err, args.log_level, args.log_format, args.process_index)
    try:
        plan = build.check(args)
        if args.processes > 1:
            new_event_loop(args.loop).close()  # each child would refuse a missing uvloop: say it once
            return supervisor.run(argv, args, out)
        consumer = build.consumer(args, plan)
        loop = new_event_loop(args.loop)
        server = serve_metrics(consumer, args, out)
    except ConfigError as exc:
        return refuse(exc, args, out, err)
    try:
        return consume(consumer, loop, args, out, err)
    except ConfigError as exc:  # refused as the source opened: a -X property librdkafka does not know
        return refuse(exc, args, out, None)
    finally:
        loop.close()
        if server is not None:
            server.close()


def refuse(exc: ConfigError, args: argparse.Namespace, out: TextIO, err: TextIO | None) -> int:
    """Bad usage: one line on ``err``, or through the log once the run has begun; from a child of
    ``--processes``, a note to the parent, which says it once for all of them."""
    if args.process_index is not None:
        emit(out, json.dumps({supervisor.CONFIG_ERROR: str(exc)}))
    elif err is not None:
        err.write(f"fastconsumer: error: {exc}\n")
        err.flush()
    else:
        log.error("error: %s", exc)
    return EXIT_USAGE


def serve_metrics(consumer: Consumer, args: argparse.Namespace, out: TextIO) -> MetricsServer | None:
    if args.metrics_port is None:
        return None
    from fastconsumer import metrics  # prometheus_client only when asked for

    server = metrics.serve(consumer, args.metrics_port, args.metrics_host, stall_timeout=args.stall_timeout)
    if args.process_index is not None:  # the parent serves every child's metrics on its own port
        emit(out, json.dumps({supervisor.METRICS: server.url}))
    return server


def consume(
    consumer: Consumer, loop: asyncio.AbstractEventLoop, args: argparse.Namespace, out: TextIO, err: TextIO
) -> int:
    """Run to the end; the summary goes to stdout even after a failure, for what was committed."""
    if args.process_index is not None:
        watch_parent(consumer)
    tune_gc()
    code = loop.run_until_complete(run(consumer, args, err))
    if consumer.summary is not None:
        emit(out, json.dumps(consumer.summary.to_dict()) if args.json else format_summary(consumer.summary))
    return code


async def run(consumer: Consumer, args: argparse.Namespace, err: TextIO) -> int:
    """Run with progress and signals until the consumer stops; the exit code of how it stopped."""
    loop = asyncio.get_running_loop()
    stop_on_signals(consumer, loop)
    progress = Progress(
        consumer, err, through_log=args.log_format == "json" or args.process_index is not None
    )
    ticker = loop.create_task(progress.run())
    try:
        await consumer.run()
    except HandlerError as exc:
        log.error("stopped by a handler failure: %s", exc)
        return EXIT_FAILED
    except ConfigError:
        raise  # bad usage, not a failed run: no summary
    except Exception as exc:  # a runtime failure: name it, exit 1
        log.error("stopped by an error: %s: %s", type(exc).__name__, exc)
        return EXIT_FAILED
    finally:
        ticker.cancel()
        progress.clear()
    return EXIT_OK


def stop_on_signals(consumer: Consumer, loop: asyncio.AbstractEventLoop) -> None:
    """SIGINT or SIGTERM stops gracefully; a second one abandons the handlers still running."""
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
