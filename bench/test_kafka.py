"""fastconsumer on a real Kafka broker, against the ceilings measured in the same session, and its peers.

Every row reads the whole session topic (bench/conftest.py ``bench_topic``) with a new consumer group and
stops at its end; each measurement runs in a fresh Python process (bench/runners.py says why) and is timed
inside it, so process start is not counted and group join is. ``extra_info`` holds msgs/s from the first
message to the last (``msgs_per_s``) and from making the client (``msgs_per_s_incl_join``), and the ratios
to the row's ceiling; bench/report.py turns them into a table. The ceilings come first in this file, so
they are measured before the rows compared with them. The framework peers (sentry-arroyo, Pyrallel-Consumer:
bench/peers.py) are the exception: too slow for the session topic, they read a smaller one of their own.
"""

import os
import statistics
import uuid
from pathlib import Path

import pytest

from bench import peers, runners
from bench.conftest import BASELINES, KEYS, MESSAGE_SIZE, PARTITIONS, QUICK, BenchTopic, baseline, record_row

#: ``FASTCONSUMER_BENCH_ROUNDS=3`` runs each throughput row 3 times and keeps its best round (default 1).
ROUNDS = int(os.environ.get("FASTCONSUMER_BENCH_ROUNDS") or 1)
IO_SECONDS = 1.0 if QUICK else 3.0  # how long the I/O ceilings count completions
FIRST_MESSAGE_REPEATS = 3  # the time to the first message is the median of this many runs of each
RSS_PASSES = 10  # the memory probe reads the topic this many times: 1M then 10M messages (quick: 50k, 500k)
REPO = str(Path(__file__).resolve().parents[1])
#: The framework peers (sentry-arroyo, Pyrallel-Consumer) read a topic of their own this size (10,000 messages
#: in quick mode), each stopping at its end or ``PEER_BUDGET`` seconds after its first message: they run at a
#: few % of the ceiling, and the whole 1M topic would take them minutes.
PEER_MESSAGES = int(os.environ.get("FASTCONSUMER_BENCH_PEER_MESSAGES") or (10_000 if QUICK else 50_000))
PEER_BUDGET = 20.0 if QUICK else 60.0


def measure(spec: dict, topic=None) -> dict:
    if topic is not None:
        spec = {"bootstrap": topic.bootstrap, "topic": topic.name, "total": topic.messages, **spec}
    return runners.in_subprocess(spec, REPO)


def run_row(benchmark, spec: dict, topic=None, rounds: int = 1) -> dict:
    """One measurement, ``rounds`` times (default once: each reads the whole topic); of several, the round
    with the best msgs/s, with every round's msgs/s in ``rounds_msgs_per_s``."""
    results = []
    benchmark.pedantic(lambda: results.append(measure(spec, topic)), rounds=rounds, iterations=1)
    if len(results) == 1:
        return results[0]
    best = max(results, key=lambda r: r.get("msgs_per_s") or 0)
    return {**best, "rounds_msgs_per_s": [round(r.get("msgs_per_s") or 0) for r in results]}


def _ceiling(topic) -> dict:
    spec = {"what": "bare", "config": runners.FAST_BACKOFF}
    return baseline("ceiling", lambda: {"key": "ceiling", **measure(spec, topic)})


def _io_ceiling(n: int) -> dict:
    spec = {"what": "io", "n": n, "seconds": IO_SECONDS}
    return baseline(f"io_{n}", lambda: {"key": f"io_{n}", **measure(spec)})


# -- the ceiling


def test_ceiling(benchmark, bench_topic):
    """A bare ``confluent_kafka.Consumer.consume(10000)`` loop touching each value(), with fastconsumer's
    fetch.queue.backoff.ms=10: the most a Python consumer of this client gets out of this broker."""
    row = run_row(benchmark, {"what": "bare", "config": runners.FAST_BACKOFF}, bench_topic, rounds=ROUNDS)
    label = "ceiling: bare consume(10000), touching value()"
    extra = record_row(benchmark, "ceiling", label, row, ratio=1.0, ratio_incl_join=1.0, **bench_topic.info())
    BASELINES["ceiling"] = extra


def test_ceiling_default_backoff(benchmark, bench_topic):
    """The same loop with librdkafka's default fetch.queue.backoff.ms (1000 ms)."""
    ceiling = _ceiling(bench_topic)
    row = run_row(benchmark, {"what": "bare", "config": {}}, bench_topic, rounds=ROUNDS)
    label = "ceiling with librdkafka's default fetch.queue.backoff.ms"
    record_row(benchmark, "ceiling_default_backoff", label, row, ceiling, **bench_topic.info())


