"""What OpenTelemetry tracing costs (fastconsumer/tracing.py), on the session's Kafka topic and on the
memory source.

Each Kafka row reads the whole topic as bench/test_kafka.py's rows do (a fresh process and consumer
group), with a no-op handler and with the 1 ms handler at concurrency 64, first untraced, then traced
through the SDK (batch span processor, an exporter that drops the spans: bench/runners.py ``traced``) with
every span sampled, then 1% of them. The traced rows' ratio is to the untraced row of the same handler,
measured in this file so that the three are side by side. The engine rows do the same on the memory source
(a fresh process each, no broker): the engine's own ceiling, where tracing's CPU shows in full.
"""

import pytest

from bench.conftest import BASELINES, QUICK, baseline, record_row
from bench.test_kafka import ROUNDS, _ceiling, _io_ceiling, measure, run_row

pytest.importorskip("opentelemetry.sdk")  # the bench extra installs it

HANDLERS = {"noop": "no-op handler", "io_1ms": "1 ms handler"}
ENGINE_MESSAGES = 50_000 if QUICK else 500_000
SAMPLING = {None: "untraced", 1.0: "traced, 100% sampled", 0.01: "traced, 1% sampled"}


def _key(handler: str, sampling: float | None) -> str:
    return f"trace_{handler}_" + ("off" if sampling is None else f"{sampling:.0%}".rstrip("%"))


def _spec(handler: str, sampling: float | None) -> dict:
    return {"what": "fastconsumer", "handler": handler, "options": {"concurrency": 64}, "sampling": sampling}


@pytest.mark.parametrize("sampling", list(SAMPLING), ids=["off", "100", "1"])
@pytest.mark.parametrize("handler", list(HANDLERS))
def test_tracing_cost_kafka(benchmark, bench_topic, handler, sampling):
    key = _key(handler, sampling)
    if sampling is None:  # against the ceiling this row is measured with in bench/test_kafka.py
        basis = _ceiling(bench_topic) if handler == "noop" else _io_ceiling(64)
    else:
        untraced = _key(handler, None)
        basis = baseline(untraced, lambda: {"key": untraced, **measure(_spec(handler, None), bench_topic)})
    row = run_row(benchmark, _spec(handler, sampling), bench_topic, rounds=ROUNDS)
    label = f"fastconsumer, {HANDLERS[handler]}, concurrency 64, {SAMPLING[sampling]}"
    extra = record_row(benchmark, key, label, row, basis, sampling=sampling, **bench_topic.info())
    if sampling is None:
        BASELINES[key] = extra


@pytest.mark.parametrize("sampling", list(SAMPLING), ids=["off", "100", "1"])
@pytest.mark.parametrize("handler", list(HANDLERS))
def test_tracing_cost_engine(benchmark, handler, sampling):
    key = "engine_" + _key(handler, sampling)
    spec = {**_spec(handler, sampling), "what": "engine", "total": ENGINE_MESSAGES}
    basis = None
    if sampling is not None:
        untraced = "engine_" + _key(handler, None)
        off = {**spec, "sampling": None}
        basis = baseline(untraced, lambda: {"key": untraced, **measure(off)})
    row = run_row(benchmark, spec, rounds=ROUNDS)
    label = f"engine on the memory source, {HANDLERS[handler]}, concurrency 64, {SAMPLING[sampling]}"
    extra = record_row(benchmark, key, label, row, basis, sampling=sampling, engine_messages=ENGINE_MESSAGES)
    if sampling is None:
        BASELINES[key] = extra
