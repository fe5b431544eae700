"""Issue 10 on the engine, against both cores: handlers that raise anything, revokes that stop retries,
commits that never go backwards, a bounded uncommitted window, offsets that go back."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from fastconsumer import Consumer, MemoryLog, MemorySource, Outcome, Stats
from fastconsumer.engine import commits
from fastconsumer.engine.commits import Committer
from fastconsumer.sources.base import SourceListener

GROUP = "fastconsumer"
WAIT = 30.0


def run(consumer):
    return asyncio.run(consumer.run())


# -- handlers that raise anything


@pytest.mark.parametrize("suspended", [False, True], ids=["before-suspending", "after-suspending"])
@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_cancelled_error_from_a_handler_is_a_failure_for_the_policy(impl, suspended, concurrency):
    cancelled = asyncio.CancelledError("a future the handler awaited was cancelled elsewhere")
    failed = []

    async def handler(msg):
        if suspended:
            await asyncio.sleep(0)
        if msg.offset() == 3:
            raise cancelled

    async def skip(messages, error, attempts):
        failed.append((messages[0].offset(), error, attempts))
        return Outcome.SKIPPED

    log = MemoryLog(partitions=1, count=10, keys=0)
    consumer = Consumer(
        MemorySource(log),
        handler,
        concurrency=concurrency,
        retries=1,
        retry_backoff_ms=1,
        on_error=skip,
        exit_at_end=True,
    )
    summary = run(consumer)
    assert failed == [(3, cancelled, 2)]  # retried once, then the policy: like any failure
    assert (summary.handled, summary.failed, summary.retried, summary.skipped) == (9, 1, 1, 1)
    assert log.committed(GROUP) == {0: 10}


@pytest.mark.parametrize("where", ["commit", "fetch"])
def test_a_dead_commit_or_fetch_loop_ends_the_run_with_its_error(impl, where):
    class Broken(MemorySource):
        def commit(self, offsets):
            if where == "commit":
                raise RuntimeError("the commit loop broke")
            super().commit(offsets)

        async def fetch(self, max_messages, prefetch=0):
            if where == "fetch" and self._positions[0] > 0:
                raise RuntimeError("the fetch loop broke")
            return await super().fetch(max_messages, prefetch)

    async def handler(msg):
        await asyncio.sleep(0.001)

    consumer = Consumer(Broken(MemoryLog(partitions=1)), handler, commit_interval=0.01)
    with pytest.raises(RuntimeError, match=f"the {where} loop broke"):
        run(consumer)
    assert consumer.summary is not None and where in consumer.summary.error


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
@pytest.mark.parametrize("exit_exc", [SystemExit, KeyboardInterrupt])
def test_systemexit_from_a_handler_under_start_commits_closes_and_reaches_stop(impl, loop, exit_exc):
    log = MemoryLog(partitions=2, count=400, keys=0)
    source = MemorySource(log)
    raised = threading.Event()

    async def handler(msg):
        await asyncio.sleep(0)
        if (msg.partition(), msg.offset()) == (0, 50):
            raised.set()
            raise exit_exc("the handler wants out")

    consumer = Consumer(source, handler, concurrency=4)
    outcome = {}

    def start_and_stop():  # the run may end before start() returns: then start() raises it
        try:
            consumer.start(loop)
            assert raised.wait(WAIT)
            outcome["summary"] = consumer.stop()
        except BaseException as exc:  # noqa: BLE001 - what start() or stop() raises is what the test looks at
            outcome["raised"] = exc

    stopper = threading.Thread(target=start_and_stop)
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "stop() hung"
    assert isinstance(outcome.get("raised"), exit_exc)
    assert not consumer.running
    assert source.assignment() == set()  # the source was closed
    assert log.committed(GROUP)[0] == 50  # what completed is committed, nothing at or past the message


def test_stop_from_a_thread_that_reuses_the_ended_loop_threads_id(impl):
    async def handler(msg):
        pass

    consumer = Consumer(MemorySource(MemoryLog(count=10)), handler, exit_at_end=True)
    consumer.start()
    consumer.join(WAIT)
    consumer._loop_thread = threading.get_ident()  # the OS gave this thread the ended thread's id
    assert consumer.stop().handled == 10


# -- a revoke stops retries and cancels what still runs at its deadline


class RevocableSource(MemorySource):
    """A memory source that can lose a partition the way a Kafka member does: it stops fetching it, asks
    the engine's listener to let it go, and commits what the engine returns."""

    def __init__(self, log):
        super().__init__(log)
        self.revoked: set[int] = set()
        self.engine: SourceListener | None = None

    async def open(self, listener):
        self.engine = listener
        await super().open(listener)

    async def fetch(self, max_messages, prefetch=0):
        for p in self.revoked:
            self._positions[p] = self.log.end_offset(p)
        return await super().fetch(max_messages, prefetch)

    async def revoke(self, partition):
        self.revoked.add(partition)
        offsets = await self.engine.on_revoke([TopicPartition(self.log.topic, partition)])
        if offsets:
            await self.commit_sync(offsets)
        return offsets


