"""The Prometheus collector: reads a consumer's ``stats`` and its source's at scrape time."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from fastconsumer.engine import Consumer
from fastconsumer.histogram import Histogram
from fastconsumer.metrics.probes import Watch


class ConsumerCollector:
    """Reads the consumer at scrape time: a Prometheus custom collector."""

    def __init__(self, consumer: Consumer, watch: Watch) -> None:
        self.consumer = consumer
        self.watch = watch

    def collect(self) -> Iterator[Metric]:
        yield from self._engine()
        yield from self._source()
        yield from self._partitions()
        yield GaugeMetricFamily(
            "fastconsumer_event_loop_age_seconds",
            "Seconds since the consumer's event loop last turned (/healthz fails past the liveness timeout).",
            value=round(self.watch.loop_age(), 3),
        )
        ready, _ = self.watch.readiness()
        yield GaugeMetricFamily("fastconsumer_ready", "1 when /readyz answers 200.", value=int(ready))

    def _engine(self) -> Iterator[Metric]:
        c = self.consumer
        for name, value, text in (
            ("messages_consumed", c.stats.consumed, "Messages fetched from the source."),
            (
                "messages_handled",
                c.stats.handled,
                "Messages whose handler finished.",
            ),
            ("messages_failed", c.stats.failed, "Messages whose handler failed after its last retry."),
            ("messages_retried", c.stats.retried, "Handler retries."),
            ("messages_skipped", c.stats.skipped, "Failed messages skipped by --on-error skip."),
            (
                "messages_dead_lettered",
                c.stats.dead_lettered,
                "Failed messages written to the dead-letter topic.",
            ),
            (
                "messages_released",
                c.stats.released,
                "Failed messages given back to the share group by --on-error release.",
            ),
            ("messages_abandoned", c.stats.abandoned, "Messages whose handler a stop abandoned."),
            ("commit_failures", c.stats.commit_failures, "Commits that failed (they are sent again)."),
            (
                "commit_metadata_dropped",
                c.stats.metadata_dropped,
                "Commits sent without their handled-offsets metadata: it did not fit.",
            ),
            (
                "messages_already_done",
                c.stats.already_done,
                "Messages skipped: the committed metadata said a previous owner handled them.",
            ),
        ):
            yield CounterMetricFamily(f"fastconsumer_{name}", text, value=value)
        yield GaugeMetricFamily(
            "fastconsumer_messages_in_flight", "Handler calls running.", value=c.stats.in_flight
        )
        yield GaugeMetricFamily(
            "fastconsumer_messages_buffered", "Messages fetched, waiting for a handler.", value=c.buffered
        )
        yield GaugeMetricFamily(
            "fastconsumer_lookahead_messages",
            "Messages the engine may hold now, buffered and in flight; grows while handlers starve.",
            value=c.stats.lookahead,
        )
        yield GaugeMetricFamily(
            "fastconsumer_partitions_paused",
            "Partitions paused for holding their share of the look-ahead.",
            value=c.stats.paused,
        )
        if c.stats.handler_seconds is not None:
            yield _histogram(
                "fastconsumer_handler_seconds", "Handler call duration.", c.stats.handler_seconds
            )

    def _source(self) -> Iterator[Metric]:
        source = self.consumer.source
        for name, value in dict(source.stats.acks).items():  # a share group's acknowledgements
            if name.startswith("max_"):
                yield GaugeMetricFamily(
                    f"fastconsumer_share_{name}", "Highest delivery count of a record seen.", value=value
                )
            else:
                yield CounterMetricFamily(
                    f"fastconsumer_share_records_{name}",
                    f"Share-group records {name.replace('_', ' ')} (accepted, released, rejected: as "
                    "acknowledged; redelivered: delivered more than once; late: outcomes after a deadline "
                    "release).",
                    value=value,
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

    def _partitions(self) -> Iterator[Metric]:
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


def _histogram(name: str, text: str, histogram: Histogram) -> HistogramMetricFamily:
    buckets, total = histogram.snapshot()
    return HistogramMetricFamily(name, text, buckets=buckets, sum_value=total)
