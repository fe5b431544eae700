"""The look-ahead sweep: does a 1 ms handler at concurrency 64 get what the data allows?

Orderings {key, partition, unordered} x distinct keys {1, 8, 97, 1,000, 100,000} x partitions {1, 4, 16},
and two skewed topics (one key carrying half the messages; one partition carrying 90%). Each row reads a
topic of its own, sized to take about ``SECONDS`` at its ideal, from the start with a new group, in a fresh
process; its ideal (bench/sweep.py) is measured in the same run. ``ratio`` is msgs/s over the ideal, the
target 0.90 for every row; ``vmhwm_kb`` the process's peak RSS.

The picture: ``pytest bench/test_sweep.py --benchmark-only --benchmark-json=sweep.json`` then
``python bench/report.py sweep.json --sweep-png docs/sweep.png``. The quick mode (CI) runs a few rows only.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from bench import runners, sweep
from bench.conftest import QUICK, record_row

SECONDS = 0.5 if QUICK else 3.0
IO_SECONDS = 0.5 if QUICK else 2.0
MIN_MESSAGES = 500 if QUICK else 2_000
PER_COROUTINE = 900  # msgs/s one coroutine on sleep(1 ms) reaches here, to size the topics beforehand
QUICK_ROWS = {
    ("key", "k97-p4"),
    ("partition", "k97-p4"),
    ("unordered", "k97-p4"),
    ("key", "k97-p4-hotkey0.5"),
}
REPO = str(Path(__file__).resolve().parents[1])
IO: dict[int, float] = {}


def io(n: int) -> float:
    """``n`` coroutines on sleep(1 ms), completions/s: measured once per run, in a fresh process."""
    if n not in IO:
        spec = {"what": "io", "n": n, "seconds": IO_SECONDS}
        IO[n] = runners.in_subprocess(spec, REPO)["msgs_per_s"]
    return IO[n]


def _estimate(ordering: str, shape: sweep.Shape) -> int:
    """Messages that take about SECONDS at the row's ideal, estimated before the topic exists."""
    if ordering == "key":
        width = min(sweep.CONCURRENCY, shape.keys)
    elif ordering == "partition":
        width = min(shape.partitions, shape.keys)
    else:
        width = sweep.CONCURRENCY
    rate = PER_COROUTINE * width
    if ordering != "unordered" and (shape.hot_key or shape.hot_partition):
        rate = min(rate, PER_COROUTINE / max(shape.hot_key, shape.hot_partition))
    return max(MIN_MESSAGES, round(rate * SECONDS))


ROWS = [
    pytest.param(ordering, shape, id=f"{ordering}-{shape.slug}")
    for shape in sweep.SHAPES
    for ordering in sweep.ORDERINGS
    if not QUICK or (ordering, shape.slug) in QUICK_ROWS
]


@pytest.mark.parametrize(("ordering", "shape"), ROWS)
def test_sweep(benchmark, kafka_bootstrap, ordering, shape):
    from tests.kafka_helpers import create_topic, delete_topic, end_offsets

    topic = f"sweep-{shape.slug}-{uuid.uuid4().hex[:8]}"
    total = _estimate(ordering, shape)
    create_topic(kafka_bootstrap, topic, partitions=shape.partitions)
    try:
        counts = sweep.fill(kafka_bootstrap, topic, shape, total)
        ends = end_offsets(kafka_bootstrap, topic)
        n_lanes, busiest = sweep.lanes(ordering, counts, ends)
        width = min(sweep.CONCURRENCY, n_lanes)
        ideal = sweep.ideal({1: io(1), width: io(width)}, sweep.CONCURRENCY, n_lanes, busiest, total)
        spec = {
            "what": "fastconsumer",
            "bootstrap": kafka_bootstrap,
            "topic": topic,
            "total": total,
            "handler": "io_1ms",
            "options": {"concurrency": sweep.CONCURRENCY, "ordering": ordering},
        }
        results = []
        benchmark.pedantic(lambda: results.append(runners.in_subprocess(spec, REPO)), rounds=1, iterations=1)
    finally:
        delete_topic(kafka_bootstrap, topic)
    row = results[0]
    label = f"sweep: {ordering} ordering, {shape.name}"
    basis = {"key": f"ideal_{ordering}_{shape.slug}", "msgs_per_s": ideal}
    record_row(
        benchmark,
        f"sweep_{ordering}_{shape.slug}",
        label,
        row,
        basis,
        sweep={
            "ordering": ordering,
            "keys": shape.keys,
            "partitions": shape.partitions,
            "shape": shape.name,
            "skewed": bool(shape.hot_key or shape.hot_partition),
            "lanes": n_lanes,
            "busiest_lane": busiest,
            "ideal": round(ideal),
        },
        quick=QUICK,
    )
