"""Benchmarks report messages (or operations) per second; the tables at the end set the cores side by side
and the Kafka rows against the ceilings measured in the same session (bench/report.py prints the same table
from ``--benchmark-json`` output).

Sizes: ``CI=true`` or ``FASTCONSUMER_BENCH_QUICK=1`` is the quick mode (CI); ``FASTCONSUMER_BENCH_MESSAGES``
sets the Kafka topic's size (default 1,000,000, quick 50,000); ``FASTCONSUMER_BENCH_ROUNDS=3`` runs each
Kafka throughput row 3 times and keeps its best round (default once). ``FASTCONSUMER_TEST_BOOTSTRAP`` names a
running Kafka to use instead of starting dev/broker.py's local one.
"""

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fastconsumer import _core_py, core

IMPLS = {"python": _core_py}
if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") != "1":
    from fastconsumer import _core_c

    IMPLS["cython"] = _core_c

QUICK = os.environ.get("CI") == "true" or os.environ.get("FASTCONSUMER_BENCH_QUICK") == "1"
RATES: dict = {}
RESULTS: list[dict] = []  # {"name", "extra_info"} per benchmark, as in the --benchmark-json output
BASELINES: dict[str, dict] = {}  # the ceilings measured this session, by key

# The Kafka topic every Kafka row reads: filled once per session.
MESSAGES = int(os.environ.get("FASTCONSUMER_BENCH_MESSAGES") or (50_000 if QUICK else 1_000_000))
MESSAGE_SIZE = 100
PARTITIONS = 4
KEYS = 10_000  # more distinct keys than the highest concurrency, so key ordering does not cap it


@pytest.fixture(params=sorted(IMPLS))
def impl(request, monkeypatch):
    monkeypatch.setattr(core, "impl", IMPLS[request.param])
    return IMPLS[request.param]


def record(benchmark, name, impl_name, items, kind="core"):
    """Per-second rate from the benchmark's best round, kept for the table and in the JSON output."""
    rate = items / benchmark.stats.stats.min
    benchmark.extra_info.update(per_second=round(rate), bench=name, impl=impl_name, kind=kind)
    RATES.setdefault(name, {})[impl_name] = rate
    RESULTS.append({"name": benchmark.name, "extra_info": benchmark.extra_info})


# --------------------------------------------------------------------------------------------------
# Kafka: one broker and one filled topic for the session
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchTopic:
    bootstrap: str
    name: str
    messages: int

    def info(self) -> dict:
        return {
            "topic_messages": self.messages,
            "message_size": MESSAGE_SIZE,
            "partitions": PARTITIONS,
            "keys": KEYS,
            "quick": QUICK,
        }


@pytest.fixture(scope="session")
def kafka_bootstrap():
    """``$FASTCONSUMER_TEST_BOOTSTRAP``, or a dev/broker.py LocalBroker for the session (stopped after it)."""
    from tests.kafka_helpers import session_broker

    yield from session_broker()


@pytest.fixture(scope="session")
def bench_topic(kafka_bootstrap):
    """A new topic of ``MESSAGES`` messages of 100 bytes in 4 partitions, read once (unrecorded) so the
    broker is warm before the first row; deleted at the end of the session."""
    from bench.runners import bare_consume
    from fastconsumer.produce import produce
    from tests.kafka_helpers import delete_topic, end_offsets

    name = f"bench-{uuid.uuid4().hex[:12]}"
    produce(kafka_bootstrap, name, MESSAGES, size=MESSAGE_SIZE, keys=KEYS, partitions=PARTITIONS)
    ends = end_offsets(kafka_bootstrap, name)
    assert sum(ends.values()) == MESSAGES and len(ends) == PARTITIONS, ends
    topic = BenchTopic(kafka_bootstrap, name, MESSAGES)
    bare_consume(kafka_bootstrap, name, MESSAGES, {"fetch.queue.backoff.ms": 10})
    yield topic
    delete_topic(kafka_bootstrap, name)


def baseline(key: str, measure: Callable[[], dict]) -> dict:
    """The ceiling ``key`` measured this session; measured now (and not recorded) if its own benchmark did
    not run, e.g. under ``-k``."""
    if key not in BASELINES:
        BASELINES[key] = measure()
    return BASELINES[key]


def record_row(benchmark, key: str, label: str, row: dict, basis: dict | None = None, **info) -> dict:
    """Store one Kafka/I/O row in the benchmark's ``extra_info`` (and so in the JSON output), with its
    ratios to ``basis`` (a ceiling's row), and keep it for the table at the end."""
    extra = {"key": key, "label": label, **row, **info}
    if basis is not None:
        extra["basis"] = basis["key"]
        if row.get("msgs_per_s") and basis.get("msgs_per_s"):
            extra["ratio"] = round(row["msgs_per_s"] / basis["msgs_per_s"], 4)
        base_incl = basis.get("msgs_per_s_incl_join") or basis.get("msgs_per_s")
        if row.get("msgs_per_s_incl_join") and base_incl:
            extra["ratio_incl_join"] = round(row["msgs_per_s_incl_join"] / base_incl, 4)
    for name in ("msgs_per_s", "msgs_per_s_incl_join"):
        if extra.get(name) is not None:
            extra[name] = round(extra[name])
    benchmark.extra_info.update(extra)
    RESULTS.append({"name": benchmark.name, "extra_info": benchmark.extra_info})
    return extra


def pytest_terminal_summary(terminalreporter):
    tr = terminalreporter
    if RATES:
        tr.section("fastconsumer rates (best round)")
        tr.write_line(f"{'benchmark':<34}{'python /s':>14}{'cython /s':>14}{'cython/python':>15}")
        for name, rates in RATES.items():
            py, cy = rates.get("python"), rates.get("cython")
            ratio = f"{cy / py:.1f}x" if py and cy else "-"
            tr.write_line(f"{name:<34}{py or 0:>14,.0f}{cy or 0:>14,.0f}{ratio:>15}")
    if any("key" in r["extra_info"] for r in RESULTS):
        from bench import report

        rows = report.build_rows(RESULTS)
        if rows:
            tr.section("fastconsumer against its ceilings (targets are not asserted)")
            intro = report.header(RESULTS)
            if intro:
                tr.write_line(intro)
            for line in report.markdown(rows).splitlines():
                tr.write_line(line)
        swept = report.sweep_rows(RESULTS)
        if swept:
            tr.section("look-ahead sweep: 1 ms handler, concurrency 64, against what the data allows")
            for line in report.sweep_markdown(swept).splitlines():
                tr.write_line(line)
