"""Transactional topics against a real Apache Kafka broker: commit and abort markers take offsets that hold no
message, and the group's committed offsets still reach the end; a commit that fails for one partition says
which. Then the Kafka thread against a stand-in for librdkafka's consumer: commits retried while the
coordinator moves, kept in order, and no message lost when a rebalance happens inside a poll."""

import asyncio
import json
import time
from types import SimpleNamespace

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fastconsumer import Consumer, metrics
from fastconsumer.sources import KafkaSource
from fastconsumer.sources.base import SourceStats
from fastconsumer.sources.kafka import client as kafka_client
from fastconsumer.sources.kafka.client import Client
from fastconsumer.sources.kafka.commands import Close, Commit, CommitSync
from tests.kafka_helpers import Recorder, assigned, committed_offsets, end_offsets, produce_transactions
from tests.test_operations import get, per_partition, scrape, wait_until

WAIT = 60.0
ABORTED = {3, 8, 13, 19}  # the last transaction too: every partition's log ends with an abort marker


def transactions(topic_partitions: int = 4) -> list[tuple[bool, list[tuple[int, bytes]]]]:
    """20 transactions of 100 records, 2,000 in all, 4 of them aborted. The committed ones write to
    partitions 0-2; the aborted ones to every partition, so the last one holds aborted records only."""
    out = []
    for t in range(20):
        commit = t not in ABORTED
        spread = topic_partitions - 1 if commit else topic_partitions
        out.append((commit, [(i % spread, f"{t}-{i}".encode()) for i in range(100)]))
    return out


def committed_values() -> list[bytes]:
    return sorted(value for commit, records in transactions() if commit for _, value in records)


def test_transactional_topic_handled_once_and_committed_to_the_end(kafka_bootstrap, kafka_topic):
    produce_transactions(kafka_bootstrap, kafka_topic, transactions())
    ends = end_offsets(kafka_bootstrap, kafka_topic)
    assert sum(ends.values()) == 2000 + 16 * 3 + 4 * 4  # the records and a marker per partition written
    seen = []

    async def handler(msg):
        seen.append(msg.value())

    consumer = Consumer(
        KafkaSource(kafka_bootstrap, [kafka_topic], "tx-end", from_beginning=True),
        handler,
        exit_at_end=True,
    )
    consumer.start()
    summary = consumer.join(timeout=WAIT)
    assert summary is not None and summary.handled == 1600
    assert sorted(seen) == committed_values()  # every committed message once, no aborted one
    assert committed_offsets(kafka_bootstrap, "tx-end", kafka_topic) == ends
    # the final commit reports the offsets as committed: past the markers
    committed = {c["partition"]: c["offset"] for c in summary.committed}
    assert {p: committed.get(p) for p in range(3)} == {p: ends[p] for p in range(3)}


def test_transactional_topic_lag_reaches_zero_and_ready(kafka_bootstrap, kafka_topic):
    produce_transactions(kafka_bootstrap, kafka_topic, transactions())
    ends = {(kafka_topic, p): end for p, end in end_offsets(kafka_bootstrap, kafka_topic).items()}
    handled = []

    async def handler(msg):
        handled.append(msg.value())

    consumer = Consumer(
        KafkaSource(kafka_bootstrap, [kafka_topic], "tx-lag", from_beginning=True),
        handler,
        commit_interval=0.1,
    )
    server = metrics.serve(consumer, 0, "127.0.0.1", stall_timeout=1.0, statistics_interval_ms=100)
    try:
        consumer.start()

        def caught_up():
            samples = scrape(server.url)
            lag = per_partition(samples, "fastconsumer_consumer_lag")
            return len(handled) == 1600 and len(lag) == 4 and not any(lag.values()) and samples

        samples = wait_until(caught_up, "every committed message handled and the lag of every partition 0")
        assert per_partition(samples, "fastconsumer_committed_offset") == ends
        status, body = get(server.url + "/readyz")
        assert status == 200, body
        assert json.loads(body)["stalled"] == []
        assert committed_offsets(kafka_bootstrap, "tx-lag", kafka_topic) == {
            p: o for (_, p), o in ends.items()
        }
    finally:
        consumer.stop()
        server.close()
    assert sorted(handled) == committed_values()


