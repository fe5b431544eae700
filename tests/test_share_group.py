"""Share groups (KIP-932) against the real broker: members on a one-partition topic, each --on-error choice,
a SIGKILLed member, and the flags a share group refuses.

The command-line runs load this module's handlers (``--handler tests.test_share_group:record``); each call
appends ``{"v": value, "dc": delivery count, "pid": ...}`` to ``$SHARE_LOG``. A record whose value starts
with ``poison`` fails; with ``$SHARE_HANG`` set, every call hangs after it is logged.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer, ShareConsumer
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource

from fastconsumer import Consumer, KafkaShareSource
from fastconsumer.sources.kafka import client as kafka_client
from tests.kafka_helpers import (
    BROKER_PY,
    create_topic,
    delete_topic,
    local_broker_module,
    read_topic,
    retrying,
    start_cli,
    stop_while_frozen,
)

WAIT = 60.0  # seconds any condition below may take at most: a failure, never a sleep


# -- handlers for the command line


async def record(msg):
    line = json.dumps({"v": msg.value().decode(), "dc": msg.delivery_count(), "pid": os.getpid()})
    with open(os.environ["SHARE_LOG"], "a") as fh:
        fh.write(line + "\n")
    if os.environ.get("SHARE_HANG"):
        await asyncio.Event().wait()
    if msg.value().startswith(b"poison"):
        raise ValueError(f"cannot handle {msg.value().decode()}")
    await asyncio.sleep(0.001)


# -- helpers


@pytest.fixture
def share_topic(kafka_bootstrap):
    topic = f"share-{uuid.uuid4().hex}"
    create_topic(kafka_bootstrap, topic, partitions=1)
    yield topic
    delete_topic(kafka_bootstrap, topic)


def group_config(bootstrap: str, group: str, **config: object) -> None:
    """Set share-group configs (``share_record_lock_duration_ms=1000`` sets share.record.lock.duration.ms)."""
    entries = [
        ConfigEntry(k.replace("_", "."), str(v), incremental_operation=AlterConfigOpType.SET)
        for k, v in config.items()
    ]
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def alter() -> None:
        resource = ConfigResource(ConfigResource.Type.GROUP, group, incremental_configs=entries)
        for future in admin.incremental_alter_configs([resource]).values():
            future.result(timeout=10)

    retrying(alter, f"setting {config} on share group {group}")


def produce(bootstrap: str, topic: str, values: list[str]) -> None:
    """Small record batches (10 records), so the broker can hand them to several members."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "batch.num.messages": 10})
    for i in range(0, len(values), 10):
        for value in values[i : i + 10]:
            producer.produce(topic, value=value.encode())
        producer.flush(10)
    assert producer.flush(10) == 0


def wait_for(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)  # polling interval: the loop re-checks the condition


def leftovers(bootstrap: str, topic: str, group: str) -> list[str]:
    """What a new member of ``group`` receives before a sentinel written now: every record it gets that
    is not the sentinel was left unacknowledged (released, or locked by a member that died)."""
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    produce(bootstrap, topic, [sentinel])
    c = ShareConsumer(
        {"bootstrap.servers": bootstrap, "group.id": group, "share.acknowledgement.mode": "explicit"}
    )
    got: list[str] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + WAIT
        while sentinel not in got:
            assert time.monotonic() < deadline, f"no sentinel from share group {group} within {WAIT} s"
            for m in c.poll(0.2):
                if m.error() is None:
                    got.append(m.value().decode())
                    c.acknowledge(m)
    finally:
        c.close()
    return [v for v in got if v != sentinel]


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def start_member(bootstrap: str, topic: str, group: str, log: Path, *args: str, **env: str):
    return start_cli(
        bootstrap,
        topic,
        group,
        "--handler",
        "tests.test_share_group:record",
        "--json",
        "--concurrency",
        "4",
        "--share-consumers",
        "2",
        "-X",
        "max.poll.records=10",
        *args,
        env={"SHARE_LOG": str(log), **env},
        share=True,
    )


