"""Against a real Apache Kafka broker (started by the test session): the guarantees hold on Kafka too."""

import asyncio
import json
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from confluent_kafka import TopicPartition

from fastconsumer import Consumer
from fastconsumer.produce import produce
from fastconsumer.sources import KafkaSource
from tests.kafka_helpers import (
    Recorder,
    assigned,
    committed_offsets,
    create_topic,
    delete_topic,
    end_offsets,
    start_cli,
)

ROOT = Path(__file__).resolve().parent.parent


def cli(bootstrap, topic, group, *args, record=None):
    return start_cli(
        bootstrap, topic, group, *args, env={"FASTCONSUMER_TEST_RECORD": str(record)} if record else None
    )


def read_record(path):
    return [tuple(line.split()) for line in Path(path).read_text().splitlines()]


def all_offsets(bootstrap, topic):
    return {(str(p), str(o)) for p, end in end_offsets(bootstrap, topic).items() for o in range(end)}


def test_end_to_end_every_message_once_in_key_order(kafka_bootstrap, kafka_topic, tmp_path):
    produce(kafka_bootstrap, kafka_topic, 5000, keys=50)
    record = tmp_path / "handled"
    proc = cli(
        kafka_bootstrap,
        kafka_topic,
        "e2e",
        "--exit-at-end",
        "--json",
        "--handler",
        "tests.cli_handlers:record",
        record=record,
    )
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    handled = read_record(record)
    assert {(p, o) for p, o, _ in handled} == all_offsets(kafka_bootstrap, kafka_topic)
    assert len(handled) == 5000 == summary["handled"]
    assert committed_offsets(kafka_bootstrap, "e2e", kafka_topic) == end_offsets(kafka_bootstrap, kafka_topic)
    per_key = {}
    for _, o, key in handled:  # finish order; one at a time per key, so also start order
        per_key.setdefault(key, []).append(int(o))
    assert all(offsets == sorted(offsets) for offsets in per_key.values())
    assert len({p for p, _, _ in handled}) == 4


def test_stop_and_resume_loses_nothing_and_repeats_nothing(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, 4000, keys=20)
    seen = []

    async def handler(msg):
        seen.append((msg.partition(), msg.offset()))
        await asyncio.sleep(0.0005)

    first = Consumer(
        KafkaSource(kafka_bootstrap, [kafka_topic], "resume", from_beginning=True),
        handler,
        concurrency=32,
        max_messages=1500,
    )
    first.start()
    first_summary = first.join(timeout=60)
    assert first_summary is not None and 1500 <= first_summary.handled < 4000
    second = Consumer(
        KafkaSource(kafka_bootstrap, [kafka_topic], "resume", from_beginning=True),
        handler,
        concurrency=32,
        exit_at_end=True,
    )
    second.start()
    assert second.join(timeout=60) is not None
    assert set(seen) == {
        (p, o) for p, end in end_offsets(kafka_bootstrap, kafka_topic).items() for o in range(end)
    }
    twice = len(seen) - len(set(seen))
    assert twice <= 32  # within the in-flight window; a graceful stop fills its gaps, so in practice 0
    assert committed_offsets(kafka_bootstrap, "resume", kafka_topic) == end_offsets(
        kafka_bootstrap, kafka_topic
    )


def test_backpressure_holds_the_cap_and_keeps_the_member_in_the_group(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, 600, keys=0)
    cap = 40
    peak_held = 0
    consumer = None

    async def slow(msg):
        nonlocal peak_held
        peak_held = max(peak_held, consumer.buffered + consumer.stats.in_flight)
        await asyncio.sleep(0.01)

    # A member that stopped polling while paused would be kicked out after max.poll.interval.ms.
    config = {"session.timeout.ms": 6000, "max.poll.interval.ms": 6000, "heartbeat.interval.ms": 500}
    source = KafkaSource(kafka_bootstrap, [kafka_topic], "bp", config=config, from_beginning=True)
    consumer = Consumer(
        source, slow, concurrency=2, ordering="unordered", batch_size=10, max_buffered=cap, exit_at_end=True
    )
    consumer.start()
    summary = consumer.join(timeout=120)
    assert summary is not None and summary.handled == 600
    assert peak_held <= cap
    assert consumer.stats.consumed == 600  # fetched once each: never lost the assignment, never re-read
    assert source.stats.rebalances == 2  # assigned once at the start, revoked once at the end


def test_sigkill_mid_stream_then_restart_handles_every_message(kafka_bootstrap, kafka_topic, tmp_path):
    produce(kafka_bootstrap, kafka_topic, 6000, keys=30)
    record = tmp_path / "handled"
    proc = cli(
        kafka_bootstrap,
        kafka_topic,
        "killed",
        "--commit-interval",
        "0.2",
        "--handler",
        "tests.cli_handlers:record",
        # the next member's join waits for this one's session to expire: 6 s, not librdkafka's 45 s
        "-X",
        "session.timeout.ms=6000",
        record=record,
    )
    for line in proc.stderr:
        if line.strip() == "MARK":
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = len(read_record(record))
    assert 500 <= before < 6000
    again = cli(
        kafka_bootstrap,
        kafka_topic,
        "killed",
        "--exit-at-end",
        "--handler",
        "tests.cli_handlers:record",
        record=record,
    )
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    handled = {(p, o) for p, o, _ in read_record(record)}
    assert handled == all_offsets(kafka_bootstrap, kafka_topic)


def test_an_unreachable_broker_is_one_clear_error():
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastconsumer", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "cannot reach Kafka at 127.0.0.1:1" in err
    assert len(err.strip().splitlines()) <= 3, err


def test_threads_left_behind_are_none():
    assert [t.name for t in threading.enumerate() if t.name.startswith("fastconsumer")] == []


def test_a_commit_never_moves_a_partition_this_member_does_not_own(kafka_bootstrap, kafka_topic):
    """The group takes a commit of any of its partitions from any member. A member that lost a partition
    and committed it afterwards (a stop's final commit, retried after a broker restart) took the new
    owner's offset back, and the soak saw those messages handled twice."""
    other = f"t-{uuid.uuid4().hex}"
    create_topic(kafka_bootstrap, other, partitions=1)

    async def main():
        source = KafkaSource(kafka_bootstrap, [kafka_topic], "not-owned", from_beginning=True)
        await source.open(Recorder())
        try:
            await assigned(source, 4)
            return await source.commit_sync([TopicPartition(kafka_topic, 0, 0), TopicPartition(other, 0, 7)])
        finally:
            await source.close()

    try:
        done = asyncio.run(main())
        assert [(tp.topic, tp.partition, tp.offset) for tp in done] == [(kafka_topic, 0, 0)]
        assert committed_offsets(kafka_bootstrap, "not-owned", other) == {}
        assert committed_offsets(kafka_bootstrap, "not-owned", kafka_topic) == {0: 0}
    finally:
        delete_topic(kafka_bootstrap, other)
