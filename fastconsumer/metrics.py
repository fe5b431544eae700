"""Prometheus metrics and Kubernetes probes for a running ``Consumer``, on one HTTP port.

::

    from fastconsumer import metrics

    consumer = Consumer(source, handle)
    server = metrics.serve(consumer, port=9100)          # before start(): /metrics, /healthz, /readyz
    ...
    server.close()

Nothing is counted per message for this: a scrape reads the consumer's ``stats`` and its source's
(``Source.stats``, ``assignment()``, ``watermarks()``). Only the handler latency histogram, which ``serve()``
turns on, adds a few hundred nanoseconds per handler call.

- ``/healthz`` (liveness): 200 while the consumer's event loop turns. A thread asks the loop to note the time
  every ``heartbeat`` seconds; a note older than ``liveness_timeout`` (the loop is blocked) or a finished run
  is 503.
- ``/readyz`` (readiness): 200 when the consumer runs, its loop turns, it has partitions (a member of the
  group with an assignment) and no partition is stalled: messages wait past its committed offset and that
  offset has not moved for ``stall_timeout`` seconds. Both answer with a JSON body saying why.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector

from fastconsumer.engine import Consumer
from fastconsumer.errors import ConfigError
from fastconsumer.histogram import Histogram

log = logging.getLogger("fastconsumer.metrics")

Key = tuple[str, int]
Route = Callable[[], tuple[int, str, bytes]]


class Watch:
    """What the probes and the per-partition gauges need, read from another thread than the consumer's.

    Only plain reads of the consumer (counters, a copy of its ``committed`` dict) and its source happen here;
    the event loop is asked to note the time (``last_turn``) and does nothing else for it.
    """

    def __init__(
        self,
        consumer: Consumer,
        *,
        stall_timeout: float = 60.0,
        liveness_timeout: float = 10.0,
        heartbeat: float = 1.0,
    ) -> None:
        self.consumer = consumer
        self.stall_timeout = stall_timeout
        self.liveness_timeout = liveness_timeout
        self.heartbeat = heartbeat
        self.last_turn = time.monotonic()
        self._asked = False  # a heartbeat is queued on the loop and has not run yet
        self._loop: Any = None  # the consumer's loop, once seen
        self._committed: dict[Key, int] = {}
        # when each partition's committed offset last moved, or the partition was last seen caught up
        self._since: dict[Key, float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fastconsumer-heartbeat", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # -- the loop's heartbeat

    def _beat(self) -> None:
        while not self._closed.wait(self.heartbeat):
            loop = self.consumer.loop
            if loop is not None and loop is not self._loop:  # the run started: its clock starts now
                self.last_turn = time.monotonic()
                self._loop = loop
            if loop is not None and not self._asked and not loop.is_closed():
                self._asked = True
                try:
                    loop.call_soon_threadsafe(self._turned)
                except RuntimeError:  # the loop closed meanwhile
                    pass
            self.partitions()  # notes committed offsets that moved, between scrapes too

    def _turned(self) -> None:
        self.last_turn = time.monotonic()
        self._asked = False

    def loop_age(self) -> float:
        """Seconds since the event loop last turned; 0 before it runs."""
        if self.consumer.loop is None or self.consumer.loop is not self._loop:
            return 0.0
        return max(0.0, time.monotonic() - self.last_turn)

    # -- partitions

    def assignment(self) -> set[Key]:
        return self.consumer.source.assignment()

    def offsets(self) -> dict[Key, tuple[int | None, int | None]]:
        """``(start, end)`` of each partition where known: ``end`` the next offset to be written, ``start``
        where a member with no committed offset begins (auto.offset.reset)."""
        return {key: (w.start, w.end) for key, w in self.consumer.source.watermarks().items()}

    def partitions(self) -> dict[Key, dict[str, Any]]:
        """``{(topic, partition): {"committed", "lag", "stalled_s"}}`` for each assigned partition.

        ``lag``: messages past the committed offset (None while unknown). ``stalled_s``: seconds since the
        committed offset last moved, counted only while messages wait past it (0 when caught up).
        """
        now = time.monotonic()
        committed = dict(self.consumer.stats.committed)
        offsets = self.offsets()
        out = {}
        with self._lock:
            assigned = self.assignment()
            for key in list(self._since):
                if key not in assigned:
                    del self._since[key]
                    self._committed.pop(key, None)
            for key in assigned:
                start, end = offsets.get(key, (None, None))
                offset = committed.get(key)
                base = offset if offset is not None else start  # nothing committed yet: where it starts
                lag = max(0, end - base) if end is not None and base is not None else None
                if key not in self._since or self._committed.get(key) != offset or lag == 0:
                    self._since[key] = now
                    self._committed[key] = offset  # type: ignore[assignment]
                out[key] = {"committed": offset, "lag": lag, "stalled_s": now - self._since[key]}
        return out

    # -- the probes

    def health(self) -> tuple[bool, dict[str, Any]]:
        finished = self.consumer.summary is not None
        age = self.loop_age()
        alive = not finished and age <= self.liveness_timeout
        return alive, {"alive": alive, "loop_age_s": round(age, 3), "finished": bool(finished)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        alive, body = self.health()
        partitions = self.partitions()
        stalled = sorted(
            f"{t}[{p}]" for (t, p), state in partitions.items() if state["stalled_s"] > self.stall_timeout
        )
        running = bool(self.consumer.running)
        ready = alive and running and bool(partitions) and not stalled
        body.update(ready=ready, running=running, partitions=len(partitions), stalled=stalled)
        return ready, body


class ConsumerCollector:
    """Reads the consumer at scrape time: a Prometheus custom collector."""

    def __init__(self, consumer: Consumer, watch: Watch) -> None:
        self.consumer = consumer
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        c = self.consumer
        source = c.source
        for name, value, text in (
            ("messages_consumed", c.stats.consumed, "Messages fetched from the source."),
            (
                "messages_handled",
                c.stats.handled,
                "Messages whose handler finished (or that a policy let pass).",
            ),
            ("messages_failed", c.stats.failed, "Messages whose handler failed after its last retry."),
            ("messages_retried", c.stats.retried, "Handler retries."),
            ("messages_skipped", c.stats.skipped, "Failed messages skipped by --on-error skip."),
            (
                "messages_dead_lettered",
                c.stats.dead_lettered,
                "Failed messages written to the dead-letter topic.",
            ),
            ("messages_abandoned", c.stats.abandoned, "Messages whose handler a stop abandoned."),
            ("commit_failures", c.stats.commit_failures, "Commits that failed (they are sent again)."),
        ):
            yield CounterMetricFamily(f"fastconsumer_{name}", text, value=value)
        yield GaugeMetricFamily(
            "fastconsumer_messages_in_flight", "Handler calls running.", value=c.stats.in_flight
        )
        yield GaugeMetricFamily(
            "fastconsumer_messages_buffered", "Messages fetched, waiting for a handler.", value=c.buffered
        )
        if c.stats.handler_seconds is not None:
            yield _histogram(
                "fastconsumer_handler_seconds", "Handler call duration.", c.stats.handler_seconds
            )
        yield CounterMetricFamily(
            "fastconsumer_commits", "Offset commits the source acknowledged.", value=source.stats.commits
        )
        yield _histogram(
            "fastconsumer_commit_seconds",
            "Time from sending a commit to its result.",
            source.stats.commit_latency,
        )
        yield CounterMetricFamily(
            "fastconsumer_rebalances",
            "Partition assignments, revokes and losses.",
            value=source.stats.rebalances,
        )
        partitions = self.watch.partitions()
        yield GaugeMetricFamily(
            "fastconsumer_assigned_partitions", "Partitions assigned to this consumer.", value=len(partitions)
        )
        labels = ["topic", "partition"]
        committed = GaugeMetricFamily(
            "fastconsumer_committed_offset", "The partition's committed offset.", labels=labels
        )
        lag = GaugeMetricFamily(
            "fastconsumer_consumer_lag", "Messages past the partition's committed offset.", labels=labels
        )
        stalled = GaugeMetricFamily(
            "fastconsumer_commit_stalled_seconds",
            "Seconds since the partition's committed offset last moved while messages wait past it "
            "(0 when caught up).",
            labels=labels,
        )
        for (topic, partition), state in sorted(partitions.items()):
            values = [topic, str(partition)]
            if state["committed"] is not None:
                committed.add_metric(values, state["committed"])
            if state["lag"] is not None:
                lag.add_metric(values, state["lag"])
            stalled.add_metric(values, round(state["stalled_s"], 3))
        yield committed
        yield lag
        yield stalled
        yield GaugeMetricFamily(
            "fastconsumer_event_loop_age_seconds",
            "Seconds since the consumer's event loop last turned (/healthz fails past the liveness timeout).",
            value=round(self.watch.loop_age(), 3),
        )
        ready, _ = self.watch.readiness()
        yield GaugeMetricFamily("fastconsumer_ready", "1 when /readyz answers 200.", value=int(ready))


def _histogram(name: str, text: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets, total = histogram.snapshot()
    return HistogramMetricFamily(name, text, buckets=buckets, sum_value=total)


# -- the HTTP server


class HttpServer:
    """``routes`` (path -> callable returning status, content type, body) on a daemon thread."""

    def __init__(self, host: str, port: int, routes: dict[str, Route]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                route = routes.get(self.path.split("?", 1)[0])
                try:
                    status, kind, body = route() if route else (404, "text/plain", b"not found\n")
                except Exception as exc:  # a scrape must not kill the server
                    log.exception("serving %s failed", self.path)
                    status, kind, body = 500, "text/plain", f"{type(exc).__name__}: {exc}\n".encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                log.debug("%s %s", self.address_string(), format % args)

        try:
            self.httpd = ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise ConfigError(
                f"--metrics-port: cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        self.httpd.daemon_threads = True
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="fastconsumer-metrics", daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("", "0.0.0.0") else self.host
        return f"http://{host}:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join()


def json_route(probe: Callable[[], tuple[bool, dict[str, Any]]]) -> Route:
    def route() -> tuple[int, str, bytes]:
        ok, body = probe()
        return (200 if ok else 503), "application/json", (json.dumps(body) + "\n").encode()

    return route


def registry_route(registry: CollectorRegistry) -> Route:
    return lambda: (200, CONTENT_TYPE_LATEST, generate_latest(registry))


class MetricsServer(HttpServer):
    """``/metrics``, ``/healthz`` and ``/readyz`` of one consumer."""

    def __init__(self, consumer: Consumer, host: str, port: int, watch: Watch) -> None:
        self.consumer = consumer
        self.watch = watch
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ConsumerCollector(consumer, watch))
        ProcessCollector(registry=self.registry)
        super().__init__(
            host,
            port,
            {
                "/metrics": registry_route(self.registry),
                "/healthz": json_route(watch.health),
                "/readyz": json_route(watch.readiness),
            },
        )

    def close(self) -> None:
        self.watch.close()
        super().close()


def serve(
    consumer: Consumer,
    port: int = 9100,
    host: str = "0.0.0.0",
    *,
    stall_timeout: float = 60.0,
    liveness_timeout: float = 10.0,
    heartbeat: float = 1.0,
    statistics_interval_ms: int = 5000,
) -> MetricsServer:
    """Serve ``consumer``'s metrics and probes on ``host:port`` (0: any free port, see ``.port``) until
    ``.close()``. Call it before the consumer starts: a Kafka source is then asked for librdkafka's
    statistics every ``statistics_interval_ms`` (unless ``statistics.interval.ms`` is set), for the lag."""
    if stall_timeout <= 0 or liveness_timeout <= 0 or heartbeat <= 0:
        raise ConfigError("stall_timeout, liveness_timeout and heartbeat must be > 0 seconds")
    if consumer.loop is None:  # not started: what the run reads at its start can still be turned on
        consumer.source.enable_statistics(statistics_interval_ms)
        if consumer.stats.handler_seconds is None:
            consumer.stats.handler_seconds = Histogram()
    watch = Watch(
        consumer, stall_timeout=stall_timeout, liveness_timeout=liveness_timeout, heartbeat=heartbeat
    )
    try:
        server = MetricsServer(consumer, host, port, watch)
    except BaseException:
        watch.close()
        raise
    log.info("metrics on %s/metrics, probes on /healthz and /readyz", server.url)
    return server
