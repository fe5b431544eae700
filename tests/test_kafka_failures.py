"""Failure policies, broker faults and bad input, against a real Apache Kafka broker."""

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from fastconsumer import Consumer
from fastconsumer.engine import commits
from fastconsumer.produce import produce
from fastconsumer.sources import KafkaSource
from fastconsumer.sources.kafka import client as kafka_client
from tests.kafka_helpers import (
    committed_offsets,
    create_topic,
    end_offsets,
    local_broker_module,
    read_topic,
    stop_while_frozen,
)

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args, timeout=120):
    proc = subprocess.run(
        [sys.executable, "-m", "fastconsumer", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout, proc.stderr


def kafka_args(bootstrap, topic, group):
    return ["--bootstrap-servers", bootstrap, "--topic", topic, "--group", group, "--from-beginning"]


def test_stop_leaves_the_poison_partition_committed_at_exactly_its_offset(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, 2000, keys=40)
    ends = end_offsets(kafka_bootstrap, kafka_topic)
    assert ends[0] > 100  # the poison (partition 0, offset 100) exists
    code, out, err = run_cli(
        *kafka_args(kafka_bootstrap, kafka_topic, "stop"),
        "--handler",
        "tests.cli_handlers:poison",
        "--retries",
        "2",
        "--retry-backoff-ms",
        "5",
        "--json",
    )
    assert code == 1, err
    assert f"{kafka_topic}[0]@100" in err and "cannot parse this one" in err
    summary = json.loads(out)
    assert summary["failed"] == 1 and summary["retried"] == 2
    assert committed_offsets(kafka_bootstrap, "stop", kafka_topic)[0] == 100


def test_dlq_holds_exactly_the_poison_messages_with_their_story(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, 1000, keys=25)
    dlq = kafka_topic + "-dlq"
    create_topic(kafka_bootstrap, dlq, 1)
    code, out, err = run_cli(
        *kafka_args(kafka_bootstrap, kafka_topic, "dlq"),
        "--handler",
        "tests.cli_handlers:reject_threes",
        "--on-error",
        "dlq",
        "--dlq-topic",
        dlq,
        "--retries",
        "1",
        "--retry-backoff-ms",
        "1",
        "--exit-at-end",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["dead_lettered"] == 100 and summary["handled"] == 900
    letters = read_topic(kafka_bootstrap, dlq)
    indexes = sorted(int(json.loads(m.value())["foo"][3:]) for m in letters)
    assert indexes == list(range(3, 1000, 10))
    for m in letters:
        headers = dict(m.headers())
        assert headers["fastconsumer.topic"] == kafka_topic.encode()
        assert int(headers["fastconsumer.partition"]) in range(4)
        assert int(headers["fastconsumer.offset"]) >= 0
        assert headers["fastconsumer.error"].startswith(b"ValueError: rejecting")
        assert headers["fastconsumer.attempts"] == b"2"
        assert m.key() is not None
    assert committed_offsets(kafka_bootstrap, "dlq", kafka_topic) == end_offsets(kafka_bootstrap, kafka_topic)


def test_skip_counts_add_up_and_a_bad_payload_is_a_failure_not_a_crash(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, 500, keys=10)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for partition in range(4):
        producer.produce(kafka_topic, value=b"this is not json", partition=partition)
    producer.flush(10)
    code, out, err = run_cli(
        *kafka_args(kafka_bootstrap, kafka_topic, "skip"),
        "--latency-ms",
        "0",
        "--on-error",
        "skip",
        "--exit-at-end",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["skipped"] == 4 and summary["handled"] == 500 and summary["failed"] == 4
    assert "JSONDecodeError" in err
    assert committed_offsets(kafka_bootstrap, "skip", kafka_topic) == end_offsets(
        kafka_bootstrap, kafka_topic
    )


def test_bad_input_against_a_broker_is_exit_2_before_consuming(kafka_bootstrap, kafka_topic):
    for args, message in [
        (["-X", "fetch.bogus=1"], 'No such configuration property: "fetch.bogus"'),
        (["-X", "session.timeout.ms=abc"], "session.timeout.ms"),
        (["--on-error", "dlq"], "--on-error dlq needs --dlq-topic"),
    ]:
        code, out, err = run_cli(*kafka_args(kafka_bootstrap, kafka_topic, "bad"), *args)
        assert code == 2, (args, err)
        assert message in err and out == ""
    code, out, err = run_cli(*kafka_args(kafka_bootstrap, "no-such-topic", "bad"))
    assert code == 2 and "topic 'no-such-topic' does not exist" in err and out == ""
    assert committed_offsets(kafka_bootstrap, "bad", kafka_topic) == {}


def test_the_consumer_rides_out_a_broker_restart(tmp_path):
    broker_module = local_broker_module()
    with broker_module.LocalBroker() as broker:
        bootstrap = broker.bootstrap
        create_topic(bootstrap, "restart", 4)
        produce(bootstrap, "restart", 20_000, keys=100)
        handled = set()
        some_handled = threading.Event()

        async def handler(msg):
            handled.add((msg.partition(), msg.offset()))
            if len(handled) == 3000:
                some_handled.set()
            await asyncio.sleep(0.001)

        source = KafkaSource(bootstrap, ["restart"], "restart", from_beginning=True)
        consumer = Consumer(source, handler, concurrency=16, commit_interval=0.2, exit_at_end=True)
        consumer.start()
        assert some_handled.wait(60)
        broker.restart()
        summary = consumer.join(timeout=180)
        assert summary is not None and summary.error is None
        ends = end_offsets(bootstrap, "restart")
        assert handled == {(p, o) for p, end in ends.items() for o in range(end)}
        assert committed_offsets(bootstrap, "restart", "restart") == ends


@pytest.fixture(scope="module")
def freezable_broker():
    """A broker of these tests' own, to freeze with SIGSTOP (as one that stopped answering)."""
    with local_broker_module().LocalBroker() as broker:
        yield broker


def handled_all(bootstrap: str, topic: str, commit_interval: float) -> Consumer:
    """A consumer of ``topic`` (100 messages) that has handled every message."""
    create_topic(bootstrap, topic, 2)
    produce(bootstrap, topic, 100, keys=10)
    handled = threading.Semaphore(0)

    async def handler(msg):
        handled.release()

    source = KafkaSource(bootstrap, [topic], topic, from_beginning=True)
    consumer = Consumer(source, handler, commit_interval=commit_interval)
    consumer.start()
    for _ in range(100):
        assert handled.acquire(timeout=60), f"handled {consumer.stats.handled} of 100"
    return consumer


def test_a_stop_does_not_wait_on_a_broker_that_stopped_answering(freezable_broker, monkeypatch, caplog):
    """Once every message is handled and committed, a stop has nothing left that needs the broker but
    leaving the group. A broker that stopped answering (here frozen with SIGSTOP; in the soak, a member
    whose coordinator connection stayed down through a restart) held librdkafka's close, and so the stop,
    for its request timeout: 60 s. The close is bounded (CLOSE_TIMEOUT_S; 0.5 s here)."""
    monkeypatch.setattr(kafka_client, "CLOSE_TIMEOUT_S", 0.5)
    consumer = handled_all(freezable_broker.bootstrap, "frozen", commit_interval=0.1)
    deadline = time.monotonic() + 60
    while sum(consumer.stats.committed.values()) < 100:  # everything committed: the stop commits nothing
        assert time.monotonic() < deadline, f"committed {consumer.stats.committed}"
        time.sleep(0.05)  # polling a counter the consumer's thread moves
    summary, took = stop_while_frozen(consumer, freezable_broker.pid)
    assert summary is not None and summary.error is None and summary.handled == 100
    assert took < 4.0  # librdkafka's own LeaveGroup timeout alone is 5 s
    assert "leaving group 'frozen' did not finish within 0.5 s" in caplog.text


def test_a_final_commit_the_broker_does_not_answer_ends_the_stop_in_time(
    freezable_broker, monkeypatch, caplog
):
    """librdkafka's synchronous commit waits for the coordinator without a bound: with the final commit
    still to make, a stop on a broker that stopped answering never ended (the soak saw a member hang after
    a broker restart). The final commit gives up after FINAL_COMMIT_S (1 s here) with an error that says
    what happens (the messages come again), and the stop ends."""
    monkeypatch.setattr(commits, "FINAL_COMMIT_S", 1.0)
    monkeypatch.setattr(kafka_client, "CLOSE_TIMEOUT_S", 0.5)
    consumer = handled_all(freezable_broker.bootstrap, "frozen-commit", commit_interval=3600)
    assert consumer.stats.committed == {}
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="not answered within 1 s .* will be delivered again"):
        stop_while_frozen(consumer, freezable_broker.pid)
    assert time.monotonic() - started < 5.0
    assert consumer.stats.committed == {} and consumer.stats.commit_failures == 1
    assert "final commit failed: not answered within 1 s" in caplog.text