# -- fastconsumer, no-op handlers


@pytest.mark.parametrize("ordering", ["key", "partition", "unordered"])
def test_fastconsumer_noop(benchmark, bench_topic, ordering):
    ceiling = _ceiling(bench_topic)
    spec = {"what": "fastconsumer", "handler": "noop", "options": {"concurrency": 64, "ordering": ordering}}
    row = run_row(benchmark, spec, bench_topic, rounds=ROUNDS)
    label = f"fastconsumer, no-op handler, concurrency 64, ordering {ordering}"
    record_row(benchmark, f"fc_{ordering}", label, row, ceiling, **bench_topic.info())


def test_fastconsumer_noop_cli(benchmark, bench_topic):
    """Key ordering as ``python -m fastconsumer`` runs it: the CLI owns its process and tunes the collector
    (the rows above are the library's, collector untouched)."""
    ceiling = _ceiling(bench_topic)
    spec = {"what": "fastconsumer", "handler": "noop", "options": {"concurrency": 64}, "gc": "cli"}
    row = run_row(benchmark, spec, bench_topic, rounds=ROUNDS)
    label = "fastconsumer, no-op handler, concurrency 64, ordering key, collector tuned as the CLI does"
    record_row(benchmark, "fc_key_cli", label, row, ceiling, **bench_topic.info())


def test_fastconsumer_batch_noop(benchmark, bench_topic):
    ceiling = _ceiling(bench_topic)
    row = run_row(benchmark, {"what": "fastconsumer", "handler": "noop_batch"}, bench_topic, rounds=ROUNDS)
    label = "fastconsumer, batch no-op handler (batch_size 500)"
    record_row(benchmark, "fc_batch", label, row, ceiling, **bench_topic.info())


# -- peers


def test_peer_handwritten_asyncio(benchmark, bench_topic):
    """consume(500) in an executor, an asyncio.Queue, 64 workers awaiting a no-op, commit async every 1 s."""
    ceiling = _ceiling(bench_topic)
    row = run_row(benchmark, {"what": "handwritten", "concurrency": 64}, bench_topic, rounds=ROUNDS)
    label = "peer: hand-written asyncio (executor consume(500), Queue, 64 workers)"
    record_row(benchmark, "peer_handwritten", label, row, ceiling, **bench_topic.info())


def test_peer_aiokafka_getmany(benchmark, bench_topic):
    pytest.importorskip("aiokafka")
    ceiling = _ceiling(bench_topic)
    row = run_row(benchmark, {"what": "aiokafka"}, bench_topic, rounds=ROUNDS)
    label = f"peer: aiokafka {row['version']} getmany(), no processing"
    record_row(benchmark, "peer_aiokafka", label, row, ceiling, **bench_topic.info())


def test_peer_aioconsumer(benchmark, bench_topic):
    pytest.importorskip("confluent_kafka.aio")
    ceiling = _ceiling(bench_topic)
    row = run_row(benchmark, {"what": "aioconsumer"}, bench_topic, rounds=ROUNDS)
    label = "peer: confluent_kafka.aio.AIOConsumer.consume(10000), no processing"
    record_row(benchmark, "peer_aioconsumer", label, row, ceiling, **bench_topic.info())


# -- framework peers: sentry-arroyo and Pyrallel-Consumer (bench/peers.py), on a smaller topic of their own


@pytest.fixture(scope="module")
def peer_topic(kafka_bootstrap):
    """A new topic of ``PEER_MESSAGES`` messages, shaped as the session topic (100 bytes, 4 partitions,
    10,000 keys), read once (unrecorded) to warm the broker; deleted after this module."""
    from fastconsumer.produce import produce
    from tests.kafka_helpers import delete_topic, end_offsets

    name = f"bench-peers-{uuid.uuid4().hex[:12]}"
    produce(kafka_bootstrap, name, PEER_MESSAGES, size=MESSAGE_SIZE, keys=KEYS, partitions=PARTITIONS)
    assert sum(end_offsets(kafka_bootstrap, name).values()) == PEER_MESSAGES
    runners.bare_consume(kafka_bootstrap, name, PEER_MESSAGES, runners.FAST_BACKOFF)
    yield BenchTopic(kafka_bootstrap, name, PEER_MESSAGES)
    delete_topic(kafka_bootstrap, name)


_PYRALLEL: list = []  # peers.pyrallel_python(), looked for once