def test_commit_sync_returns_the_offsets_as_committed_past_markers(kafka_bootstrap, kafka_topic):
    produce_transactions(kafka_bootstrap, kafka_topic, [(True, [(0, b"a"), (0, b"b")]), (False, [(0, b"c")])])
    ends = end_offsets(kafka_bootstrap, kafka_topic)
    assert ends[0] == 5  # a, b, commit marker, c (aborted), abort marker

    async def main():
        source = KafkaSource(kafka_bootstrap, [kafka_topic], "tx-sync", from_beginning=True)
        await source.open(Recorder())
        try:
            got = []
            deadline = time.monotonic() + WAIT
            while len(got) < 2 or not source.at_end():
                assert time.monotonic() < deadline, f"fetched {got}"
                got += [m.offset() for m in await source.fetch(100)]
            assert got == [0, 1]
            asked_past_b = await source.commit_sync([TopicPartition(kafka_topic, 0, 2)])
            asked_before_b = await source.commit_sync([TopicPartition(kafka_topic, 0, 1)])
        finally:
            await source.close()
        return asked_past_b, asked_before_b

    past_b, before_b = asyncio.run(main())
    assert [(tp.partition, tp.offset) for tp in past_b] == [(0, 5)]  # past both markers and c
    assert [(tp.partition, tp.offset) for tp in before_b] == [(0, 1)]  # b was not handled: as asked
    assert committed_offsets(kafka_bootstrap, "tx-sync", kafka_topic) == {0: 1}


def test_a_commit_failing_for_one_partition_is_reported_with_that_partition(kafka_bootstrap, kafka_topic):
    """An offset's metadata over the broker's offset.metadata.max.bytes fails that partition alone: the broker
    commits the other one. librdkafka 2.16 then fails the commit as a whole and marks every partition."""
    good = TopicPartition(kafka_topic, 0, 0)
    bad = TopicPartition(kafka_topic, 1, 0, "x" * 5000)

    async def main():
        source = KafkaSource(kafka_bootstrap, [kafka_topic], "partial", from_beginning=True)
        listener = Recorder()
        await source.open(listener)
        try:
            await assigned(source, 4)
            with pytest.raises(KafkaException) as raised:
                await source.commit_sync([good, bad])
            source.commit([good, bad])
            deadline = time.monotonic() + WAIT
            while not listener.commits:
                assert time.monotonic() < deadline, "no commit result"
                await asyncio.sleep(0.01)  # on_commit arrives on this loop: let it run
        finally:
            await source.close()
        return raised.value, listener.commits[0]

    error, (offsets, async_error) = asyncio.run(main())
    assert error.args[0].code() == KafkaError.OFFSET_METADATA_TOO_LARGE
    assert f"{kafka_topic}[1]@0" in str(error)  # names the partitions of the failed commit
    failed = {tp.partition for tp in offsets if tp.error is not None or async_error is not None}
    assert 1 in failed


# -- the Kafka thread on its own, with a stand-in for librdkafka's consumer


class FakeConsumer:
    """What every stand-in answers alike: pauses (the thread pauses while it waits) change nothing here."""

    def pause(self, partitions):
        pass

    def resume(self, partitions):
        pass


class FakeMessage:
    def __init__(self, partition: int, offset: int) -> None:
        self._partition, self._offset = partition, offset

    def topic(self):
        return "t"

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def error(self):
        return None


def _client() -> tuple[Client, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    config = {"bootstrap.servers": "unused:9092", "partition.assignment.strategy": "cooperative-sticky"}
    client = Client(config, ["t"], Recorder(), loop, SourceStats(), connect_timeout=1.0, poll_timeout=0.01)
    client.assignment = {("t", 0), ("t", 1)}
    return client, loop


def test_messages_fetched_ahead_in_the_poll_that_revoked_a_partition_are_kept():
    """A revoke inside consume() drops the held messages of the partition that left; the ones that call
    returns for the partitions still owned must be kept, or they are never delivered yet passed over."""
    client, loop = _client()
    client.assignment = {("t", 0), ("t", 1)}
    client._held = [FakeMessage(0, 5), FakeMessage(1, 7)]
    client._ahead = 10  # the engine is busy, not full: the thread fetches ahead between commands

    class Consumer(FakeConsumer):
        def consume(self, num_messages, timeout):
            client._forget([TopicPartition("t", 1)])  # what the revoke callback does first
            client.commands.put(Close(loop.create_future()))  # ends _serve after this poll
            return [FakeMessage(0, 6)]

        def close(self):
            pass

    try:
        client._serve(Consumer())
        assert [(m.partition(), m.offset()) for m in client._held] == [(0, 5), (0, 6)]
    finally:
        loop.close()


def test_synchronous_commit_retries_a_moving_coordinator():
    client, loop = _client()
    attempts = []

    class Consumer(FakeConsumer):
        def commit(self, offsets, asynchronous):
            attempts.append(offsets)
            if len(attempts) == 1:
                raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))
            if len(attempts) == 2:
                raise KafkaException(KafkaError(KafkaError.COORDINATOR_LOAD_IN_PROGRESS))
            if (
                len(attempts) == 3
            ):  # one partition still failing, retriably (TopicPartition.error is read-only)
                error = KafkaError(KafkaError.REQUEST_TIMED_OUT)
                failed = SimpleNamespace(topic="t", partition=1, offset=9, metadata=None, error=error)
                return [TopicPartition("t", 0, 4), failed]
            return list(offsets)

    try:
        reply = loop.create_future()
        client._apply(Consumer(), CommitSync([TopicPartition("t", 0, 4), TopicPartition("t", 1, 9)], reply))
        done = loop.run_until_complete(reply)
    finally:
        loop.close()
    assert [(tp.partition, tp.offset, tp.error) for tp in done] == [(0, 4, None), (1, 9, None)]
    assert [[tp.partition for tp in offsets] for offsets in attempts] == [[0, 1], [0, 1], [0, 1], [1]]