@pytest.mark.parametrize("stuck", ["retrying", "running"])
def test_after_a_revoke_returns_nothing_of_the_partition_runs_here(impl, stuck):
    log = MemoryLog(partitions=2, count=1200, keys=0)
    source = RevocableSource(log)
    calls = []  # (partition, offset, time)
    policy_calls = []
    reached = asyncio.Event()
    cancelled = []

    async def handler(msg):
        calls.append((msg.partition(), msg.offset(), time.monotonic()))
        if (msg.partition(), msg.offset()) == (0, 5):
            reached.set()
            if stuck == "retrying":
                raise RuntimeError("poison")
            try:
                await asyncio.Event().wait()  # never finishes on its own
            except asyncio.CancelledError:
                cancelled.append(msg.offset())
                raise
        await asyncio.sleep(0.001)

    async def policy(messages, error, attempts):
        policy_calls.append(messages[0].offset())
        return Outcome.SKIPPED

    async def main():
        consumer = Consumer(
            source,
            handler,
            concurrency=2,
            retries=50,
            retry_backoff_ms=20,
            retry_backoff_max_ms=20,
            shutdown_timeout=0.3,
            on_error=policy,
            exit_at_end=True,
        )
        task = asyncio.ensure_future(consumer.run())
        await asyncio.wait_for(reached.wait(), WAIT)
        offsets = await source.revoke(0)
        returned = time.monotonic()
        summary = await asyncio.wait_for(task, WAIT)  # partition 1 goes on to its end, ~0.6 s more
        return offsets, returned, summary

    offsets, returned, summary = asyncio.run(main())
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, 5)]  # left for the next owner
    assert [c for c in calls if c[0] == 0 and c[2] > returned] == []  # no call of partition 0 after
    assert policy_calls == []  # nor a policy action
    if stuck == "running":
        assert cancelled == [5]  # cancelled at the revoke's deadline
    assert log.committed(GROUP) == {0: 5, 1: 600}
    assert summary.error is None


def test_a_revoke_handles_what_lanes_held_back_below_the_highest_handled_offset(impl):
    """Key 0 is slow and key 2 fast in partition 0 (they alternate): at the revoke key 2 is far ahead. The
    revoke handles key 0's messages below key 2's last handled one before it commits, so the commit covers
    every message handled here and the next owner gets none of them again."""
    log = MemoryLog(partitions=2, count=2000, keys=4)  # partition 0: key-0 (even offsets), key-2 (odd)
    source = RevocableSource(log)
    handled = []  # (partition, offset, time)
    enough = asyncio.Event()

    async def handler(msg):
        await asyncio.sleep(0.005 if msg.key() == b"key-0" else 0.0005)
        handled.append((msg.partition(), msg.offset(), time.monotonic()))
        if sum(1 for p, _, _ in handled if p == 0) == 200:
            enough.set()

    async def main():
        consumer = Consumer(source, handler, concurrency=4, shutdown_timeout=10, exit_at_end=True)
        task = asyncio.ensure_future(consumer.run())
        await asyncio.wait_for(enough.wait(), WAIT)
        offsets = await source.revoke(0)
        returned = time.monotonic()
        await asyncio.wait_for(task, WAIT)
        return offsets, returned

    offsets, returned = asyncio.run(main())
    done = {o for p, o, t in handled if p == 0 and t <= returned}
    assert [(tp.partition, tp.offset) for tp in offsets] == [(0, max(done) + 1)]
    assert done == set(range(max(done) + 1))  # every message below the commit handled, none left over
    assert max(done) > 300  # key 2 was well ahead: there was a gap to fill
    assert [o for p, o, t in handled if p == 0 and t > returned] == []


