"""Helpers for tests against a real Kafka broker (the ``kafka_bootstrap`` and ``kafka_topic`` fixtures).

Offsets are read through consumers that are not subscribed: in a subscribed consumer these requests queue
behind its long-polling fetches and take seconds.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import TypeVar

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

import fastconsumer
from fastconsumer.engine import Summary
from fastconsumer.sources.base import Source, SourceListener

TIMEOUT = 30.0  # seconds for any one broker request or wait
BROKER_PY = Path(__file__).resolve().parents[1] / "dev" / "broker.py"
T = TypeVar("T")


def local_broker_module() -> ModuleType:
    """``dev/broker.py`` as a module (``dev/`` is no package), shared with tests/test_broker.py."""
    name = "fastconsumer_dev_broker"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BROKER_PY)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _quiet(conf: dict) -> dict:
    # librdkafka logs to stderr by default; the tests want its warnings only
    return {"log_level": 4, **conf}


def _consumer(bootstrap: str, group: str | None = None) -> Consumer:
    return Consumer(
        _quiet(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group or f"fastconsumer-tests-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": False,
            }
        )
    )


def _partitions(c: Consumer | AdminClient, topic: str, timeout: float = TIMEOUT) -> list[int]:
    md = c.list_topics(topic, timeout=timeout).topics.get(topic)
    if md is None or md.error is not None:
        raise AssertionError(f"topic {topic!r} not found: {md.error if md is not None else 'no metadata'}")
    return sorted(md.partitions)


def wait_for_cluster(bootstrap: str, timeout: float = 60.0) -> None:
    """Wait until the cluster at ``bootstrap`` answers a metadata request; ``RuntimeError`` if it does not."""
    admin = AdminClient(_quiet({"bootstrap.servers": bootstrap}))
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            admin.list_topics(timeout=max(0.1, min(left, 5.0)))
            return
        except KafkaException as exc:
            if time.monotonic() >= deadline:
                raise RuntimeError(f"no Kafka answers at {bootstrap} after {timeout:g} s: {exc}") from None


def create_topic(bootstrap: str, topic: str, partitions: int, timeout: float = TIMEOUT) -> None:
    """Create ``topic`` and wait until its metadata shows ``partitions`` partitions, each with a leader."""
    admin = AdminClient(_quiet({"bootstrap.servers": bootstrap}))
    admin.create_topics([NewTopic(topic, partitions)], request_timeout=timeout)[topic].result(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        md = admin.list_topics(topic, timeout=timeout).topics.get(topic)
        if (
            md is not None
            and md.error is None
            and len(md.partitions) == partitions
            and all(p.leader >= 0 and p.error is None for p in md.partitions.values())
        ):
            return
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"topic {topic!r} has no {partitions} partitions with leaders after {timeout:g} s"
            )
        time.sleep(0.05)  # polling interval; the loop re-checks the metadata


def delete_topic(bootstrap: str, topic: str, timeout: float = 10.0) -> None:
    """Delete ``topic``, best effort: errors are ignored (the broker may be gone at the end of a session)."""
    admin = AdminClient(_quiet({"bootstrap.servers": bootstrap}))
    try:
        admin.delete_topics([topic], request_timeout=timeout)[topic].result(timeout=timeout)
    except Exception:  # noqa: BLE001 - cleanup only
        pass


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """The high watermark (the offset the next message will get) of each of ``topic``'s partitions."""
    c = _consumer(bootstrap)
    try:
        return {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT, cached=False)[1]
            for p in _partitions(c, topic)
        }
    finally:
        c.close()


#: What a coordinator says while it moves or loads (a broker restart, a new group): ask again.
COORDINATOR_RETRIABLE = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._TIMED_OUT,
}


def _retriable(error: KafkaError | None) -> bool:
    return error is not None and (error.code() in COORDINATOR_RETRIABLE or error.retriable())