def finish(proc: subprocess.Popen, *, stop: bool = True) -> tuple[int, dict, str]:
    if stop:
        proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=WAIT)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    assert lines, f"no JSON summary (exit {proc.returncode}); stderr:\n{err[-3000:]}"
    return proc.returncode, json.loads(lines[-1]), err


# -- the library: three members


def test_three_members_share_one_partition(kafka_bootstrap, share_topic):
    """Three members on a one-partition topic all handle records, every record once; afterwards a new
    member of the group receives nothing (everything was acknowledged)."""
    group = f"sg-{uuid.uuid4().hex}"
    group_config(kafka_bootstrap, group, share_auto_offset_reset="earliest")
    handled: dict[int, collections.Counter[str]] = {i: collections.Counter() for i in range(3)}
    produced: list[str] = []

    def handler_of(i: int):
        async def handle(msg):
            handled[i][msg.value().decode()] += 1
            await asyncio.sleep(0.005)

        return handle

    def seen() -> collections.Counter[str]:
        total: collections.Counter[str] = collections.Counter()
        for counter in handled.values():
            total.update(counter)
        return total

    members = [
        Consumer(
            KafkaShareSource(
                kafka_bootstrap, [share_topic], group, consumers=2, config={"max.poll.records": 10}
            ),
            handler_of(i),
            ordering="unordered",
            concurrency=4,
        )
        for i in range(3)
    ]
    for member in members:
        member.start()
    try:
        # Records keep coming until every member has handled some (they join one after the other).
        deadline = time.monotonic() + WAIT
        while not all(handled[i] for i in range(3)):
            assert time.monotonic() < deadline, f"not every member got records: {handled}"
            batch = [f"r{len(produced) + k}" for k in range(20)]
            produce(kafka_bootstrap, share_topic, batch)
            produced += batch
        wait_for(lambda: len(seen()) >= len(produced), f"{len(produced)} records handled")
        twice = {v: n for v, n in seen().items() if n > 1}
        assert not twice, f"handled more than once while every member ran: {twice}"
        assert set(seen()) == set(produced)
    finally:
        summaries = [member.stop() for member in members]
    for summary in summaries:
        assert summary is not None and summary.error is None
        assert summary.acknowledged is not None
        assert summary.acknowledged["accepted"] == summary.handled
    assert sum(s.handled for s in summaries if s is not None) == len(produced)
    assert leftovers(kafka_bootstrap, share_topic, group) == []


def test_processes_merge_the_acknowledgements(kafka_bootstrap, share_topic, tmp_path):
    """--processes 2: two members in one share group; the merged summary adds up their acknowledgements."""
    group = f"sg-{uuid.uuid4().hex}"
    values = [f"r{i}" for i in range(40)]
    produce(kafka_bootstrap, share_topic, values)
    log = tmp_path / "handled.jsonl"
    proc = start_member(kafka_bootstrap, share_topic, group, log, "--processes", "2")
    wait_for(lambda: {e["v"] for e in read_log(log)} >= set(values), "every record handled")
    code, summary, err = finish(proc)
    assert code == 0, err[-2000:]
    assert summary["processes"] == 2 and summary["handled"] == 40
    assert summary["acknowledged"]["accepted"] == 40 and summary["acknowledged"]["released"] == 0
    assert leftovers(kafka_bootstrap, share_topic, group) == []


# -- the command line: each --on-error choice


