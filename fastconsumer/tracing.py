"""OpenTelemetry traces: one consumer span per handler call, its retries, its outcome and its dead letter.

Nothing here imports OpenTelemetry until tracing is on, and when it is off the engine does not call into this
module per message at all: the handler is called as it would be without it.

When it is on (``tracing="on"``; or ``"auto"``, the default, once OpenTelemetry is configured the standard
way: a tracer provider set in code, or ``OTEL_TRACES_EXPORTER`` / ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``
in the environment, in which case the SDK is set up from the ``OTEL_*`` variables here), each handler call
runs in a span following the messaging semantic conventions:

- name ``process <topic>``, kind ``CONSUMER``; ``messaging.system=kafka``, ``messaging.operation.name`` and
  ``.type`` ``process``, ``messaging.destination.name``, ``messaging.destination.partition.id``,
  ``messaging.kafka.offset``, ``messaging.consumer.group.name``, ``messaging.kafka.message.key`` (a key that
  is UTF-8), ``messaging.kafka.message.tombstone``; for a batch handler ``messaging.batch.message_count``,
  and the topic and partition when all messages share them.
- The producer's context, read from the message's headers (W3C ``traceparent``/``tracestate`` with the
  default propagators; ``OTEL_PROPAGATORS`` chooses others), is always a link (as the conventions
  require), and for a single message also the span's parent, so producer and consumer share one trace.
  A batch has one link per message (with its partition and offset) and no such parent, as a span has only
  one; neither has it when the consumer runs inside a span of the application (the ambient context is
  then the parent, as the conventions recommend).
- The handler runs in the span's context: its own spans, and those of instrumented clients it calls, are
  the span's children.
- A failed call keeps its span open through the retries (a ``fastconsumer.retry`` event each, with the
  error that caused it) and the error policy, which runs in the span's context too; the span ends with
  ``fastconsumer.outcome`` (``handled``, ``skipped``, ``dead_lettered``, ``stopped``, ``interrupted``,
  ``revoked``, ``fatal``, ``cancelled``) and ``fastconsumer.attempts``. Unless the handler succeeded in the
  end, the last error is recorded as an exception, ``error.type`` is set and the status is ERROR.
- A dead-letter write is a ``send <topic>`` PRODUCER span under it, whose context replaces the original
  ``traceparent``/``tracestate`` headers of the dead-lettered message.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, cast

from confluent_kafka import Message

from fastconsumer.engine.retry import Recovery
from fastconsumer.errors import ConfigError
from fastconsumer.policy import Outcome

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer, TracerProvider

log = logging.getLogger("fastconsumer")

MODES = ("off", "on", "auto")
INSTRUMENTATION = "fastconsumer"
EXTRA = "pip install 'fastconsumer[otel]'"

# The messaging semantic conventions' names (checked against opentelemetry-semantic-conventions by the tests).
SYSTEM = "messaging.system"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
DESTINATION = "messaging.destination.name"
PARTITION = "messaging.destination.partition.id"
OFFSET = "messaging.kafka.offset"
KEY = "messaging.kafka.message.key"
TOMBSTONE = "messaging.kafka.message.tombstone"
GROUP = "messaging.consumer.group.name"
BATCH_COUNT = "messaging.batch.message_count"
ERROR_TYPE = "error.type"
# Ours.
OUTCOME = "fastconsumer.outcome"
ATTEMPTS = "fastconsumer.attempts"
ATTEMPT = "fastconsumer.attempt"
RETRY_EVENT = "fastconsumer.retry"

# The variables that say OpenTelemetry is configured (a service name alone does not: it names, not exports).
_CONFIGURING = ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
_OTLP = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http", "http/json": "otlp_proto_http"}

_setup_lock = threading.Lock()
_warned = False


# -- whether tracing is on, and with which provider


def check_mode(mode: object) -> None:
    """``ConfigError`` unless ``mode`` is ``"off"``, ``"on"``, ``"auto"`` or a tracer provider; ``"on"``
    needs OpenTelemetry installed."""
    if isinstance(mode, str):
        if mode not in MODES:
            raise ConfigError(f"tracing must be one of {', '.join(MODES)} or a TracerProvider; got {mode!r}")
        if mode == "on" and not _installed("opentelemetry.trace"):
            raise ConfigError(f"tracing 'on' needs OpenTelemetry: {EXTRA}")
    elif not callable(getattr(mode, "get_tracer", None)):
        raise ConfigError(f"tracing must be one of {', '.join(MODES)} or a TracerProvider; got {mode!r}")


def configured(environ: dict[str, str] | None = None) -> bool:
    """Whether OpenTelemetry is configured the standard way, importing nothing that is not imported yet: a
    tracer provider set in code, or an ``OTEL_*`` variable that asks for an exporter."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter != "none" and any(env.get(name, "").strip() for name in _CONFIGURING):
        return True
    if "opentelemetry.trace" not in sys.modules:  # no provider was set in code without importing it
        return False
    from opentelemetry import trace

    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def provider_for(mode: object) -> TracerProvider | None:
    """The tracer provider to trace with, or None when tracing is off (``mode`` as for ``check_mode``).

    ``on``, or ``auto`` once configured: the global provider if one was set, otherwise an SDK provider set
    up from the ``OTEL_*`` variables (and made the global one). ``ConfigError`` when an exporter asked for
    is not installed."""
    global _warned
    check_mode(mode)
    if not isinstance(mode, str):
        return cast("TracerProvider", mode)
    if mode == "off" or (mode == "auto" and not configured()):
        return None
    if not _installed("opentelemetry.trace"):  # auto, configured by the environment, without the extra
        if not _warned:
            _warned = True
            log.warning("OTEL_* variables are set but OpenTelemetry is not installed (%s): no traces", EXTRA)
        return None
    from opentelemetry import trace

    with _setup_lock:
        current = trace.get_tracer_provider()
        if not isinstance(current, trace.ProxyTracerProvider):
            return current
        trace.set_tracer_provider(_sdk_provider())
        return trace.get_tracer_provider()