def retrying(request: Callable[[], T], what: str, timeout: float = TIMEOUT) -> T:
    """``request()`` again, with backoff, while Kafka answers with a retriable error, until ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.1
    while True:
        try:
            return request()
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if not _retriable(error) or time.monotonic() + delay > deadline:
                raise AssertionError(f"{what}: {exc}") from exc
        time.sleep(delay)  # a backoff between requests, not a wait for a condition
        delay = min(2 * delay, 2.0)


def committed_of(c: Consumer, partitions: list[TopicPartition]) -> list[TopicPartition]:
    """``c.committed(partitions)``, asked again while the coordinator moves or loads."""

    def ask() -> list[TopicPartition]:
        tps = c.committed(partitions, timeout=TIMEOUT)
        errors = [tp.error for tp in tps if tp.error is not None]
        if errors:
            raise KafkaException(errors[0])
        return tps

    return retrying(ask, "committed offsets")


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """``group``'s committed offset of each of ``topic``'s partitions; partitions it never committed are left
    out. Read without joining the group, so a running member of it is not disturbed."""
    c = _consumer(bootstrap, group)
    try:
        tps = committed_of(c, [TopicPartition(topic, p) for p in _partitions(c, topic)])
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}
    finally:
        c.close()


def produce_transactions(
    bootstrap: str, topic: str, transactions: Sequence[tuple[bool, Sequence[tuple[int, bytes]]]]
) -> None:
    """Write each transaction's ``(partition, value)`` records with one transactional producer, then commit
    the transaction (``True``) or abort it (``False``). Each ends with a commit or abort marker on every
    partition it wrote to: an offset that holds no message."""
    producer = Producer(
        _quiet({"bootstrap.servers": bootstrap, "transactional.id": f"tx-{uuid.uuid4().hex}"})
    )
    producer.init_transactions(TIMEOUT)
    for commit, records in transactions:
        producer.begin_transaction()
        for partition, value in records:
            producer.produce(topic, value=value, partition=partition)
        producer.flush(TIMEOUT)
        if commit:
            producer.commit_transaction(TIMEOUT)
        else:
            producer.abort_transaction(TIMEOUT)


def read_topic(bootstrap: str, topic: str, timeout: float = 60.0) -> list[Message]:
    """Every message of ``topic`` up to its end offsets at the time of the call, read from the beginning of
    each partition with a consumer that is assigned, not subscribed."""
    ends = end_offsets(bootstrap, topic)
    c = _consumer(bootstrap)
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in ends])
        pending = {p for p, end in ends.items() if end > 0}
        out: list[Message] = []
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"read {len(out)} messages of {topic!r} in {timeout:g} s; partitions {sorted(pending)} "
                    f"did not reach their end offsets {ends}"
                )
            for m in c.consume(num_messages=10_000, timeout=0.5):
                if m.error() is not None:
                    raise AssertionError(f"consumer error: {m.error()}")
                p, offset = m.partition(), m.offset()
                if offset < ends[p]:
                    out.append(m)
                if offset + 1 >= ends[p]:
                    pending.discard(p)
        return out
    finally:
        c.close()


def stop_while_frozen(consumer: fastconsumer.Consumer, broker_pid: int) -> tuple[Summary | None, float]:
    """Stop ``consumer`` while its broker is frozen with SIGSTOP, as a broker that stopped answering; the
    summary and the seconds the stop took (a stop that does not end within a minute fails)."""
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        consumer.request_stop()
        summary = consumer.join(timeout=60.0)
        took = time.monotonic() - started
        assert consumer.summary is not None, f"the stop did not end within {took:.0f} s"
        return summary, took
    finally:
        os.kill(broker_pid, signal.SIGCONT)


def start_cli(
    bootstrap: str, topic: str, group: str, *args: str, env: dict | None = None, share: bool = False
) -> subprocess.Popen:
    """``python -m fastconsumer`` on a topic, from the beginning, with stdout and stderr piped; as a member
    of the share group ``group`` if ``share``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fastconsumer",
            "--bootstrap-servers",
            bootstrap,
            "--topic",
            topic,
            "--share-group" if share else "--group",
            group,
            "--from-beginning",
            *args,
        ],
        cwd=BROKER_PY.parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


def session_broker() -> Iterator[str]:
    """The bootstrap address for a session: ``$FASTCONSUMER_TEST_BOOTSTRAP`` if set, else a dev/broker.py
    LocalBroker stopped afterwards. A broker that cannot start raises: tests error, never skip."""
    external = os.environ.get("FASTCONSUMER_TEST_BOOTSTRAP")
    if external:
        wait_for_cluster(external)
        yield external
        return
    broker = local_broker_module().LocalBroker()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


class Recorder(SourceListener):
    """A source's listener that keeps the commit results and lets every partition go at once."""

    def __init__(self) -> None:
        self.commits: list[tuple[list[TopicPartition], KafkaException | None]] = []

    def on_commit(self, offsets, error):
        self.commits.append((offsets, error))

    async def on_revoke(self, partitions):
        return []

    def on_lost(self, partitions):
        pass

    def on_assign(self, committed):
        pass


async def assigned(source: Source, partitions: int, timeout: float = 60.0) -> None:
    """Fetch until ``source`` owns ``partitions`` partitions."""
    deadline = time.monotonic() + timeout
    while len(source.assignment()) < partitions:
        assert time.monotonic() < deadline, "no assignment"
        await source.fetch(100)