def test_synchronous_commit_gives_up_after_its_deadline(monkeypatch):
    monkeypatch.setattr(kafka_client, "COMMIT_RETRY_S", 0.3, raising=False)
    client, loop = _client()
    attempts = []

    class Consumer(FakeConsumer):
        def commit(self, offsets, asynchronous):
            attempts.append(offsets)
            raise KafkaException(KafkaError(KafkaError.NOT_COORDINATOR))

    try:
        with pytest.raises(KafkaException) as raised:
            client._apply(Consumer(), CommitSync([TopicPartition("t", 0, 4)], loop.create_future()))
    finally:
        loop.close()
    assert raised.value.args[0].code() == KafkaError.NOT_COORDINATOR
    assert "commit of t[0]@4 failed" in str(raised.value)
    assert 1 < len(attempts) < 20


def test_synchronous_commit_fails_for_the_partitions_that_failed():
    client, loop = _client()

    class Consumer(FakeConsumer):
        def commit(self, offsets, asynchronous):
            error = KafkaError(KafkaError.OFFSET_METADATA_TOO_LARGE)
            failed = SimpleNamespace(topic="t", partition=1, offset=9, metadata="x", error=error)
            return [TopicPartition("t", 0, 4), failed]  # not retriable: reported at once

    try:
        with pytest.raises(KafkaException) as raised:
            offsets = [TopicPartition("t", 0, 4), TopicPartition("t", 1, 9, "x")]
            client._apply(Consumer(), CommitSync(offsets, loop.create_future()))
    finally:
        loop.close()
    assert raised.value.args[0].code() == KafkaError.OFFSET_METADATA_TOO_LARGE
    assert "commit of t[1]@9 failed" in str(raised.value)


def test_one_asynchronous_commit_in_flight_the_next_waits_with_the_newest_offsets():
    """librdkafka sends a commit the coordinator did not take again after newer ones (seen in a broker
    restart), and the group's offset went back: a commit waits until the one in flight is done."""
    client, loop = _client()
    client.assignment = {("t", 0), ("t", 1)}
    sent = []

    class Consumer(FakeConsumer):
        def commit(self, offsets, asynchronous):
            sent.append([(tp.partition, tp.offset) for tp in offsets])

        def assignment(self):
            return []

        def consume(self, num_messages, timeout):
            client._on_commit(None, [TopicPartition("t", 0, 10)])  # the first one's result, served by a poll
            client.commands.put(Close(loop.create_future()))
            return []

        def close(self):
            pass

    client.commands.put(Commit([TopicPartition("t", 0, 10)]))
    client.commands.put(Commit([TopicPartition("t", 0, 20), TopicPartition("t", 1, 5)]))
    client.commands.put(Commit([TopicPartition("t", 0, 30)]))
    try:
        client._serve(Consumer())
    finally:
        loop.close()
    assert sent == [[(0, 10)], [(0, 30), (1, 5)]]


def test_a_synchronous_commit_waits_for_the_asynchronous_one_in_flight():
    client, loop = _client()
    client.assignment = {("t", 0)}
    events = []

    class Consumer(FakeConsumer):
        def commit(self, offsets, asynchronous):
            events.append(("async" if asynchronous else "sync", [tp.offset for tp in offsets]))
            return None if asynchronous else list(offsets)

        def assignment(self):
            return []

        def consume(self, num_messages, timeout):
            if len(events) == 1:
                events.append(("result", [10]))
                client._on_commit(None, [TopicPartition("t", 0, 10)])
            return []

    consumer = Consumer()
    try:
        client._apply(consumer, Commit([TopicPartition("t", 0, 10)]))
        reply = loop.create_future()
        client._apply(consumer, CommitSync([TopicPartition("t", 0, 20)], reply))
        assert [tp.offset for tp in loop.run_until_complete(reply)] == [20]
    finally:
        loop.close()
    assert events == [("async", [10]), ("result", [10]), ("sync", [20])]
