"""``--processes``: a CPU-bound handler (about 200 µs of SHA-256 per message, never awaiting) with one
consumer process and with two, on a real Kafka broker; the second row's ratio is the speed-up.

Each row reads a topic of its own from the start with a new group (``--exit-at-end``), as
``python -m fastconsumer --processes N``. msgs/s: handled / the time from the first message handled by any
process to the last (the handler notes both); incl. join: handled / the longest process's elapsed time, which
counts its start and group join (in the quick mode, most of it). The work per message is a fixed number of
hash rounds, calibrated once in this process, so a slower core does less per second, not less per message.

On a machine that also runs the broker, two processes compete with it for the cores: each row says how much
CPU the broker took during the run (``broker_cores``: CPU seconds / wall seconds, found by the port it listens
on) and the consumer processes (``consumer_cores``), of the machine's ``cores``.
"""

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from bench.conftest import QUICK, record_row
from tests.ops_handlers import hash_rounds

REPO = Path(__file__).resolve().parents[1]
MESSAGES = 4_000 if QUICK else 40_000
PARTITIONS = 4
WORK_S = 200e-6  # CPU per message
ROWS: dict[int, dict] = {}


def calibrate() -> int:
    """Hash rounds that take WORK_S of CPU on this machine (CPU time: other load does not skew it)."""
    n = 5_000
    best = min(_cpu_time(n) for _ in range(5))
    return max(1, round(n * WORK_S / best))


def _cpu_time(n: int) -> float:
    start = time.process_time()
    hash_rounds(n)
    return time.process_time() - start


@pytest.fixture(scope="module")
def cpu_topic(kafka_bootstrap):
    from fastconsumer.produce import produce
    from tests.kafka_helpers import create_topic, delete_topic

    name = f"cpu-{uuid.uuid4().hex[:12]}"
    create_topic(kafka_bootstrap, name, partitions=PARTITIONS)
    produce(kafka_bootstrap, name, MESSAGES, size=100, keys=1_000)
    yield name
    delete_topic(kafka_bootstrap, name)


def broker_process(bootstrap: str) -> psutil.Process | None:
    """The process listening on the bootstrap's port, when it runs on this machine."""
    port = int(bootstrap.rsplit(":", 1)[1].split(",")[0])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return psutil.Process(conn.pid)
    return None


def _cpu_s(proc: psutil.Process | None) -> float | None:
    if proc is None:
        return None
    times = proc.cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.fixture(scope="module")
def rounds():
    return calibrate()


@pytest.mark.parametrize("processes", [1, 2])
def test_cpu_bound_handler_scales_with_processes(
    benchmark, kafka_bootstrap, cpu_topic, rounds, processes, tmp_path
):
    argv = [
        sys.executable,
        "-m",
        "fastconsumer",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        cpu_topic,
        "--group",
        f"cpu-{processes}-{uuid.uuid4().hex[:8]}",
        "--from-beginning",
        "--exit-at-end",
        "--processes",
        str(processes),
        "--handler",
        "tests.ops_handlers:cpu_bound",
        "--ordering",
        "unordered",
        "-X",
        "heartbeat.interval.ms=250",
        "--json",
    ]
    spans = tmp_path / "spans"
    env = {**os.environ, "FASTCONSUMER_BENCH_HASH_ROUNDS": str(rounds), "FASTCONSUMER_BENCH_SPAN": str(spans)}
    results = []
    broker = broker_process(kafka_bootstrap)
    cpu = {}

    def run() -> None:
        cpu["broker"], cpu["consumers"], cpu["wall"] = _cpu_s(broker), _children_cpu_s(), time.monotonic()
        proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        wall = time.monotonic() - cpu["wall"]
        broker_s = _cpu_s(broker)
        cpu["broker_cores"] = None if broker_s is None else round((broker_s - cpu["broker"]) / wall, 2)
        cpu["consumer_cores"] = round((_children_cpu_s() - cpu["consumers"]) / wall, 2)
        assert proc.returncode == 0, proc.stderr
        results.append(json.loads(proc.stdout))

    benchmark.pedantic(run, rounds=1, iterations=1)
    summary = results[0]
    assert summary["handled"] >= MESSAGES and summary["failed"] == 0
    noted = [[float(x) for x in line.split()] for line in spans.read_text().splitlines()]
    assert len(noted) == processes  # every process handled some
    handling_s = max(last for _, last, _ in noted) - min(first for first, _, _ in noted)
    row = {
        "key": f"processes_{processes}",
        "msgs_per_s": summary["handled"] / handling_s,
        "msgs_per_s_incl_join": summary["handled"] / summary["elapsed_s"],
        "messages": MESSAGES,
        "elapsed_s": summary["elapsed_s"],
    }
    ROWS[processes] = row
    label = f"CPU-bound handler (~200 µs of hashing per message), --processes {processes}"
    basis = ROWS.get(1) if processes > 1 else None
    shares = {
        "broker_cores": cpu["broker_cores"],
        "consumer_cores": cpu["consumer_cores"],
        "cores": os.cpu_count(),
    }
    extra = record_row(benchmark, row["key"], label, row, basis, hash_rounds=rounds, quick=QUICK, **shares)
    print(
        f"\n--processes {processes}: the broker took {shares['broker_cores']} cores, the consumer processes "
        f"{shares['consumer_cores']}, of {shares['cores']}"
    )
    if basis is not None:
        speedup = row["msgs_per_s"] / basis["msgs_per_s"]
        speedup_incl = row["msgs_per_s_incl_join"] / basis["msgs_per_s_incl_join"]
        extra.update(speedup=round(speedup, 2), speedup_incl_join=round(speedup_incl, 2))
        benchmark.extra_info.update(speedup=extra["speedup"], speedup_incl_join=extra["speedup_incl_join"])
        print(
            f"\n--processes {processes}: {row['msgs_per_s']:,.0f} msgs/s, {speedup:.2f}x --processes 1 "
            f"(incl. start and group join: {speedup_incl:.2f}x)"
        )
