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

The probes, ``/healthz`` (liveness) and ``/readyz`` (readiness), are described in ``probes.py``.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry
from prometheus_client.process_collector import ProcessCollector

from fastconsumer.engine import Consumer
from fastconsumer.errors import ConfigError
from fastconsumer.histogram import Histogram
from fastconsumer.metrics.collector import ConsumerCollector
from fastconsumer.metrics.http import HttpServer, Route, json_route, registry_route
from fastconsumer.metrics.probes import Watch

__all__ = ["HttpServer", "MetricsServer", "Route", "Watch", "json_route", "registry_route", "serve"]

log = logging.getLogger("fastconsumer.metrics")


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
