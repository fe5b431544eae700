"""Failures on the memory source, against both cores: retries, timeouts, policies, and a randomized run."""

import asyncio
import random

import pytest

from fastconsumer import Consumer, HandlerError, MemoryLog, MemorySource, Outcome

GROUP = "fastconsumer"


def test_retry_holds_its_key_while_other_keys_go_on(impl):
    events = []
    attempts = {}

    async def handler(msg):
        key = (msg.partition(), msg.offset())
        attempts[key] = attempts.get(key, 0) + 1
        events.append(("start", msg.key(), msg.offset(), attempts[key]))
        if msg.key() == b"key-0" and msg.offset() == 0 and attempts[key] <= 2:
            raise ConnectionError("downstream hiccup")
        await asyncio.sleep(0.001)
        events.append(("done", msg.key(), msg.offset(), attempts[key]))

    log = MemoryLog(partitions=1, count=40, keys=2)  # key-0 at even offsets, key-1 at odd ones
    summary = asyncio.run(
        Consumer(
            MemorySource(log), handler, concurrency=4, retries=3, retry_backoff_ms=20, max_messages=40
        ).run()
    )
    assert summary.handled == 40 and summary.failed == 0 and summary.retried == 2
    recovered = events.index(("done", b"key-0", 0, 3))
    key0_next = events.index(("start", b"key-0", 2, 1))
    assert key0_next > recovered  # the key waited for its retries
    key1_during = [e for e in events[:recovered] if e[0] == "done" and e[1] == b"key-1"]
    assert len(key1_during) >= 3  # the other key went on meanwhile
    assert log.committed(GROUP) == {0: 40}


def test_a_handler_that_times_out_is_a_failure_and_the_policy_decides(impl):
    async def handler(msg):
        if msg.offset() == 7:
            await asyncio.Event().wait()  # hangs

    log = MemoryLog(partitions=1, count=20, keys=0)
    summary = asyncio.run(
        Consumer(MemorySource(log), handler, handler_timeout=0.05, on_error="skip", exit_at_end=True).run()
    )
    assert summary.skipped == 1 and summary.handled == 19
    assert log.committed(GROUP) == {0: 20}


def test_a_timeout_under_stop_names_the_message(impl):
    async def handler(msg):
        if msg.offset() == 7:
            await asyncio.sleep(10)

    log = MemoryLog(partitions=1, count=20, keys=0)
    with pytest.raises(
        HandlerError, match=r"foo\[0\]@7: HandlerTimeout: handler did not finish within 0.05 s"
    ):
        asyncio.run(Consumer(MemorySource(log), handler, handler_timeout=0.05).run())
    assert log.committed(GROUP) == {0: 7}


def test_what_a_stop_abandons_is_delivered_again_next_time(impl):
    log = MemoryLog(partitions=1, count=10, keys=0)
    seen = []

    async def main():
        consumer = None

        async def stuck_once(msg):
            seen.append(msg.offset())
            if msg.offset() == 4 and seen.count(4) == 1:
                consumer.request_stop()
                await asyncio.Event().wait()

        consumer = Consumer(MemorySource(log), stuck_once, shutdown_timeout=0.05, ordering="unordered")
        first = await consumer.run()
        consumer = Consumer(MemorySource(log), stuck_once, exit_at_end=True)
        second = await consumer.run()
        return first, second

    first, second = asyncio.run(main())
    assert first.abandoned == 1 and log.committed(GROUP) == {0: 10}
    assert seen.count(4) == 2  # delivered again, and handled the second time
    assert sorted(set(seen)) == list(range(10))


class Behaviour:
    """Per message, drawn once: succeed, fail n times first, always fail, or hang once."""

    def __init__(self, rng, retries):
        self.rng = rng
        self.retries = retries
        self.plan = {}
        self.calls = {}
        self.handled = set()

    def draw(self, key):
        r = self.rng.random()
        if r < 0.80:
            return ("ok", 0)
        if r < 0.90:
            return ("flaky", self.rng.randint(1, self.retries + 1))  # may or may not outlast the retries
        if r < 0.95:
            return ("hang", 1)
        return ("poison", 0)

    async def __call__(self, msg):
        key = (msg.partition(), msg.offset())
        kind, n = self.plan.setdefault(key, self.draw(key))
        self.calls[key] = self.calls.get(key, 0) + 1
        await asyncio.sleep(self.rng.random() * 0.002)
        if kind == "poison" or (kind == "flaky" and self.calls[key] <= n):
            raise ValueError(f"bad {key}")
        if kind == "hang" and self.calls[key] <= n:
            await asyncio.sleep(5)
        self.handled.add(key)