def _pyrallel_python() -> str:
    """The Python >= 3.12 that runs the Pyrallel rows; the row is skipped, saying why, without one."""
    if not _PYRALLEL:
        _PYRALLEL.append(peers.pyrallel_python())
    python, why = _PYRALLEL[0]
    if python is None:
        pytest.skip(why)
    return python


def run_peer_row(benchmark, spec: dict, topic, python: str | None = None) -> dict:
    """``run_row`` for a framework peer: one read of ``peer_topic`` (up to ``PEER_BUDGET`` seconds after its
    first message), in ``python -m bench.runners`` or, for another interpreter, ``python -m bench.peers``.
    The rate with the join is left out: over a topic this small the join weighs far more than in the
    ceiling's read, so its ratio would mislead (``join_s`` stays)."""
    spec = {
        "bootstrap": topic.bootstrap,
        "topic": topic.name,
        "total": topic.messages,
        "budget": PEER_BUDGET,
        **spec,
    }
    results = []

    def once():
        if python is None:
            results.append(runners.in_subprocess(spec, REPO))
        else:
            results.append(peers.in_subprocess(spec, REPO, python))

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1)
    best = max(results, key=lambda r: r.get("msgs_per_s") or 0)
    if len(results) > 1:
        best = {**best, "rounds_msgs_per_s": [round(r.get("msgs_per_s") or 0) for r in results]}
    best.pop("msgs_per_s_incl_join", None)
    return best


def record_peer(benchmark, key, label, row, basis, bench_topic, keeps_key_order: bool) -> None:
    """``record_row`` with what a peer row adds: whether it keeps per-key order, the size of the topic it
    read, its time budget and its basis's msgs/s (so a table made from the JSON of a ``-k`` run, where the
    ceilings are measured but not recorded, still says what the ratio is of)."""
    info = {
        **bench_topic.info(),
        "peer_topic_messages": PEER_MESSAGES,
        "budget_s": PEER_BUDGET,
        "basis_msgs_per_s": round(basis["msgs_per_s"]) if basis.get("msgs_per_s") else None,
    }
    record_row(benchmark, key, label, {**row, "keeps_key_order": keeps_key_order}, basis, **info)


def test_peer_arroyo_noop(benchmark, bench_topic, peer_topic):
    """sentry-arroyo: KafkaConsumer + StreamProcessor, RunTask(no-op) -> CommitOffsets."""
    pytest.importorskip("arroyo")
    ceiling = _ceiling(bench_topic)
    row = run_peer_row(benchmark, {"what": "arroyo", "handler": "noop"}, peer_topic)
    label = f"peer: sentry-arroyo {row['version']} RunTask(no-op) -> CommitOffsets (serial: keeps key order)"
    record_peer(benchmark, "peer_arroyo", label, row, ceiling, bench_topic, keeps_key_order=True)


@pytest.mark.parametrize("ordering", ["key_hash", "unordered"])
def test_peer_pyrallel_noop(benchmark, bench_topic, peer_topic, ordering):
    """Pyrallel-Consumer, asyncio engine, no-op worker, its default max_in_flight (1000: at 64 it pauses
    and resumes the consumer all the time and runs ~10x slower)."""
    python = _pyrallel_python()
    ceiling = _ceiling(bench_topic)
    spec = {"what": "pyrallel", "handler": "noop", "ordering": ordering}
    row = run_peer_row(benchmark, spec, peer_topic, python)
    keeps = ordering == "key_hash"
    order = "keeps key order" if keeps else "no key order"
    label = f"peer: Pyrallel-Consumer {row['version']}, no-op, {ordering} ({order}), max_in_flight 1000"
    record_peer(
        benchmark, f"peer_pyrallel_{ordering}", label, row, ceiling, bench_topic, keeps_key_order=keeps
    )


# -- 1 ms of I/O per message, against the event loop's own ceiling


@pytest.mark.parametrize("n", [64, 1024])
def test_io_ceiling(benchmark, n):
    """``n`` coroutines looping on ``await asyncio.sleep(0.001)`` on uvloop, no Kafka: completions/s."""
    row = run_row(benchmark, {"what": "io", "n": n, "seconds": IO_SECONDS}, rounds=ROUNDS)
    label = f"I/O ceiling: {n} coroutines on sleep(1 ms), no Kafka"
    BASELINES[f"io_{n}"] = record_row(benchmark, f"io_{n}", label, row)


