"""OpenTelemetry traces (fastconsumer/tracing.py): spans recorded with the SDK's in-memory exporter, against
the memory source and a real broker; the console exporter through the command lines; and, with tracing off,
the handler called exactly as it is."""

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from confluent_kafka import Producer
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.semconv._incubating.attributes import messaging_attributes as semconv
from opentelemetry.semconv.attributes import error_attributes
from opentelemetry.trace import SpanKind, StatusCode

from fastconsumer import (
    ConfigError,
    Consumer,
    DeadLetter,
    HandlerError,
    MemoryLog,
    MemorySource,
    Outcome,
    Settings,
    batch,
)
from fastconsumer import tracing as tracing_module
from fastconsumer.engine.retry import Recovery
from fastconsumer.produce import produce
from fastconsumer.sources import KafkaSource
from tests.kafka_helpers import create_topic, read_topic

ROOT = Path(__file__).resolve().parent.parent
OTEL_VARIABLES = [name for name in os.environ if name.startswith("OTEL_")]


@pytest.fixture(autouse=True)
def no_otel_environment(monkeypatch):
    """Tracing configured only by what a test says: no OTEL_* variable from the machine running the tests."""
    for name in OTEL_VARIABLES:
        monkeypatch.delenv(name)


@pytest.fixture
def spans():
    """A tracer provider of its own (not the global one) recording into memory, and its exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def consumer_spans(exporter):
    return [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CONSUMER]


def ids(span_context):
    return span_context.trace_id, span_context.span_id


def run_to_end(consumer, timeout=60.0):
    consumer.start()
    summary = consumer.join(timeout)
    if summary is None:
        consumer.stop()
        raise AssertionError(f"the consumer did not finish within {timeout:g} s")
    return summary


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return {**env, **extra}


def console_spans(text):
    """The span objects the SDK's console exporter printed, among other JSON lines on the same stream."""
    decoder, out, i = json.JSONDecoder(), [], 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return out
        obj, i = decoder.raw_decode(text, i)
        if "context" in obj and "kind" in obj:
            out.append(obj)


# -- what is recorded: the conventions' names


def test_the_attribute_names_are_those_of_the_installed_semantic_conventions():
    assert tracing_module.SYSTEM == semconv.MESSAGING_SYSTEM
    assert tracing_module.OPERATION_NAME == semconv.MESSAGING_OPERATION_NAME
    assert tracing_module.OPERATION_TYPE == semconv.MESSAGING_OPERATION_TYPE
    assert tracing_module.DESTINATION == semconv.MESSAGING_DESTINATION_NAME
    assert tracing_module.PARTITION == semconv.MESSAGING_DESTINATION_PARTITION_ID
    assert tracing_module.OFFSET == semconv.MESSAGING_KAFKA_OFFSET
    assert tracing_module.KEY == semconv.MESSAGING_KAFKA_MESSAGE_KEY
    assert tracing_module.TOMBSTONE == semconv.MESSAGING_KAFKA_MESSAGE_TOMBSTONE
    assert tracing_module.GROUP == semconv.MESSAGING_CONSUMER_GROUP_NAME
    assert tracing_module.BATCH_COUNT == semconv.MESSAGING_BATCH_MESSAGE_COUNT
    assert tracing_module.ERROR_TYPE == error_attributes.ERROR_TYPE
    assert semconv.MessagingSystemValues.KAFKA.value == "kafka"
    assert semconv.MessagingOperationTypeValues.PROCESS.value == "process"
    assert semconv.MessagingOperationTypeValues.SEND.value == "send"


def test_tracing_settings_are_checked():
    for bad in ("yes", "", None, 1, object()):
        with pytest.raises(ConfigError, match="tracing must be one of off, on, auto or a TracerProvider"):
            Settings(tracing=bad)
    assert Settings().tracing == "auto"
    Settings(tracing=TracerProvider())  # a provider of the application's own


# -- tracing off: nothing in the way


async def handle(msg):
    pass


@pytest.mark.parametrize("mode", ["off", "auto"])
def test_with_tracing_off_the_handler_is_called_as_it_is(mode):
    """``off``, or ``auto`` with nothing configured: the workers call the handler itself (no wrapper on the
    hot path) and failures go to the plain Recovery."""
    assert not tracing_module.configured()
    consumer = Consumer(MemorySource(MemoryLog(count=100)), handle, max_messages=100, tracing=mode)
    assert run_to_end(consumer).handled == 100
    run = consumer._run
    assert run.dispatcher._call is handle
    assert run.recovery.call is handle
    assert type(run.recovery) is Recovery