# -- commits


@dataclass
class TP:
    """A commit result as librdkafka gives it, with a per-partition error where that one failed."""

    topic: str
    partition: int
    offset: int
    error: KafkaError | None = None


class RecordingSource(MemorySource):
    def __init__(self):
        super().__init__(MemoryLog(topic="t", partitions=2))
        self.sent: list[list[tuple[int, int]]] = []

    def commit(self, offsets):
        self.sent.append([(tp.partition, tp.offset) for tp in offsets])


def committer_owning(partitions, impl):
    tracker = impl.OffsetTracker()
    for p in partitions:
        tracker.track("t", p, 0)
    stats = Stats()
    return Committer(RecordingSource(), tracker, stats, 1.0), stats


def test_a_failed_commit_is_not_sent_again_once_a_newer_one_succeeded(impl):
    committer, stats = committer_owning([0], impl)
    committer.on_commit([TP("t", 0, 10)], KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT)))
    committer.on_commit([TP("t", 0, 20)], None)
    committer.commit()
    assert committer.source.sent == []  # 10 would move the group back from 20
    assert stats.committed == {("t", 0): 20} and stats.commit_failures == 1


def test_a_failed_commit_is_not_sent_again_once_a_newer_one_was_sent(impl):
    """Commit 10 fails (a rebalance fenced it) while 20 is already on its way. Sending 10 again would land
    after 20 and take the group's offset back, with nothing to move it on once the partition is idle: the
    soak found a group left at the failed offsets while the member's stats said it had committed the end."""
    committer, stats = committer_owning([0], impl)
    tracker = committer.tracker
    for offset in range(1, 25):
        tracker.track("t", 0, offset)
    for offset in range(10):
        tracker.ack("t", 0, offset)
    committer.commit()
    for offset in range(10, 20):
        tracker.ack("t", 0, offset)
    committer.commit()
    committer.on_commit([TP("t", 0, 10)], KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION)))
    committer.commit()
    committer.on_commit([TP("t", 0, 20)], None)
    committer.commit()
    assert committer.source.sent == [[(0, 10)], [(0, 20)]]
    assert stats.committed == {("t", 0): 20}


def test_a_late_result_never_moves_the_committed_offset_back(impl):
    committer, stats = committer_owning([0], impl)
    committer.on_commit([TP("t", 0, 20)], None)
    committer.on_commit([TP("t", 0, 10)], None)  # an older asynchronous result, after the final commit
    assert stats.committed == {("t", 0): 20}


def test_a_partition_that_failed_inside_a_successful_commit_is_sent_again(impl):
    committer, stats = committer_owning([0, 1], impl)
    failed = KafkaError(KafkaError.NOT_COORDINATOR)
    committer.on_commit([TP("t", 0, 10), TP("t", 1, 7, failed)], None)
    assert stats.committed == {("t", 0): 10} and stats.commit_failures == 1
    committer.commit()
    assert committer.source.sent == [[(1, 7)]]


def test_resends_of_a_revoked_partition_are_dropped(impl):
    committer, stats = committer_owning([0], impl)
    committer.on_commit([TP("t", 0, 10)], KafkaException(KafkaError(KafkaError.REQUEST_TIMED_OUT)))
    committer.tracker.drop("t", 0)
    committer.forget([("t", 0)])
    committer.commit()
    assert committer.source.sent == []


