"""Share groups against a consumer group on a ONE-partition topic: a 1 ms handler with 1, 2 and 4 members
(a consumer group gives the partition to one member, the others idle; a share group spreads its records over
all of them), and a no-op handler with one member each.

Members run in this process, one ``Consumer`` each (its own event loop thread), ``concurrency`` 16 each and
``ordering="unordered"`` for both kinds, so the handler slots of one member are the consumer group's cap.
msgs/s: handled / the time from the first message handled by any member to the last (joins excluded);
incl. join: from the start of the members. ``CI=true`` makes it quick.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

import pytest

from bench.conftest import QUICK
from fastconsumer import Consumer, KafkaShareSource, KafkaSource

MESSAGES = 3_000 if QUICK else 30_000
CONCURRENCY = 16
ROWS: list[dict] = []


@pytest.fixture(scope="module")
def one_partition(kafka_bootstrap):
    from fastconsumer.produce import produce
    from tests.kafka_helpers import create_topic, delete_topic

    name = f"share-bench-{uuid.uuid4().hex[:12]}"
    create_topic(kafka_bootstrap, name, partitions=1)
    # small producer batches: a share group hands out whole record batches (batch-optimized acquisition)
    produce(kafka_bootstrap, name, MESSAGES, size=100, keys=1_000, config={"batch.num.messages": 50})
    yield name
    delete_topic(kafka_bootstrap, name)


def run_members(bootstrap: str, topic: str, share: bool, members: int, latency: float) -> dict:
    group = f"bench-{'share' if share else 'group'}-{uuid.uuid4().hex[:8]}"
    lock = threading.Lock()
    first: list[float] = []
    last = [0.0]
    handled = [0] * members
    done = threading.Event()

    def handler_of(i: int):
        async def handle(msg):
            if latency:
                await asyncio.sleep(latency)
            now = time.monotonic()
            with lock:
                if not first:
                    first.append(now)
                last[0] = now
                handled[i] += 1
                if sum(handled) >= MESSAGES:
                    done.set()

        return handle

    def source():
        if share:
            return KafkaShareSource(bootstrap, [topic], group, from_beginning=True)
        return KafkaSource(bootstrap, [topic], group, from_beginning=True)

    consumers = [
        Consumer(source(), handler_of(i), concurrency=CONCURRENCY, ordering="unordered")
        for i in range(members)
    ]
    start = time.monotonic()
    for consumer in consumers:
        consumer.start()
    try:
        assert done.wait(300), f"handled {sum(handled)} of {MESSAGES}"
    finally:
        for consumer in consumers:
            consumer.stop()
    total = sum(handled)
    return {
        "msgs_per_s": total / max(1e-9, last[0] - first[0]),
        "msgs_per_s_incl_join": total / (last[0] - start),
        "busy": sum(1 for n in handled if n),
        "handled": total,
    }


@pytest.mark.parametrize(
    "share, members, latency",
    [
        (False, 1, 0.001),
        (True, 1, 0.001),
        (False, 2, 0.001),
        (True, 2, 0.001),
        (False, 4, 0.001),
        (True, 4, 0.001),
        (False, 1, 0.0),
        (True, 1, 0.0),
    ],
    ids=lambda v: str(v),
)
def test_share_group_against_consumer_group(
    benchmark, kafka_bootstrap, one_partition, share, members, latency, capsys
):
    results: list[dict] = []
    benchmark.pedantic(
        lambda: results.append(run_members(kafka_bootstrap, one_partition, share, members, latency)),
        rounds=1,
        iterations=1,
    )
    row = results[0]
    kind = "share group" if share else "consumer group"
    handler = "1 ms handler" if latency else "no-op handler"
    row["label"] = f"{kind}, {members} member(s), {handler}"
    ROWS.append(row)
    with capsys.disabled():
        print(
            f"\n{row['label']}: {row['msgs_per_s']:,.0f} msgs/s ({row['msgs_per_s_incl_join']:,.0f} incl. "
            f"join), {row['busy']} member(s) busy"
        )
    benchmark.extra_info.update(
        bench="share", share=share, members=members, latency_ms=latency * 1000, quick=QUICK, **row
    )
    assert row["handled"] >= MESSAGES
