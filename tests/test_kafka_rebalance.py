"""Rebalance under load, against a real Apache Kafka broker (started by the test session).

A second member B joins the group of member A while messages flow and later leaves again: every message is
handled at least once, the group's offsets end at the end of the topic, and a partition's handlers never run
on both members at once: a revoke lets the running handlers of its partitions finish before they move.

A's handlers hold some messages (awaiting: A's loop goes on) so that the scenario does not depend on timing:

- one message of each partition, a tenth into it, until B has joined: B starts only once A has a call
  running in every partition, so the revoke that B's joining causes has calls to wait for. A revoke lets the
  held call go, but it runs on for another second: the revoke must wait for it. With ``load="flowing"`` the
  other keys flow past the held messages meanwhile (B then handles them again: at-least-once); with
  ``load="at-cap"`` every call of A holds until B joined, so A is at its cap, its source paused, when the
  rebalance comes;
- the last message of each partition until A has B's partitions back, so that A's ``exit_at_end`` ends A
  only once the whole topic is its own again.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from fastconsumer import Consumer
from fastconsumer.produce import produce
from fastconsumer.sources import KafkaSource, SourceListener
from tests.kafka_helpers import committed_offsets, end_offsets

FIRST = 20_000  # produced before the members start
MORE = 4_000  # produced while both members run
KEYS = 200
CONCURRENCY = 16
B_BEFORE_LEAVING = 300  # B leaves once it has handled this many messages of each of two partitions
WAIT = 20.0  # seconds for any one wait of the test; each test takes ~5 s
HOLD = 45.0  # seconds a held call waits before it fails (after the test's own waits timed out)
LINGER = 1.0  # seconds a held call goes on running after a revoke let it go
SHUTDOWN = 5.0  # the members' shutdown_timeout: bounds a revoke, and the clean-up after a failure
# Small batches, and fetches of a few of them per partition: the members' queues interleave the partitions,
# so A works on all of them at once (a producer batch of a whole partition would come in one piece).
PRODUCE_CONFIG = {"batch.size": 8192, "linger.ms": 5}
# Rebalances start when a member's heartbeat learns of them: 3 s apart by default.
CONFIG = {"heartbeat.interval.ms": 250, "session.timeout.ms": 6000, "max.partition.fetch.bytes": 16384}


@dataclass(frozen=True)
class Handled:
    member: str
    partition: int
    offset: int
    key: bytes
    start: float
    end: float


@dataclass(frozen=True)
class Revoke:
    partitions: frozenset[int]
    start: float
    end: float
    room: int  # room left in the engine's buffer when the revoke came: < batch_size means at its cap


class Member(KafkaSource):
    """A Kafka source that notes its revokes (when each began, when the engine gave the partitions back) and
    tells ``on_revoking`` first: it hands the engine's own listener a wrapper, as any source may."""

    def __init__(self, *args, on_revoking: Callable[[set[int]], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.revokes: list[Revoke] = []
        self.on_revoking = on_revoking
        self.consumer: Consumer | None = None

    async def open(self, listener: SourceListener) -> None:
        await super().open(Noting(self, listener))


class Noting(SourceListener):
    def __init__(self, member: Member, listener: SourceListener) -> None:
        self.member = member
        self.listener = listener

    def on_commit(self, offsets, error):
        self.listener.on_commit(offsets, error)

    def on_lost(self, partitions):
        self.listener.on_lost(partitions)

    def on_assign(self, committed):
        self.listener.on_assign(committed)

    async def on_revoke(self, partitions):
        start = time.monotonic()
        consumer = self.member.consumer
        assert consumer is not None
        room = consumer.stats.lookahead - consumer.buffered - consumer.stats.in_flight
        if self.member.on_revoking is not None:
            self.member.on_revoking({tp.partition for tp in partitions})
        offsets = await self.listener.on_revoke(partitions)
        self.member.revokes.append(
            Revoke(frozenset(tp.partition for tp in partitions), start, time.monotonic(), room)
        )
        return offsets


class Holds:
    """Where A's calls wait, on A's event loop: until a condition holds or their partition is revoked."""

    def __init__(self) -> None:
        self.holding: set[int] = set()  # partitions whose held message was reached before B joined
        self.waiting = 0  # calls holding now
        self.joined = False  # B joined the group: A had a revoke
        self.back = False  # B left and A handles B's partitions again
        self.revoked: collections.Counter[int] = collections.Counter()  # revokes per partition
        self._changed: asyncio.Event | None = None

    def revoking(self, partitions: set[int]) -> None:
        self.joined = True
        self.revoked.update(partitions)
        self.changed()

    def changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def until(self, ready: Callable[[], bool], partition: int, what: str) -> None:
        revokes = self.revoked[partition]
        deadline = time.monotonic() + HOLD
        self.waiting += 1
        try:
            while not ready() and self.revoked[partition] == revokes:
                if self._changed is None:
                    self._changed = asyncio.Event()
                try:
                    await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    raise AssertionError(f"member A held a message {what} for {HOLD:g} s") from None
        finally:
            self.waiting -= 1
        if self.revoked[partition] != revokes:
            # Let go by a revoke: it runs on well into the revoke, which must wait for it, or the partition's
            # next owner would start on it meanwhile.
            await asyncio.sleep(LINGER)


def overlaps(calls: list[Handled]) -> list[tuple[Handled, Handled]]:
    """Pairs of calls (of one partition) on different members that ran at the same time."""
    found = []
    latest: dict[str, Handled] = {}  # per member, its call that ended last among those started so far
    for h in sorted(calls, key=lambda h: h.start):
        for member, other in latest.items():
            if member != h.member and other.end > h.start:
                found.append((other, h))
        if h.member not in latest or h.end > latest[h.member].end:
            latest[h.member] = h
    return found


def out_of_order(calls: list[Handled]) -> list[tuple[Handled, Handled]]:
    """Consecutive calls of one key (in start order) not one at a time, or not in increasing offsets."""
    by_key = collections.defaultdict(list)
    for h in sorted(calls, key=lambda h: h.start):
        by_key[h.key].append(h)
    return [
        (x, y)
        for key_calls in by_key.values()
        for x, y in itertools.pairwise(key_calls)
        if not (x.offset < y.offset and x.end <= y.start)
    ]


def episodes(calls: list[Handled], revokes: list[Revoke], partition: int) -> list[list[Handled]]:
    """One member's calls of ``partition`` split at its revokes of it: a list per time it owned it."""
    ends = sorted(r.end for r in revokes if partition in r.partitions)
    out: list[list[Handled]] = [[] for _ in range(len(ends) + 1)]
    for h in sorted(calls, key=lambda h: h.start):
        out[sum(1 for end in ends if end <= h.start)].append(h)
    return [e for e in out if e]


@pytest.mark.parametrize("load", ["flowing", "at-cap"])
@pytest.mark.parametrize("strategy", ["cooperative-sticky", "range", "consumer-protocol"])
def test_a_member_joins_and_leaves_under_load(kafka_bootstrap, kafka_topic, strategy, load, caplog):
    caplog.set_level(logging.INFO, logger="fastconsumer")
    bootstrap, topic = kafka_bootstrap, kafka_topic
    group = f"rebalance-{topic}"
    produce(bootstrap, topic, FIRST, keys=KEYS, config=PRODUCE_CONFIG)
    first_ends = end_offsets(bootstrap, topic)
    assert sum(first_ends.values()) == FIRST and all(first_ends.values())
    held = {p: end // 10 for p, end in first_ends.items()}  # the offsets A holds until B joined
    last = {p: end - 1 for p, end in first_ends.items()}  # and those it holds until it is alone again
    at_cap = load == "at-cap"

    lock = threading.Lock()
    handled: list[Handled] = []
    counts = collections.Counter()  # per member, and per (member, partition)
    a_holding, b_some, b_left = threading.Event(), threading.Event(), threading.Event()
    b_partitions: set[int] = set()  # what B handled: set before b_left
    a_back: set[int] = set()  # B's partitions A handled since B left
    holds = Holds()

    def note(member: str, msg, start: float) -> list[int]:
        """Record a call; return how many calls of each partition the member has had."""
        h = Handled(member, msg.partition(), msg.offset(), msg.key(), start, time.monotonic())
        with lock:
            handled.append(h)
            counts[member] += 1
            counts[member, h.partition] += 1
            return [counts[member, p] for p in first_ends]

    async def handler_a(msg):
        start = time.monotonic()
        p, o = msg.partition(), msg.offset()
        if not holds.joined and (o == held[p] or (at_cap and len(holds.holding) == len(held))):
            if o == held[p]:
                holds.holding.add(p)
            if len(holds.holding) == len(held) and (not at_cap or holds.waiting + 1 == CONCURRENCY):
                a_holding.set()
            await holds.until(lambda: holds.joined, p, f"until B joined ({p}:{o})")
        if not holds.back and b_left.is_set() and p in b_partitions:
            a_back.add(p)
            if a_back >= b_partitions:
                holds.back = True
                holds.changed()
        if o == last[p] and not holds.back:
            await holds.until(lambda: holds.back, p, f"until B's partitions came back ({p}:{o})")
        await asyncio.sleep(0.001)
        note("A", msg, start)

    async def handler_b(msg):
        start = time.monotonic()
        await asyncio.sleep(0.001)
        if sorted(note("B", msg, start))[-2] >= B_BEFORE_LEAVING:
            b_some.set()

    def member(handler, on_revoking=None, **kwargs):
        if strategy == "consumer-protocol":  # KIP-848: the broker assigns; the classic timings are refused
            config = {"group.protocol": "consumer", "max.partition.fetch.bytes": 16384}
        else:
            config = {**CONFIG, "partition.assignment.strategy": strategy}
        source = Member(
            bootstrap, [topic], group, config=config, from_beginning=True, on_revoking=on_revoking
        )
        consumer = source.consumer = Consumer(
            source, handler, concurrency=CONCURRENCY, ordering="key", shutdown_timeout=SHUTDOWN, **kwargs
        )
        return consumer

    a = member(handler_a, exit_at_end=True, on_revoking=holds.revoking)
    b = member(handler_b)
    started = []
    t0 = time.monotonic()
    try:
        started.append(a)
        a.start()
        assert a_holding.wait(WAIT), f"A holds {holds.waiting} calls, in {holds.holding}: {counts}"
        started.append(b)
        b.start()
        produce(bootstrap, topic, MORE, keys=KEYS, start=FIRST, config=PRODUCE_CONFIG)  # while both run
        assert b_some.wait(WAIT), (
            f"B handled too few in {WAIT:g} s: {counts}; A's revokes: {a.source.revokes}"
        )
        b_summary = b.stop()
        with lock:
            b_partitions.update(h.partition for h in handled if h.member == "B")
        left_at = time.monotonic()
        b_left.set()
        a_summary = a.join(timeout=WAIT)
        if a_summary is None:
            with lock:
                since = collections.Counter(h.partition for h in handled if h.start > left_at)
            raise AssertionError(
                f"A still running {WAIT:g} s after B left: it handled {dict(since)} (per partition) since; "
                f"B had handled partitions {sorted(b_partitions)}; A's revokes: {a.source.revokes}"
            )
    finally:
        for c in reversed(started):  # after a failure: end both runs, so no thread outlives the test
            c.request_stop(abandon=True)
            c.join(timeout=WAIT)
    elapsed = time.monotonic() - t0

    ends = end_offsets(bootstrap, topic)
    assert sum(ends.values()) == FIRST + MORE
    assert a_summary.error is None and b_summary.error is None
    assert b_summary.handled >= 2 * B_BEFORE_LEAVING
    assert a.source.revokes and b.source.revokes
    if at_cap:
        assert a.source.revokes[0].room < a.settings.batch_size, (
            f"A was not at its cap when B joined: {a.source.revokes[0]}"
        )
    lost = [r.getMessage() for r in caplog.records if r.getMessage().startswith("lost ")]
    assert not lost, lost  # a member that lost partitions would void the guarantees below

    # every message handled at least once, and the group's offsets at the end of the topic
    seen = {(h.partition, h.offset) for h in handled}
    missing = {(p, o) for p, end in ends.items() for o in range(end)} - seen
    assert not missing, f"{len(missing)} messages never handled, e.g. {sorted(missing)[:10]}"
    assert len(seen) == FIRST + MORE
    assert committed_offsets(bootstrap, group, topic) == ends

    calls = collections.defaultdict(list)
    for h in handled:
        calls[h.member, h.partition].append(h)
    for r in b.source.revokes:
        for p in r.partitions:
            # from A's revoke of a partition until B's: A starts no call of it (e.g. of a stray message of it
            # handed to A after the revoke)
            gave_up = [x.end for x in a.source.revokes if p in x.partitions and x.end < r.end]
            assert gave_up, (
                f"B had partition {p} that A never gave up: {a.source.revokes}, {b.source.revokes}"
            )
            stray = [h for h in calls["A", p] if max(gave_up) < h.start < r.end]
            assert not stray, f"A handled {len(stray)} messages of {p} while B owned it, e.g. {stray[:3]}"
    members = {"A": a, "B": b}
    for p in ends:
        # never on both members at once
        both = overlaps(calls["A", p] + calls["B", p])
        assert not both, f"partition {p}: {len(both)} calls overlapping the other member's, e.g. {both[:3]}"
        for name, m in members.items():
            for r in m.source.revokes:
                if p in r.partitions:
                    # a revoke waits for the running calls, and starts none but those filling the gaps below
                    # the highest offset started before it (so that its commit covers all that was handled)
                    before = [h.offset for h in calls[name, p] if h.start < r.start]
                    top = max(before, default=-1)
                    late = [
                        h
                        for h in calls[name, p]
                        if h.start < r.end < h.end or (r.start < h.start < r.end and h.offset > top)
                    ]
                    assert not late, f"{name} partition {p}: calls across its revoke {r}: {late[:3]}"
            # while a member owns a partition: each key's messages once each, one at a time, in offset order
            for episode in episodes(calls[name, p], m.source.revokes, p):
                wrong = out_of_order(episode)
                assert not wrong, f"{name} partition {p}: {len(wrong)} calls out of key order: {wrong[:3]}"

    twice = len(handled) - len(seen)
    # a graceful rebalance fills its gaps before it commits: nothing handled here is handled again there
    assert twice == 0, f"{twice} messages handled twice"
    by_whom = collections.Counter()
    members_of = collections.defaultdict(str)
    for h in handled:
        members_of[h.partition, h.offset] += h.member
    for who in members_of.values():
        if len(who) > 1:
            by_whom["".join(sorted(who))] += 1
    print(
        f"\n[{strategy}, {load}] {elapsed:.1f} s: A handled {counts['A']}, B {counts['B']} (partitions "
        f"{sorted(b_partitions)}); {twice} handled twice {dict(by_whom)}; revokes of A "
        f"{[sorted(r.partitions) for r in a.source.revokes]} "
        f"(room at the first: {a.source.revokes[0].room}), of B "
        f"{[sorted(r.partitions) for r in b.source.revokes]}; "
        f"rebalance callbacks A {a.source.stats.rebalances}, "
        f"B {b.source.stats.rebalances}"
    )