def test_on_error_skip_rejects(kafka_bootstrap, share_topic, tmp_path):
    """skip: the poison record is rejected, so the broker archives it: nobody gets it again."""
    group = f"sg-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, share_topic, ["poison-1", *[f"ok{i}" for i in range(20)]])
    log = tmp_path / "handled.jsonl"
    proc = start_member(kafka_bootstrap, share_topic, group, log, "--on-error", "skip", "--retries", "1")
    # the retry's log line comes in the same step of the event loop as the policy's outcome
    wait_for(lambda: len(read_log(log)) == 22, "every record seen, the poison one twice")
    code, summary, err = finish(proc)
    assert code == 0, err[-2000:]
    assert summary["acknowledged"]["rejected"] == 1 and summary["acknowledged"]["accepted"] == 20
    assert summary["skipped"] == 1 and summary["retried"] == 1
    assert leftovers(kafka_bootstrap, share_topic, group) == []


def test_on_error_dlq_accepts_after_the_write(kafka_bootstrap, share_topic, tmp_path):
    group = f"sg-{uuid.uuid4().hex}"
    dlq = f"dlq-{uuid.uuid4().hex}"
    create_topic(kafka_bootstrap, dlq, partitions=1)
    produce(kafka_bootstrap, share_topic, ["poison-1", *[f"ok{i}" for i in range(10)]])
    log = tmp_path / "handled.jsonl"
    proc = start_member(kafka_bootstrap, share_topic, group, log, "--on-error", "dlq", "--dlq-topic", dlq)
    try:
        wait_for(lambda: len(read_topic(kafka_bootstrap, dlq)) == 1, "the poison record in the DLQ")
        wait_for(lambda: len({e["v"] for e in read_log(log)}) == 11, "every record seen")
        code, summary, err = finish(proc)
        assert code == 0, err[-2000:]
        assert summary["dead_lettered"] == 1 and summary["acknowledged"]["accepted"] == 11
        (dead,) = read_topic(kafka_bootstrap, dlq)
        assert dead.value() == b"poison-1"
        assert dict(dead.headers())["fastconsumer.topic"] == share_topic.encode()
        assert leftovers(kafka_bootstrap, share_topic, group) == []
    finally:
        delete_topic(kafka_bootstrap, dlq)


def test_on_error_release_up_to_the_delivery_limit(kafka_bootstrap, share_topic, tmp_path):
    """release: the broker delivers the poison record again, up to the group's delivery count limit (2
    here), then archives it."""
    group = f"sg-{uuid.uuid4().hex}"
    group_config(kafka_bootstrap, group, share_delivery_count_limit=2)
    produce(kafka_bootstrap, share_topic, ["poison-1", *[f"ok{i}" for i in range(10)]])
    log = tmp_path / "handled.jsonl"
    proc = start_member(kafka_bootstrap, share_topic, group, log, "--on-error", "release")
    poison = lambda: [e["dc"] for e in read_log(log) if e["v"] == "poison-1"]  # noqa: E731
    wait_for(lambda: poison() == [1, 2], "the poison record delivered twice")
    wait_for(lambda: len({e["v"] for e in read_log(log)}) == 11, "every record seen")
    code, summary, err = finish(proc)
    assert code == 0, err[-2000:]
    assert summary["released"] == 2 and summary["failed"] == 2
    acks = summary["acknowledged"]
    assert acks["released"] == 2 and acks["accepted"] == 10
    assert acks["redelivered"] == 1 and acks["max_delivery_count"] == 2
    assert leftovers(kafka_bootstrap, share_topic, group) == []  # archived at the limit
    assert poison() == [1, 2]


def test_on_error_stop_releases_and_exits_1(kafka_bootstrap, share_topic, tmp_path):
    """stop: exit 1 naming the record; the record was released, so the next member gets it at once."""
    group = f"sg-{uuid.uuid4().hex}"
    produce(kafka_bootstrap, share_topic, ["poison-1"])
    log = tmp_path / "handled.jsonl"
    proc = start_member(kafka_bootstrap, share_topic, group, log)
    code, summary, err = finish(proc, stop=False)
    assert code == 1, err[-2000:]
    assert f"{share_topic}[0]@0" in err and "cannot handle poison-1" in err
    # released by the policy (and again at the close, if the member's other consumer fetched it meanwhile)
    assert summary["acknowledged"]["released"] >= 1 and summary["acknowledged"]["accepted"] == 0
    assert leftovers(kafka_bootstrap, share_topic, group) == ["poison-1"]


