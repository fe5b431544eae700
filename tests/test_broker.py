"""The local Kafka broker of ``dev/broker.py``: topics, messages and committed offsets survive a restart."""

from __future__ import annotations

import re
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.kafka_helpers import BROKER_PY, committed_of, local_broker_module, retrying

PARTITIONS = 4
MESSAGES = 1000
TIMEOUT = 60.0


def wait_until(predicate, what: str, timeout: float = TIMEOUT, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def consumer(bootstrap: str, group: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )


def consume(c: Consumer, want: int, commit: bool) -> dict[tuple[int, int], bytes]:
    """Consume ``want`` messages (committing after each batch if ``commit``): {(partition, offset): value}."""
    got: dict[tuple[int, int], bytes] = {}

    def step() -> bool:
        batch = c.consume(num_messages=200, timeout=0.5)
        for m in batch:
            if m.error():
                raise AssertionError(f"consumer error: {m.error()}")
            got[(m.partition(), m.offset())] = m.value()
        if batch and commit:  # commits the positions after this batch
            retrying(lambda: c.commit(asynchronous=False), "commit")
        return len(got) >= want

    wait_until(step, f"{want} messages (have {len(got)})")
    assert len(got) == want, f"expected {want} messages, got {len(got)}"
    return got


def group_state(bootstrap: str, group: str, topic: str) -> tuple[dict[int, int], dict[int, int]]:
    """The group's committed offsets and the topic's high watermarks, per partition.

    Asked through a consumer that is not subscribed: in a subscribed one these requests queue behind its
    long-polling fetches.
    """
    c = consumer(bootstrap, group)
    try:
        tps = committed_of(c, [TopicPartition(topic, p) for p in range(PARTITIONS)])
        high = {
            p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=TIMEOUT)[1]
            for p in range(PARTITIONS)
        }
        return {tp.partition: tp.offset for tp in tps}, high
    finally:
        c.close()


def produce(bootstrap: str, topic: str, start: int, count: int) -> None:
    errors: list[KafkaError] = []
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(start, start + count):
        p.produce(
            topic,
            key=str(i).encode(),
            value=f"message-{i}".encode(),
            on_delivery=lambda err, _msg: errors.append(err) if err else None,
        )
        p.poll(0)
    assert p.flush(TIMEOUT) == 0, "messages left undelivered"
    assert not errors, errors[:5]


def test_produce_consume_commit_restart_keeps_data_and_offsets():
    broker_mod = local_broker_module()
    topic, group = f"broker-test-{uuid.uuid4().hex[:8]}", f"group-{uuid.uuid4().hex[:8]}"

    with broker_mod.LocalBroker() as broker:
        bootstrap = broker.bootstrap
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(
            timeout=TIMEOUT
        )

        produce(bootstrap, topic, 0, MESSAGES)

        c = consumer(bootstrap, group)
        c.subscribe([topic])
        before = consume(c, MESSAGES, commit=True)
        c.close()
        offsets_before, hw_before = group_state(bootstrap, group, topic)
        assert sorted(before.values()) == sorted(f"message-{i}".encode() for i in range(MESSAGES))
        assert len({p for p, _ in before}) == PARTITIONS, "keys should spread over all partitions"
        assert offsets_before == hw_before, (offsets_before, hw_before)
        assert sum(offsets_before.values()) == MESSAGES

        broker.restart()
        assert broker.bootstrap == bootstrap, "restart() must keep the ports"

        # the topic survived, with its partitions ...
        md = admin.list_topics(topic, timeout=TIMEOUT).topics[topic]
        assert md.error is None and len(md.partitions) == PARTITIONS

        # ... and so did the committed offsets and every message
        assert group_state(bootstrap, group, topic) == (offsets_before, hw_before)

        fresh = consumer(bootstrap, f"{group}-fresh")
        fresh.subscribe([topic])
        assert consume(fresh, MESSAGES, commit=False) == before
        fresh.close()

        # the group resumes from its committed offsets: it sees only what was produced after the restart
        produce(bootstrap, topic, MESSAGES, 20)
        c = consumer(bootstrap, group)
        c.subscribe([topic])
        after = consume(c, 20, commit=True)
        c.close()
        assert sorted(after.values()) == sorted(
            f"message-{i}".encode() for i in range(MESSAGES, MESSAGES + 20)
        )
        assert all(offset >= offsets_before[p] for p, offset in after)

        data_dir = broker.data_dir
        assert any(data_dir.glob(f"{topic}-*")), "the topic's partitions live in the broker's data dir"
    assert not data_dir.exists(), "stop() removes the temp dir"


def test_docker_compose_uses_the_pom_kafka_version():
    compose = (BROKER_PY.parents[1] / "docker-compose.yml").read_text()
    tags = re.findall(r"^\s*image:\s*apache/kafka:(\S+)\s*$", compose, re.MULTILINE)
    assert tags == [local_broker_module().kafka_version()]