def test_a_partition_lost_while_the_final_commit_retries_is_left_out_of_the_retry(impl):
    """The group takes a commit of any of its partitions from any member: a stopping member that lost a
    partition (its session ran out during a broker restart) and committed it on its next try would take
    the new owner's committed offset back, and its messages would be handled again."""
    committer, stats = committer_owning([0, 1], impl)
    synced = []

    async def commit_sync(offsets):
        synced.append([(tp.partition, tp.offset) for tp in offsets])
        if len(synced) == 1:  # the coordinator fenced this member; the partition is lost before the retry
            committer.tracker.drop("t", 0)
            committer.reset([("t", 0)])
            raise KafkaException(KafkaError(KafkaError.ILLEGAL_GENERATION))
        return offsets

    committer.source.commit_sync = commit_sync
    asyncio.run(committer.commit_sync())
    assert synced == [[(0, 0), (1, 0)], [(1, 0)]]
    assert stats.committed == {("t", 1): 0}


def test_a_final_commit_nobody_answers_gives_up_in_time(impl, monkeypatch):
    """librdkafka's synchronous commit waits for the coordinator without a bound: on a broker that stopped
    answering, a stop waited for good. The final commit, its tries included, ends in FINAL_COMMIT_S."""
    monkeypatch.setattr(commits, "FINAL_COMMIT_S", 0.2)
    committer, stats = committer_owning([0], impl)

    async def commit_sync(offsets):
        await asyncio.Event().wait()  # never answered

    committer.source.commit_sync = commit_sync

    async def final():
        await asyncio.wait_for(committer.commit_sync(), 10)  # the test's own bound: a hang fails it

    with pytest.raises(TimeoutError, match="not answered within 0.2 s"):
        asyncio.run(final())
    assert stats.commit_failures == 1 and stats.committed == {}


# -- memory


def test_a_stuck_message_stops_fetching_at_the_window(impl):
    log = MemoryLog(partitions=1, count=100_000, keys=1000)
    release = asyncio.Event()

    async def handler(msg):
        if msg.offset() == 0:
            await release.wait()

    async def main():
        consumer = Consumer(
            MemorySource(log), handler, batch_size=50, max_buffered=200, max_window=1000, exit_at_end=True
        )
        task = asyncio.ensure_future(consumer.run())
        while consumer.stats.consumed < 900:
            await asyncio.sleep(0.001)
        for _ in range(200):  # the fetch loop had every chance to go on
            await asyncio.sleep(0)
        held = consumer.stats.consumed
        release.set()
        summary = await asyncio.wait_for(task, WAIT)
        return held, summary

    held, summary = asyncio.run(main())
    assert 900 <= held <= 1000  # every other message handled long ago, yet fetching waits for the head
    assert summary.handled == 100_000 and log.committed(GROUP) == {0: 100_000}


# -- offsets that go back


def test_a_partition_whose_offsets_go_back_is_tracked_anew(impl, caplog):
    class Resetting(MemorySource):
        reset = False

        async def fetch(self, max_messages, prefetch=0):
            if not self.reset and self._positions[0] >= 100:
                self.reset = True
                self._positions[0] = 40  # as after an offset reset
            return await super().fetch(max_messages, prefetch)

    log = MemoryLog(partitions=2, count=400, keys=0)
    handled = []

    async def handler(msg):
        handled.append((msg.partition(), msg.offset()))

    with caplog.at_level(logging.WARNING, logger="fastconsumer"):
        summary = run(Consumer(Resetting(log), handler, batch_size=20, exit_at_end=True))
    assert summary.error is None
    assert {(0, o) for o in range(200)} | {(1, o) for o in range(200)} <= set(handled)
    assert log.committed(GROUP) == {0: 200, 1: 200}
    assert any("foo[0]: offset 40 after" in r.getMessage() for r in caplog.records)


# -- a stop asked for before the run began


def test_a_stop_asked_for_before_the_run_began_is_kept(impl):
    async def handler(msg):
        pass

    consumer = Consumer(MemorySource(MemoryLog(partitions=2)), handler)  # endless
    consumer.request_stop()  # a SIGTERM while the process was still starting

    summary = asyncio.run(asyncio.wait_for(consumer.run(), WAIT))
    assert summary.error is None and summary.consumed == 0