@pytest.mark.parametrize("concurrency", [64, 1024])
def test_fastconsumer_io_1ms(benchmark, bench_topic, concurrency):
    io = _io_ceiling(concurrency)
    spec = {"what": "fastconsumer", "handler": "io_1ms", "options": {"concurrency": concurrency}}
    row = run_row(benchmark, spec, bench_topic, rounds=ROUNDS)
    label = f"fastconsumer, 1 ms handler, concurrency {concurrency}"
    record_row(benchmark, f"fc_io_{concurrency}", label, row, io, **bench_topic.info())


def test_fastconsumer_io_1ms_1024_cli(benchmark, bench_topic):
    """Concurrency 1024 as ``python -m fastconsumer`` runs it (collector tuned): 1,024 suspended calls keep
    thousands of young objects alive, and the default threshold collects them every few hundred messages."""
    io = _io_ceiling(1024)
    spec = {"what": "fastconsumer", "handler": "io_1ms", "options": {"concurrency": 1024}, "gc": "cli"}
    row = run_row(benchmark, spec, bench_topic, rounds=ROUNDS)
    label = "fastconsumer, 1 ms handler, concurrency 1024, collector tuned as the CLI does"
    record_row(benchmark, "fc_io_1024_cli", label, row, io, **bench_topic.info())


# -- the framework peers with 1 ms of I/O per message, against the same I/O ceiling


def test_peer_arroyo_io_1ms(benchmark, bench_topic, peer_topic):
    """sentry-arroyo: RunTaskInThreads(time.sleep(0.001), 64 threads) -> CommitOffsets, against the I/O
    ceiling of 64 coroutines."""
    pytest.importorskip("arroyo")
    io = _io_ceiling(64)
    row = run_peer_row(benchmark, {"what": "arroyo", "handler": "io_1ms", "concurrency": 64}, peer_topic)
    label = (
        f"peer: sentry-arroyo {row['version']} RunTaskInThreads(1 ms sleep, 64 threads) -> CommitOffsets "
        "(no key order)"
    )
    record_peer(benchmark, "peer_arroyo_io_64", label, row, io, bench_topic, keeps_key_order=False)


def test_peer_pyrallel_io_1ms(benchmark, bench_topic, peer_topic):
    """Pyrallel-Consumer, 1 ms async worker, max_in_flight 64, ordering key_hash: as fast as unordered
    here (partition: a third of it), and it keeps key order."""
    python = _pyrallel_python()
    io = _io_ceiling(64)
    spec = {"what": "pyrallel", "handler": "io_1ms", "ordering": "key_hash", "concurrency": 64}
    row = run_peer_row(benchmark, spec, peer_topic, python)
    version = row["version"]
    label = f"peer: Pyrallel-Consumer {version}, 1 ms handler, max_in_flight 64, key_hash (keeps key order)"
    record_peer(benchmark, "peer_pyrallel_io_64", label, row, io, bench_topic, keeps_key_order=True)


# -- start-up and memory


def test_first_message(benchmark, bench_topic):
    """From making the consumer to its first message on a new group: fastconsumer against a bare consumer,
    the median of a few runs of each, taken in turns."""
    runs = run_row(benchmark, {"what": "first", "repeats": FIRST_MESSAGE_REPEATS}, bench_topic)
    ours, bare = statistics.median(runs["fastconsumer_runs"]), statistics.median(runs["bare_runs"])
    record_row(
        benchmark,
        "first_message",
        "time to first message, new group",
        {},
        fastconsumer_s=round(ours, 4),
        bare_s=round(bare, 4),
        overhead_s=round(ours - bare, 4),
        fastconsumer_runs=[round(x, 4) for x in runs["fastconsumer_runs"]],
        bare_runs=[round(x, 4) for x in runs["bare_runs"]],
        **bench_topic.info(),
    )


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc/self/status (Linux)")
def test_rss_flat(benchmark, bench_topic):
    """Peak RSS of a process that reads the topic ``RSS_PASSES`` times with fastconsumer (a new Consumer and
    group each time): after the first read and after the last, e.g. 1M and 10M messages."""
    passes = run_row(benchmark, {"what": "rss", "passes": RSS_PASSES}, bench_topic)["passes"]
    first, last = passes[1], passes[-1]
    assert last["messages"] == RSS_PASSES * bench_topic.messages
    record_row(
        benchmark,
        "rss",
        f"peak RSS, fastconsumer no-op, {RSS_PASSES} reads of the topic",
        {},
        rss_first=first,
        rss_last=last,
        rss_passes=passes,
        growth=round(last["vmhwm_kb"] / first["vmhwm_kb"], 4),
        **bench_topic.info(),
    )