class Recording:
    """A skip or dead-letter policy that records what it was given, so the test can account for every
    message."""

    def __init__(self, name):
        self.name = name
        self.letters = set()

    async def __call__(self, messages, error, attempts):
        self.letters.update((m.partition(), m.offset()) for m in messages)
        return Outcome.DEAD_LETTERED if self.name == "dlq" else Outcome.SKIPPED


@pytest.mark.parametrize("seed", range(6))
def test_randomized_failures_never_commit_past_an_unresolved_message(impl, seed):
    rng = random.Random(seed)
    retries = rng.randint(0, 2)
    ordering = rng.choice(["key", "partition", "unordered"])
    policy = rng.choice(["stop", "skip", "dlq"])
    behaviour = Behaviour(rng, retries)
    recording = Recording(policy)
    log = MemoryLog(partitions=3, count=600, keys=rng.choice([0, 6, 60]))
    consumer = Consumer(
        MemorySource(log),
        behaviour,
        concurrency=rng.choice([1, 8, 32]),
        ordering=ordering,
        retries=retries,
        retry_backoff_ms=1,
        retry_backoff_max_ms=4,
        handler_timeout=0.05,
        on_error="stop" if policy == "stop" else recording,
        exit_at_end=True,
    )
    try:
        summary = asyncio.run(consumer.run())
    except HandlerError:
        assert policy == "stop"
        summary = consumer.summary
    committed = log.committed(GROUP)
    assert not behaviour.handled & recording.letters  # a message ends one way only
    resolved = behaviour.handled | recording.letters
    for p in range(3):
        below = {(p, o) for o in range(committed.get(p, 0))}
        assert below <= resolved, f"partition {p} committed past a message that was not handled"
    if policy == "stop":
        poisoned = {k for k, (kind, _) in behaviour.plan.items() if k not in behaviour.handled}
        assert (summary.error is None) == (not poisoned)
        for p, o in poisoned:
            assert committed.get(p, 0) <= o  # nothing at or above an unhandled message
    else:
        assert committed == {p: log.end_offset(p) for p in range(3)}
        assert summary.handled == len(behaviour.handled)
        assert summary.handled + summary.skipped + summary.dead_lettered == 600
        assert len(recording.letters) == summary.skipped + summary.dead_lettered


def test_a_stop_during_a_retry_backoff_leaves_the_message_uncommitted(impl):
    log = MemoryLog(partitions=1, count=50, keys=0)

    async def main():
        consumer = None
        calls = []

        async def handler(msg):
            calls.append(msg.offset())
            if msg.offset() == 3:
                raise ConnectionError("down")
            if msg.offset() == 20:
                consumer.request_stop()  # arrives while offset 3 waits out its backoff

        consumer = Consumer(MemorySource(log), handler, ordering="unordered", retries=5, retry_backoff_ms=500)
        summary = await consumer.run()
        return summary, calls

    summary, calls = asyncio.run(main())
    assert calls.count(3) == 1  # the stop cut the backoff short: no retry, no failure recorded
    assert summary.failed == 0 and summary.error is None
    assert log.committed(GROUP) == {0: 3}


@pytest.mark.parametrize("outcome", [Outcome.SKIPPED, Outcome.DEAD_LETTERED])
def test_the_policys_outcome_is_what_the_summary_counts(impl, outcome):
    async def handler(msg):
        if msg.offset() == 3:
            raise RuntimeError("poison")

    async def policy(messages, error, attempts):
        return outcome

    log = MemoryLog(partitions=1, count=10, keys=0)
    summary = asyncio.run(Consumer(MemorySource(log), handler, on_error=policy, exit_at_end=True).run())
    assert (summary.skipped, summary.dead_lettered) == ((1, 0) if outcome is Outcome.SKIPPED else (0, 1))
    assert summary.failed == 1 and summary.handled == 9 and log.committed(GROUP) == {0: 10}


@pytest.mark.parametrize("returned", [True, None, Outcome.HANDLED])
def test_a_policy_that_returns_no_policy_outcome_stops_naming_itself(impl, returned):
    async def handler(msg):
        if msg.offset() == 3:
            raise RuntimeError("poison")

    async def lenient(messages, error, attempts):
        return returned

    log = MemoryLog(partitions=1, count=10, keys=0)
    with pytest.raises(HandlerError, match=r"foo\[0\]@3: TypeError: error policy .*lenient returned") as info:
        asyncio.run(Consumer(MemorySource(log), handler, on_error=lenient, exit_at_end=True).run())
    assert isinstance(info.value.__cause__, TypeError)
    assert log.committed(GROUP) == {0: 3}