def _installed(module: str) -> bool:
    if module in sys.modules:
        return True
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def _sdk_provider() -> TracerProvider:
    """An SDK tracer provider as the ``OTEL_*`` variables describe it: the resource (``OTEL_SERVICE_NAME``,
    default ``fastconsumer``; ``OTEL_RESOURCE_ATTRIBUTES``), the sampler (``OTEL_TRACES_SAMPLER`` and
    ``_ARG``), and a batch processor per exporter named by ``OTEL_TRACES_EXPORTER`` (default ``otlp``)."""
    if not _installed("opentelemetry.sdk"):
        raise ConfigError(f"tracing needs the OpenTelemetry SDK to export: {EXTRA}")
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: INSTRUMENTATION}))
    exporters = [_exporter(name) for name in _exporter_names()]
    provider = SdkTracerProvider(resource=resource)  # its sampler comes from OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _exporter_names() -> list[str]:
    names = os.environ.get("OTEL_TRACES_EXPORTER", "").strip() or "otlp"
    out = [name.strip() for name in names.split(",") if name.strip()]
    return [] if out == ["none"] else out


def _exporter(name: str) -> Any:
    from importlib.metadata import entry_points

    group = "opentelemetry_traces_exporter"
    candidates = [name]
    if name == "otlp":  # as the SDK reads it: the protocol variable, otherwise whichever one is installed
        protocol = (
            os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or ""
        ).strip()
        candidates = [_OTLP[protocol]] if protocol in _OTLP else list(dict.fromkeys(_OTLP.values()))
    for candidate in candidates:
        for entry in entry_points(group=group, name=candidate):
            return entry.load()()
    hint = " (pip install opentelemetry-exporter-otlp)" if name.startswith("otlp") else ""
    if not os.environ.get("OTEL_TRACES_EXPORTER", "").strip():
        raise ConfigError(
            f"tracing exports with OTEL_TRACES_EXPORTER, by default otlp, which is not installed{hint}; "
            "or set OTEL_TRACES_EXPORTER=console"
        )
    raise ConfigError(f"OTEL_TRACES_EXPORTER={name}: no such span exporter is installed{hint}")


def for_run(mode: object, source: object) -> Tracing | None:
    """What a run traces with, or None when tracing is off: then nothing of this module runs per message."""
    provider = provider_for(mode)
    if provider is None:
        return None
    from fastconsumer import __version__

    group = getattr(source, "group", None)
    log.info("tracing: a span per handler call, with %s", type(provider).__name__)
    return Tracing(
        provider.get_tracer(INSTRUMENTATION, __version__), group if isinstance(group, str) else None
    )


# -- the spans


class _Attempts:
    """A failed call's open span, through its retries and the policy."""

    __slots__ = ("span", "arg", "error", "attempts")

    def __init__(self, span: Span, arg: Any, error: BaseException) -> None:
        self.span = span
        self.arg = arg  # held, so that its id() is not reused while the span is open
        self.error = error
        self.attempts = 1


# The run whose failed call is being recovered in this task (for the dead-letter policy), if tracing is on.
_recovering: contextvars.ContextVar[Tracing | None] = contextvars.ContextVar(
    "fastconsumer_tracing", default=None
)