# -- a member killed


def test_sigkilled_members_records_come_back_after_the_lock(kafka_bootstrap, share_topic, tmp_path):
    """A member SIGKILLed with records in flight: the broker gives them to another member once their locks
    expire (1 s here: the group's share.record.lock.duration.ms)."""
    group = f"sg-{uuid.uuid4().hex}"
    group_config(kafka_bootstrap, group, share_record_lock_duration_ms=2000)
    values = [f"r{i}" for i in range(30)]
    produce(kafka_bootstrap, share_topic, values)
    hung_log = tmp_path / "hung.jsonl"
    hung = start_member(kafka_bootstrap, share_topic, group, hung_log, SHARE_HANG="1")
    try:
        wait_for(lambda: read_log(hung_log), "the first member started records")
    finally:
        hung.kill()
        hung.communicate(timeout=WAIT)
    taken = {e["v"] for e in read_log(hung_log)}
    assert taken and all(e["dc"] == 1 for e in read_log(hung_log))
    log = tmp_path / "handled.jsonl"
    proc = start_member(kafka_bootstrap, share_topic, group, log)
    wait_for(lambda: {e["v"] for e in read_log(log)} >= set(values), "every record handled by the second")
    code, summary, err = finish(proc)
    assert code == 0, err[-2000:]
    again = {e["v"]: e["dc"] for e in read_log(log) if e["v"] in taken}
    assert again and all(dc >= 2 for dc in again.values()), again
    assert summary["acknowledged"]["redelivered"] >= len(again)


def test_a_stop_does_not_wait_on_a_broker_that_stopped_answering(monkeypatch, caplog):
    """A share consumer's close waits out its request timeout (60 s) on a broker that stopped answering
    (here frozen with SIGSTOP), and the stop with it. The close is bounded (CLOSE_TIMEOUT_S; 0.5 s here):
    what it did not acknowledge, the broker hands out again when the locks expire."""
    monkeypatch.setattr(kafka_client, "CLOSE_TIMEOUT_S", 0.5)
    with local_broker_module().LocalBroker() as broker:
        bootstrap = broker.bootstrap
        create_topic(bootstrap, "frozen", partitions=1)
        group = f"sg-{uuid.uuid4().hex}"
        group_config(bootstrap, group, share_auto_offset_reset="earliest")
        produce(bootstrap, "frozen", [f"r{i}" for i in range(50)])
        handled: set[str] = set()

        async def handler(msg):
            handled.add(msg.value().decode())

        consumer = Consumer(KafkaShareSource(bootstrap, ["frozen"], group), handler, ordering="unordered")
        consumer.start()
        try:
            wait_for(lambda: len(handled) == 50, "every record handled")
        finally:
            summary, took = stop_while_frozen(consumer, broker.pid)
    assert summary is not None and summary.error is None and summary.handled == 50
    assert took < 4.0
    assert f"leaving share group {group!r} did not finish within 0.5 s" in caplog.text


# -- flags a share group refuses


@pytest.mark.parametrize(
    "args, message",
    [
        (["--share-group", "s", "--group", "g"], "--share-group and --group"),
        (["--share-group", "s", "--ordering", "key"], "--ordering key: a share group keeps no order"),
        (["--share-group", "s", "--ordering", "partition"], "--ordering partition"),
        (["--share-group", "s", "--exit-at-end"], "--exit-at-end: a share group has no end"),
        (["--on-error", "release"], "--on-error release needs --share-group"),
    ],
)
def test_refused_flags(args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "fastconsumer", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t", *args],
        cwd=BROKER_PY.parents[1],
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
