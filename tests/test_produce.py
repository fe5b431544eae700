"""``python -m fastconsumer.produce`` against a real broker: what it writes is exactly what was asked for."""

import json
import logging
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fastconsumer.produce import produce
from tests.kafka_helpers import end_offsets, read_topic

ROOT = Path(__file__).resolve().parent.parent


def run_produce(*args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fastconsumer.produce", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_writes_every_message_once_padded_and_keyed(kafka_bootstrap, kafka_topic):
    proc = run_produce(
        "--bootstrap-servers", kafka_bootstrap, "--topic", kafka_topic,
        "--count", "1000", "--keys", "10", "--size", "100", "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", "stderr is not a terminal: no progress, and nothing went wrong"
    summary = json.loads(proc.stdout)
    assert proc.stdout.count("\n") == 1
    assert summary["topic"] == kafka_topic
    assert summary["count"] == 1000 and summary["failed"] == 0
    assert summary["bytes"] == 1000 * 100
    assert summary["elapsed_s"] > 0 and summary["rate"] > 0

    messages = read_topic(kafka_bootstrap, kafka_topic)
    assert len(messages) == 1000
    seen: Counter[int] = Counter()
    partitions_of_key: defaultdict[bytes, set[int]] = defaultdict(set)
    for m in messages:
        value = m.value()
        assert len(value) == 100, value
        doc = json.loads(value)
        i = int(doc["foo"].removeprefix("foo"))
        assert doc == {"foo": f"foo{i}", "bar": f"bar{i}", "pad": "x" * len(doc["pad"])}, doc
        assert m.key() == f"key-{i % 10}".encode()
        seen[i] += 1
        partitions_of_key[m.key()].add(m.partition())
    assert sorted(seen) == list(range(1000)) and set(seen.values()) == {1}
    assert {k: len(ps) for k, ps in partitions_of_key.items()} == {f"key-{k}".encode(): 1 for k in range(10)}
    assert sum(end_offsets(kafka_bootstrap, kafka_topic).values()) == 1000


def test_partitions_creates_a_missing_topic_and_warns_about_an_existing_one(kafka_bootstrap, caplog):
    import uuid

    topic = f"t-{uuid.uuid4().hex}"
    summary = produce(kafka_bootstrap, topic, 100, partitions=3)
    assert summary["count"] == 100 and summary["failed"] == 0
    ends = end_offsets(kafka_bootstrap, topic)
    assert len(ends) == 3 and sum(ends.values()) == 100

    with caplog.at_level(logging.WARNING, logger="fastconsumer.produce"):
        summary = produce(kafka_bootstrap, topic, 50, start=100, partitions=5)
    assert summary["count"] == 50
    assert [r.getMessage() for r in caplog.records if r.name == "fastconsumer.produce"] == [
        f"topic {topic} exists with 3 partitions, not 5: producing to it as it is"
    ]
    values = sorted(json.loads(m.value())["foo"] for m in read_topic(kafka_bootstrap, topic))
    assert values == sorted(f"foo{i}" for i in range(150))


def test_unreachable_broker_fails_in_bounded_time_with_one_line():
    t0 = time.monotonic()
    proc = run_produce("--bootstrap-servers", "127.0.0.1:1", "--topic", "foo", "--count", "10", timeout=60)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert "cannot reach Kafka at 127.0.0.1:1" in lines[0] and "Connection refused" in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("args", "names"),
    [
        (["--count", "0"], "--count"),
        (["--size", "20"], "size 20 is too small"),
        (["-X", "no.such.property=1"], "no.such.property"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, names):
    # nothing listens on port 1: bad usage is found before connecting, or this would take 10 s and exit 1
    proc = run_produce("--bootstrap-servers", "127.0.0.1:1", "--topic", "foo", *args, timeout=30)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m fastconsumer.produce: error: "), proc.stderr
    assert names in lines[0]
    assert proc.stdout == ""