class _Headers:
    """The propagators' getter over a Kafka message's headers, a list of ``(str, bytes | None)``."""

    def get(self, carrier: Sequence[tuple[str, Any]], key: str) -> list[str] | None:
        values = [_text(v) for k, v in carrier if k == key and v is not None]
        return values or None

    def keys(self, carrier: Sequence[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _error_type(error: BaseException) -> str:
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class Tracing:
    """One run's tracing: ``wrap()`` puts each handler call in a span, ``recovery`` keeps a failed call's
    span open through its retries and the error policy."""

    def __init__(self, tracer: Tracer, group: str | None) -> None:
        from opentelemetry import context, propagate, trace
        from opentelemetry.trace import Link, SpanKind, Status, StatusCode

        self.tracer = tracer
        self.group = group
        self._context = context
        self._trace = trace
        self._extract = propagate.extract
        self._inject = propagate.inject
        self._link = Link
        self._consumer = SpanKind.CONSUMER
        self._producer = SpanKind.PRODUCER
        self._status = Status
        self._error = StatusCode.ERROR
        self._getter: Any = _Headers()  # duck-typed: Getter is not imported before tracing is on
        # Inside an application's span, that span stays the parent and the producer's context is a link.
        self.message_is_parent = not trace.get_current_span().get_span_context().is_valid
        self.base: dict[str, Any] = {SYSTEM: "kafka", OPERATION_NAME: "process", OPERATION_TYPE: "process"}
        if group is not None:
            self.base[GROUP] = group
        self._names: dict[str, str] = {}
        self.failed: dict[int, _Attempts] = {}  # by id(arg): failed calls whose recovery has not begun
        self.retrying: dict[int, _Attempts] = {}  # by id(arg): calls being recovered

    # -- the wrapper, outermost around the handler (its timeout and timing included)

    def wrap(self, call: Callable[[Any], Awaitable[Any]], batch: bool) -> Callable[[Any], Awaitable[Any]]:
        start = self._start_batch if batch else self._start_one
        attach, detach = self._context.attach, self._context.detach
        in_context = self._trace.set_span_in_context
        retrying = self.retrying

        async def traced(arg: Any) -> Any:
            if retrying:
                again = retrying.get(id(arg))
                if again is not None:
                    return await self._retry(again, call, arg)
            span = start(arg)
            token = attach(in_context(span))
            try:
                result = await call(arg)
            except BaseException as exc:
                detach(token)
                self._failed(span, arg, exc)
                raise
            detach(token)
            span.end()
            return result

        return traced

    def _start_one(self, msg: Message) -> Span:
        topic = msg.topic() or ""
        attributes = self.base.copy()
        attributes[DESTINATION] = topic
        attributes[PARTITION] = str(msg.partition())
        attributes[OFFSET] = msg.offset()
        key = msg.key()
        if key is not None:
            try:
                attributes[KEY] = key.decode() if isinstance(key, bytes) else key
            except UnicodeDecodeError:  # no canonical string form: left out, as the conventions say
                pass
        if msg.value() is None:
            attributes[TOMBSTONE] = True
        parent: Context | None = None
        links = None
        headers = msg.headers()
        if headers:
            created = self._extract(headers, getter=self._getter)
            span_context = self._trace.get_current_span(created).get_span_context()
            if span_context.is_valid:
                links = (self._link(span_context),)
                if self.message_is_parent:
                    parent = created
        name = self._names.get(topic)
        if name is None:
            name = self._names[topic] = f"process {topic}"
        return self.tracer.start_span(
            name, parent, kind=self._consumer, attributes=attributes, links=links, record_exception=False
        )

    def _start_batch(self, messages: list[Message]) -> Span:
        attributes = self.base.copy()
        attributes[BATCH_COUNT] = len(messages)
        topics = {m.topic() for m in messages}
        partitions = {(m.topic(), m.partition()) for m in messages}
        one_topic = len(topics) == 1
        if one_topic:
            attributes[DESTINATION] = next(iter(topics)) or ""
        if len(partitions) == 1:
            attributes[PARTITION] = str(messages[0].partition())
        links = []
        for msg in messages:
            headers = msg.headers()
            if not headers:
                continue
            span_context = self._trace.get_current_span(
                self._extract(headers, getter=self._getter)
            ).get_span_context()
            if span_context.is_valid:
                about: dict[str, Any] = {PARTITION: str(msg.partition()), OFFSET: msg.offset()}
                if not one_topic:
                    about[DESTINATION] = msg.topic() or ""
                links.append(self._link(span_context, about))
        name = f"process {attributes[DESTINATION]}" if one_topic else "process"
        return self.tracer.start_span(
            name, None, kind=self._consumer, attributes=attributes, links=links, record_exception=False
        )

    def _failed(self, span: Span, arg: Any, error: BaseException) -> None:
        """A first call raised: keep its span open for the recovery, unless none follows (a cancellation
        the engine asked for, or what ends the process)."""
        if isinstance(error, Exception) or (isinstance(error, asyncio.CancelledError) and not _by_engine()):
            self.failed[id(arg)] = _Attempts(span, arg, error)
            return
        outcome = "cancelled" if isinstance(error, asyncio.CancelledError) else Outcome.FATAL.value
        self._end(span, outcome, 1, error)

    async def _retry(self, again: _Attempts, call: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
        """A retry: an event on the open span (whose context the recovery attached), the same handler."""
        again.attempts += 1
        error = again.error
        again.span.add_event(
            RETRY_EVENT,
            {ATTEMPT: again.attempts, "exception.type": _error_type(error), "exception.message": str(error)},
        )
        try:
            return await call(arg)
        except BaseException as exc:
            again.error = exc
            raise

    def _end(self, span: Span, outcome: str, attempts: int, error: BaseException | None) -> None:
        span.set_attribute(OUTCOME, outcome)
        span.set_attribute(ATTEMPTS, attempts)
        if error is not None:
            span.record_exception(error)
            span.set_attribute(ERROR_TYPE, _error_type(error))
            span.set_status(self._status(self._error, f"{type(error).__name__}: {error}"))
        span.end()

    def recovery(self, *args: Any) -> Recovery:
        """The run's ``Recovery`` (its arguments), keeping failed calls' spans open through it."""
        return _TracedRecovery(self, *args)

    # -- the dead-letter write

    @contextlib.contextmanager
    def sending(self, topic: str, count: int) -> Iterator[Callable[[list[Any]], list[Any]]]:
        """A ``send <topic>`` PRODUCER span under the current (consumer) span; yields what replaces a
        message's trace headers with the span's context."""
        attributes: dict[str, Any] = {
            SYSTEM: "kafka",
            OPERATION_NAME: "send",
            OPERATION_TYPE: "send",
            DESTINATION: topic,
        }
        if count > 1:
            attributes[BATCH_COUNT] = count
        span = self.tracer.start_span(
            f"send {topic}", kind=self._producer, attributes=attributes, record_exception=False
        )
        carrier: dict[str, str] = {}
        self._inject(carrier, self._trace.set_span_in_context(span))
        stamped = [(k, v.encode()) for k, v in carrier.items()]

        def stamp(headers: list[Any]) -> list[Any]:
            return [(k, v) for k, v in headers if k not in carrier] + stamped

        try:
            yield stamp
        except BaseException as exc:
            span.record_exception(exc)
            span.set_attribute(ERROR_TYPE, _error_type(exc))
            span.set_status(self._status(self._error, f"{type(exc).__name__}: {exc}"))
            raise
        finally:
            span.end()


def _by_engine() -> bool:
    """Whether the running task is being cancelled, which only the engine does (a revoke's deadline, an
    abandoning stop). Without ``Task.cancelling()`` (Python 3.10) any cancellation counts as the engine's."""
    task = asyncio.current_task()
    cancelling = getattr(task, "cancelling", None)
    return cancelling is None or bool(cancelling())


class _TracedRecovery(Recovery):
    def __init__(self, tracing: Tracing, *args: Any) -> None:
        super().__init__(*args)
        self.tracing = tracing

    async def recover(
        self, messages: list[Message], error: BaseException, arg: Any, ours: Callable[[], bool]
    ) -> Outcome:
        tracing = self.tracing
        key = id(arg)
        again = tracing.failed.pop(key, None)
        if again is None:  # its span ended already (a recovery after a cancellation the engine made)
            return await super().recover(messages, error, arg, ours)
        tracing.retrying[key] = again
        token = tracing._context.attach(tracing._trace.set_span_in_context(again.span))
        active = _recovering.set(tracing)
        try:
            outcome = await super().recover(messages, error, arg, ours)
        except BaseException as exc:
            cancelled = isinstance(exc, asyncio.CancelledError)
            tracing._end(again.span, "cancelled" if cancelled else Outcome.FATAL.value, again.attempts, exc)
            raise
        finally:
            _recovering.reset(active)
            tracing._context.detach(token)
            del tracing.retrying[key]
        failed = outcome is not Outcome.HANDLED
        tracing._end(again.span, outcome.value, again.attempts, again.error if failed else None)
        return outcome


def sending(topic: str, count: int) -> contextlib.AbstractContextManager[Callable[[list[Any]], list[Any]]]:
    """For the dead-letter policy: the ``send`` span of a write, stamping the messages' headers with its
    context, while tracing is on and a failed call is being recovered; otherwise nothing."""
    tracing = _recovering.get()
    if tracing is None:
        return contextlib.nullcontext(_unchanged)
    return tracing.sending(topic, count)


def _unchanged(headers: list[Any]) -> list[Any]:
    return headers