def test_with_tracing_on_the_handler_is_wrapped(spans):
    provider, exporter = spans
    consumer = Consumer(MemorySource(MemoryLog(count=100)), handle, max_messages=100, tracing=provider)
    assert run_to_end(consumer).handled == 100
    assert consumer._run.dispatcher._call is not handle
    assert len(consumer_spans(exporter)) == 100


def test_without_configuration_opentelemetry_is_not_even_imported():
    code = (
        "import sys\n"
        "from fastconsumer import Consumer, MemoryLog, MemorySource\n"
        "async def handle(msg): pass\n"
        "c = Consumer(MemorySource(MemoryLog(count=50)), handle, max_messages=50)\n"
        "c.start(); assert c.join(60).handled == 50\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# -- the span's life on the memory source: retries, outcomes, cancellation


def test_a_call_that_succeeds_on_a_retry_is_one_span_with_a_retry_event(spans):
    provider, exporter = spans
    calls = []

    async def flaky(msg):
        calls.append(msg.offset())
        if len(calls) == 1:
            raise ConnectionError("try again")

    log = MemoryLog(partitions=1, count=1)
    consumer = Consumer(
        MemorySource(log), flaky, max_messages=1, retries=3, retry_backoff_ms=1, tracing=provider
    )
    assert run_to_end(consumer).handled == 1
    (span,) = consumer_spans(exporter)
    assert span.attributes["fastconsumer.outcome"] == "handled"
    assert span.attributes["fastconsumer.attempts"] == 2
    assert span.status.status_code is StatusCode.UNSET
    assert [e.name for e in span.events] == ["fastconsumer.retry"]
    assert dict(span.events[0].attributes) == {
        "fastconsumer.attempt": 2,
        "exception.type": "ConnectionError",
        "exception.message": "try again",
    }
    assert not consumer._run.recovery.tracing.failed and not consumer._run.recovery.tracing.retrying


def test_the_policy_runs_in_the_span_and_its_outcome_is_recorded(spans):
    provider, exporter = spans
    tracer = provider.get_tracer("test")

    async def fails(msg):
        raise ValueError(f"bad {msg.offset()}")

    async def park(messages, error, attempts):
        with tracer.start_as_current_span("park"):
            return Outcome.SKIPPED

    log = MemoryLog(partitions=1, count=2)
    consumer = Consumer(MemorySource(log), fails, exit_at_end=True, on_error=park, tracing=provider)
    assert run_to_end(consumer).skipped == 2
    process = {s.attributes["messaging.kafka.offset"]: s for s in consumer_spans(exporter)}
    parks = [s for s in exporter.get_finished_spans() if s.name == "park"]
    assert sorted(s.parent.span_id for s in parks) == sorted(s.context.span_id for s in process.values())
    for offset, span in process.items():
        assert span.attributes["fastconsumer.outcome"] == "skipped"
        assert span.attributes["fastconsumer.attempts"] == 1
        assert span.attributes["error.type"] == "ValueError"
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == f"ValueError: bad {offset}"
        assert [e.name for e in span.events] == ["exception"]


def test_a_stop_by_the_policy_is_recorded_as_stopped(spans):
    provider, exporter = spans

    async def fails(msg):
        raise KeyError("missing")

    consumer = Consumer(MemorySource(MemoryLog(partitions=1, count=5)), fails, tracing=provider)
    with pytest.raises(HandlerError, match="missing"):
        consumer.start()  # the failure may come before start() returns
        consumer.join(60)
    stopped = [s for s in consumer_spans(exporter) if s.attributes.get("fastconsumer.outcome") == "stopped"]
    assert len(stopped) == 1
    assert stopped[0].attributes["error.type"] == "KeyError"


def test_an_abandoned_call_ends_its_span_as_cancelled(spans):
    provider, exporter = spans
    started = threading.Event()

    async def stuck(msg):
        started.set()
        await asyncio.sleep(3600)

    log = MemoryLog(partitions=1, count=1)
    consumer = Consumer(MemorySource(log), stuck, shutdown_timeout=0.1, tracing=provider)
    consumer.start()
    assert started.wait(30)
    consumer.stop()
    (span,) = consumer_spans(exporter)
    assert span.attributes["fastconsumer.outcome"] == "cancelled"
    assert span.status.status_code is StatusCode.ERROR
    assert not consumer._run.recovery.tracing.failed


def test_inside_an_application_span_that_span_is_the_parent(spans):
    """The conventions: a consumer running inside another span keeps it as the parent of its spans."""
    provider, exporter = spans
    consumer = Consumer(MemorySource(MemoryLog(count=3)), handle, max_messages=3, tracing=provider)

    async def main():
        with provider.get_tracer("app").start_as_current_span("application") as app:
            await consumer.run()
        return app

    app = asyncio.run(main())
    assert [s.parent.span_id for s in consumer_spans(exporter)] == [app.context.span_id] * 3


# -- against a real broker


def produce_traced(bootstrap, topic, provider, messages):
    """``messages`` of ``(key, value, traced)`` to partition 0; each traced one in a ``send`` span of its own,
    whose context goes in its headers. Returns the send spans' contexts (None for the untraced ones)."""
    tracer = provider.get_tracer("test-producer")
    producer = Producer({"bootstrap.servers": bootstrap})
    contexts = []
    for key, value, traced in messages:
        if not traced:
            producer.produce(topic, value, key, partition=0)
            contexts.append(None)
            continue
        with tracer.start_as_current_span(f"send {topic}", kind=SpanKind.PRODUCER) as span:
            carrier = {}
            propagate.inject(carrier)
            headers = [(k, v.encode()) for k, v in carrier.items()] + [("other", b"header")]
            producer.produce(topic, value, key, partition=0, headers=headers)
            contexts.append(span.get_span_context())
    assert producer.flush(30) == 0
    return contexts


def test_a_message_is_handled_in_a_child_span_of_its_producer_with_the_conventions_attributes(
    kafka_bootstrap, kafka_topic, spans
):
    provider, exporter = spans
    sent = produce_traced(
        kafka_bootstrap,
        kafka_topic,
        provider,
        [(b"k-1", b"one", True), (None, b"two", False), (b"\xff\xfe", None, True)],
    )
    tracer = provider.get_tracer("test-handler")
    handled = []

    async def handler(msg):
        with tracer.start_as_current_span("handler work") as work:
            handled.append(
                (msg.offset(), work.get_span_context(), trace.get_current_span().get_span_context())
            )
            await asyncio.sleep(0)

    group = f"g-{uuid.uuid4().hex[:8]}"
    source = KafkaSource(kafka_bootstrap, [kafka_topic], group, from_beginning=True)
    assert run_to_end(Consumer(source, handler, exit_at_end=True, tracing=provider)).handled == 3
    by_offset = {s.attributes["messaging.kafka.offset"]: s for s in consumer_spans(exporter)}
    assert sorted(by_offset) == [0, 1, 2]

    first = by_offset[0]
    assert first.name == f"process {kafka_topic}"
    assert first.kind is SpanKind.CONSUMER
    assert first.context.trace_id == sent[0].trace_id
    assert first.parent.span_id == sent[0].span_id  # the producer's span is the parent ...
    assert [ids(link.context) for link in first.links] == [ids(sent[0])]  # ... and a link, as conventions ask
    assert dict(first.attributes) == {
        "messaging.system": "kafka",
        "messaging.operation.name": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": kafka_topic,
        "messaging.destination.partition.id": "0",
        "messaging.kafka.offset": 0,
        "messaging.consumer.group.name": group,
        "messaging.kafka.message.key": "k-1",
    }
    assert first.status.status_code is StatusCode.UNSET

    untraced = by_offset[1]
    assert untraced.parent is None and not untraced.links  # a trace of its own
    assert "messaging.kafka.message.key" not in untraced.attributes  # no key

    tombstone = by_offset[2]
    assert tombstone.parent.span_id == sent[2].span_id
    assert tombstone.attributes["messaging.kafka.message.tombstone"] is True
    assert "messaging.kafka.message.key" not in tombstone.attributes  # not UTF-8: no canonical string form

    # The handler ran in the consumer span's context: its own span is a child of it.
    works = {s.context.span_id: s for s in exporter.get_finished_spans() if s.name == "handler work"}
    for offset, work, current in handled:
        assert current == work
        assert works[work.span_id].parent.span_id == by_offset[offset].context.span_id
        assert work.trace_id == by_offset[offset].context.trace_id


def test_a_retried_then_failed_message_shows_its_retries_its_error_and_its_dead_letter(
    kafka_bootstrap, kafka_topic, spans
):
    provider, exporter = spans
    (sent,) = produce_traced(kafka_bootstrap, kafka_topic, provider, [(b"k", b"poison", True)])
    dlq = f"{kafka_topic}-dlq"
    create_topic(kafka_bootstrap, dlq, partitions=1)

    async def fails(msg):
        raise ValueError("cannot parse")

    source = KafkaSource(kafka_bootstrap, [kafka_topic], f"g-{uuid.uuid4().hex[:8]}", from_beginning=True)
    policy = DeadLetter(dlq, {"bootstrap.servers": kafka_bootstrap})
    consumer = Consumer(
        source, fails, exit_at_end=True, retries=2, retry_backoff_ms=1, on_error=policy, tracing=provider
    )
    summary = run_to_end(consumer)
    assert summary.dead_lettered == 1 and summary.retried == 2

    (span,) = consumer_spans(exporter)
    assert span.parent.span_id == sent.span_id
    assert [e.name for e in span.events] == ["fastconsumer.retry", "fastconsumer.retry", "exception"]
    assert [e.attributes["fastconsumer.attempt"] for e in span.events[:2]] == [2, 3]
    assert all(e.attributes["exception.message"] == "cannot parse" for e in span.events)
    assert span.events[2].attributes["exception.type"] == "ValueError"
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "ValueError: cannot parse"
    assert span.attributes["error.type"] == "ValueError"
    assert span.attributes["fastconsumer.outcome"] == "dead_lettered"
    assert span.attributes["fastconsumer.attempts"] == 3

    # The dead-letter write: a send span under the consumer span, whose context the DLQ message carries.
    (send,) = [s for s in exporter.get_finished_spans() if s.name == f"send {dlq}"]
    assert send.kind is SpanKind.PRODUCER
    assert send.parent.span_id == span.context.span_id
    assert send.attributes["messaging.destination.name"] == dlq
    assert send.attributes["messaging.operation.type"] == "send"
    (dead,) = read_topic(kafka_bootstrap, dlq)
    headers = dict(dead.headers())
    assert headers["other"] == b"header"  # the message's own headers are kept ...
    assert [k for k, _ in dead.headers()].count("traceparent") == 1  # ... but its traceparent replaced
    carried = trace.get_current_span(propagate.extract({"traceparent": headers["traceparent"].decode()}))
    assert carried.get_span_context().trace_id == sent.trace_id
    assert carried.get_span_context().span_id == send.context.span_id
    assert headers["fastconsumer.attempts"] == b"3"


def test_a_batch_handler_call_is_one_span_linking_each_message(kafka_bootstrap, kafka_topic, spans):
    provider, exporter = spans
    sent = produce_traced(
        kafka_bootstrap, kafka_topic, provider, [(b"k%d" % i, b"v", i != 2) for i in range(5)]
    )
    sizes = []

    @batch
    async def handle_batch(messages):
        sizes.append(len(messages))

    source = KafkaSource(kafka_bootstrap, [kafka_topic], f"g-{uuid.uuid4().hex[:8]}", from_beginning=True)
    assert run_to_end(Consumer(source, handle_batch, exit_at_end=True, tracing=provider)).handled == 5
    found = consumer_spans(exporter)
    assert len(found) == len(sizes)
    assert sorted(s.attributes["messaging.batch.message_count"] for s in found) == sorted(sizes)
    links = {}
    for span in found:
        assert span.name == f"process {kafka_topic}"
        assert span.parent is None  # a span has one parent; a batch links its messages instead
        assert span.attributes["messaging.destination.name"] == kafka_topic
        assert span.attributes["messaging.destination.partition.id"] == "0"
        assert "messaging.kafka.offset" not in span.attributes
        for link in span.links:
            assert link.attributes["messaging.destination.partition.id"] == "0"
            links[link.attributes["messaging.kafka.offset"]] = ids(link.context)
    assert links == {i: ids(ctx) for i, ctx in enumerate(sent) if ctx is not None}


def test_produce_trace_stamps_a_traceparent_on_every_message(kafka_bootstrap, kafka_topic):
    """Without OpenTelemetry configured, a random sampled W3C traceparent per message."""
    assert produce(kafka_bootstrap, kafka_topic, 20, keys=3, trace=True)["failed"] == 0
    contexts = []
    for msg in read_topic(kafka_bootstrap, kafka_topic):
        (value,) = [v for k, v in msg.headers() if k == "traceparent"]
        context = trace.get_current_span(
            propagate.extract({"traceparent": value.decode()})
        ).get_span_context()
        assert context.is_valid and context.trace_flags.sampled
        contexts.append(context.trace_id)
    assert len(set(contexts)) == 20


def test_end_to_end_through_both_command_lines_with_the_console_exporter(kafka_bootstrap, kafka_topic):
    """The README's lines: the producer's send spans and the consumer's process spans form one trace each."""
    env = clean_env(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="e2e-producer")
    produced = subprocess.run(
        [
            sys.executable, "-m", "fastconsumer.produce", "--bootstrap-servers", kafka_bootstrap,
            "--topic", kafka_topic, "--count", "5", "--keys", "2", "--trace", "--json",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    sends = {s["context"]["span_id"]: s for s in console_spans(produced.stdout)}
    assert len(sends) == 5
    assert {s["name"] for s in sends.values()} == {f"send {kafka_topic}"}
    assert {s["resource"]["attributes"]["service.name"] for s in sends.values()} == {"e2e-producer"}

    env = clean_env(OTEL_TRACES_EXPORTER="console", OTEL_SERVICE_NAME="e2e-consumer")
    consumed = subprocess.run(
        [
            sys.executable, "-m", "fastconsumer", "--bootstrap-servers", kafka_bootstrap,
            "--topic", kafka_topic, "--group", "e2e", "--from-beginning", "--exit-at-end",
            "--latency-ms", "0", "--json",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert consumed.returncode == 0, consumed.stderr
    processes = [s for s in console_spans(consumed.stdout) if s["kind"] == "SpanKind.CONSUMER"]
    assert len(processes) == 5
    for span in processes:
        parent = sends[span["parent_id"]]
        assert span["context"]["trace_id"] == parent["context"]["trace_id"]
        assert span["name"] == f"process {kafka_topic}"
        assert span["attributes"]["messaging.consumer.group.name"] == "e2e"
        assert span["resource"]["attributes"]["service.name"] == "e2e-consumer"


# -- the command line's --tracing


def run_cli(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "fastconsumer", "--count", "3", "--partitions", "1", "--exit-at-end",
         "--latency-ms", "0", "--json", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip


def test_the_command_line_traces_when_otel_variables_configure_an_exporter_unless_tracing_is_off():
    configured = clean_env(OTEL_TRACES_EXPORTER="console")
    traced = run_cli(env=configured)
    assert traced.returncode == 0, traced.stderr
    assert [s["name"] for s in console_spans(traced.stdout)] == ["process foo"] * 3
    assert "tracing: a span per handler call" in traced.stderr

    off = run_cli("--tracing", "off", env=configured)
    assert off.returncode == 0, off.stderr
    assert console_spans(off.stdout) == []

    unconfigured = run_cli(env=clean_env())
    assert unconfigured.returncode == 0, unconfigured.stderr
    assert console_spans(unconfigured.stdout) == [] and "tracing" not in unconfigured.stderr

    forced = run_cli(
        "--tracing", "on", env=clean_env(OTEL_TRACES_EXPORTER="console", FASTCONSUMER_TRACING="off")
    )
    assert len(console_spans(forced.stdout)) == 3  # the flag wins over the variable

    missing = run_cli(env=clean_env(OTEL_TRACES_EXPORTER="nosuch"))
    assert missing.returncode == 2
    assert "OTEL_TRACES_EXPORTER=nosuch: no such span exporter is installed" in missing.stderr

    if not any(
        entry_points(group="opentelemetry_traces_exporter", name=n)
        for n in ("otlp_proto_grpc", "otlp_proto_http")
    ):
        default = run_cli("--tracing", "on", env=clean_env())  # OTEL_TRACES_EXPORTER's default is otlp
        assert default.returncode == 2
        assert "by default otlp, which is not installed" in default.stderr
