"""Operating it without Kafka: the config file, JSON logs, metrics and probes on the memory source, a stalled
partition flipping /readyz, and the --processes merge."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from fastconsumer import Consumer, MemoryLog, MemorySource, metrics
from fastconsumer.cli import logs, supervisor
from fastconsumer.cli.settings import parse

ROOT = Path(__file__).resolve().parent.parent
WAIT = 30.0  # seconds any one wait of these tests may take before it fails


def start(*args, env=None):
    return subprocess.Popen(
        [sys.executable, "-m", "fastconsumer", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


# -- shared with tests/test_kafka_operations.py


def metrics_url(proc) -> str:
    """Read the process's stderr up to the line that says where its metrics are."""
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "/metrics, probes on" in line:
            return line.split(" on ", 1)[1].split("/metrics", 1)[0]
    raise AssertionError("the run ended before it served metrics:\n" + "".join(lines))


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(base: str) -> dict:
    """``{(sample name, frozenset of labels): value}`` from ``/metrics``."""
    status, text = get(base + "/metrics")
    assert status == 200, text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset((k, str(v)) for k, v in labels.items()))]


def per_partition(samples: dict, name: str) -> dict:
    return {
        (dict(labels)["topic"], int(dict(labels)["partition"])): v
        for (n, labels), v in samples.items()
        if n == name
    }


def wait_until(check, what: str):
    """Poll ``check()`` until it returns something truthy (returned); fail after WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)  # polling interval of an HTTP endpoint, not a wait for an event


# -- the config file


def write(tmp_path, text: str) -> str:
    path = tmp_path / "fastconsumer.toml"
    path.write_text(text)
    return str(path)


def test_config_file_precedence_flag_over_file_over_environment(tmp_path):
    path = write(
        tmp_path,
        'concurrency = 8\nbatch-size = 100\ntopic = ["a", "b"]\nbootstrap_servers = "127.0.0.1:1"\n'
        'exit-at-end = true\n[kafka]\n"fetch.min.bytes" = 10\n"enable.partition.eof" = true\n',
    )
    env = {"FASTCONSUMER_CONCURRENCY": "4", "FASTCONSUMER_GROUP": "from-env", "FASTCONSUMER_BATCH_SIZE": "7"}
    _, args = parse(["--config", path], env)
    assert args.concurrency == 8 and args.batch_size == 100  # the file over the environment
    assert args.group == "from-env"  # the environment where the file says nothing
    assert args.topic == ["a", "b"] and args.bootstrap_servers == "127.0.0.1:1" and args.exit_at_end
    assert dict(args.config) == {"fetch.min.bytes": "10", "enable.partition.eof": "true"}
    _, args = parse(["--config", path, "--concurrency", "2", "--topic", "c", "-X", "fetch.min.bytes=20"], env)
    assert args.concurrency == 2  # the flag over the file
    assert args.topic == ["c"]  # replaced, not added to
    assert dict(args.config) == {"fetch.min.bytes": "20", "enable.partition.eof": "true"}  # per property
    _, args = parse(["--topic", "c"], {"FASTCONSUMER_TOPIC": "a,b"})
    assert args.topic == ["c"]


def test_config_file_runs_the_consumer(tmp_path):
    path = write(tmp_path, "partitions = 4\njson = true\nmax-messages = 50\nlatency_ms = 0\n")
    proc = start("--config", path, env={"FASTCONSUMER_PARTITIONS": "5"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(json.loads(out)["committed"]) == 4


@pytest.mark.parametrize(
    "text, message",
    [
        ("concurency = 8\n", "unknown key 'concurency'"),
        ("concurrency = '8'\n", "'concurrency' must be a number, got a string"),
        ("concurrency = 0\n", "'concurrency': must be >= 1"),
        ("concurrency = 1.5\n", "'concurrency': '1.5' is not an integer"),
        ("json = 1\n", "'json' must be true or false"),
        ("ordering = 'fifo'\n", "'ordering' must be one of key, partition, unordered"),
        ("topic = [1]\n", "'topic' must be a string or a list of strings"),
        ("kafka = 3\n", "[kafka] must be a table"),
        ("[kafka]\nx = [1]\n", "[kafka] 'x' must be a string, number or boolean"),
        ("concurrency = \n", "is not valid TOML"),
        ("config = 'x.toml'\n", "unknown key 'config'"),
    ],
)
def test_bad_config_file_exits_2_with_one_line_naming_file_and_key(tmp_path, text, message):
    path = write(tmp_path, text)
    proc = start("--config", path)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert message in err and path in err


def test_missing_config_file_exits_2():
    proc = start("--config", "/nonexistent/fastconsumer.toml")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and len(err.strip().splitlines()) == 1
    assert "cannot read config file /nonexistent/fastconsumer.toml" in err


def test_processes_needs_bootstrap_servers_from_the_file_too(tmp_path):
    proc = start("--config", write(tmp_path, "processes = 2\n"))
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and "--processes needs --bootstrap-servers" in err


# -- logs


def test_json_log_lines_name_the_message(tmp_path):
    proc = start(
        "--handler",
        "tests.cli_handlers:poison",
        "--partitions",
        "1",
        "--retries",
        "1",
        "--retry-backoff-ms",
        "1",
        "--on-error",
        "skip",
        "--count",
        "300",
        "--exit-at-end",
        "--log-format",
        "json",
        "--json",
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    lines = json_log_lines(err, ("foo", 0, 100))
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert json.loads(out)["skipped"] == 1


def json_log_lines(err, poison):
    """Every stderr line parses as one JSON object; the two about the poison message (its retry and its
    skip) name it in fields as well as in words."""
    lines = [json.loads(line) for line in err.splitlines()]
    about = [line for line in lines if "failed (attempt" in line["message"] or "skipping" in line["message"]]
    assert len(about) == 2, lines
    for line in about:
        assert (line["topic"], line["partition"], line["offset"]) == poison
    return lines


def test_librdkafka_logger_is_formatted_like_the_others():
    import io

    stream = io.StringIO()
    before = logging.getLogger().handlers[:], logging.getLogger().level
    try:
        logs.configure(stream, "debug", "json", process=1)
        logging.getLogger("fastconsumer.librdkafka").warning("FAIL [thrd:x]: broker down")
        logging.getLogger("fastconsumer").warning("skipping %s[%d]@%d", "t-1", 3, 42)
    finally:
        root = logging.getLogger()
        root.handlers[:] = before[0]
        root.setLevel(before[1])
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["logger"] == "fastconsumer.librdkafka" and first["level"] == "warning"
    assert first["process"] == 1 and "topic" not in first
    assert (second["topic"], second["partition"], second["offset"]) == ("t-1", 3, 42)


# -- metrics and probes on the memory source


def test_library_serve_reports_the_counters_and_probes():
    consumer = Consumer(
        MemorySource(MemoryLog(partitions=2, count=2000)),
        _noop,
        exit_at_end=True,
        commit_interval=0.05,
    )
    server = metrics.serve(consumer, 0, "127.0.0.1", heartbeat=0.05)
    try:
        assert get(server.url + "/healthz")[0] == 200  # not started yet: alive
        assert get(server.url + "/readyz")[0] == 503  # ... but not ready
        summary = consumer.start() or consumer.join(timeout=WAIT)
        samples = scrape(server.url)
        assert value(samples, "fastconsumer_messages_handled_total") == summary.handled == 2000
        assert value(samples, "fastconsumer_messages_consumed_total") == 2000
        assert value(samples, "fastconsumer_handler_seconds_count") == 2000
        assert value(samples, "fastconsumer_handler_seconds_bucket", le="+Inf") == 2000
        status, body = get(server.url + "/healthz")
        assert status == 503 and json.loads(body)["finished"]  # the run is over
    finally:
        server.close()


async def _noop(msg):
    pass


def test_healthz_fails_while_the_event_loop_is_blocked():
    import threading

    release = threading.Event()

    async def blocks_the_loop(msg):
        if msg.partition() == 0 and msg.offset() == 10:
            release.wait(WAIT)  # a blocking call in an async handler: the whole loop stands still

    consumer = Consumer(MemorySource(MemoryLog(partitions=1, count=100)), blocks_the_loop, exit_at_end=True)
    server = metrics.serve(consumer, 0, "127.0.0.1", liveness_timeout=0.3, heartbeat=0.05)
    try:
        consumer.start()

        def unhealthy():
            status, body = get(server.url + "/healthz")
            return status == 503 and json.loads(body)

        body = wait_until(unhealthy, "/healthz to fail while the loop is blocked")
        assert body["alive"] is False and body["loop_age_s"] > 0.3 and not body["finished"]
        assert value(scrape(server.url), "fastconsumer_event_loop_age_seconds") > 0.3
        release.set()
        wait_until(
            lambda: get(server.url + "/healthz")[0] == 200 or consumer.summary, "the loop to turn again"
        )
        assert consumer.join(timeout=WAIT).handled == 100
    finally:
        release.set()
        server.close()


def test_stuck_handler_shows_in_the_stall_gauge_and_flips_readyz(tmp_path):
    trigger = tmp_path / "stick"
    proc = start(
        "--handler",
        "tests.ops_handlers:stuck_when_told",
        "--partitions",
        "2",
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--stall-timeout",
        "1",
        "--commit-interval",
        "0.1",
        "--shutdown-timeout",
        "0.5",
        "--json",
        env={"FASTCONSUMER_TEST_TRIGGER": str(trigger)},
    )
    try:
        base = metrics_url(proc)
        wait_until(lambda: get(base + "/readyz")[0] == 200, "/readyz to say ready")
        samples = scrape(base)
        assert value(samples, "fastconsumer_ready") == 1
        trigger.touch()  # the next message of partition 0 gets stuck

        def stalled():
            status, body = get(base + "/readyz")
            return status == 503 and "foo[0]" in json.loads(body)["stalled"] and json.loads(body)

        body = wait_until(stalled, "/readyz to report foo[0] stalled")
        assert body["alive"] and body["running"] and body["partitions"] == 2
        samples = scrape(base)
        assert value(samples, "fastconsumer_commit_stalled_seconds", topic="foo", partition=0) > 1.0
        assert value(samples, "fastconsumer_ready") == 0
        assert get(base + "/healthz")[0] == 200  # stuck in a handler, but the loop turns: alive
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert json.loads(out)["abandoned"] == 1


# -- --processes: the merge


def test_merge_sums_counters_and_keeps_the_last_owners_offsets():
    a = {"source": "kafka", "core": "cython", "consumed": 10, "handled": 9, "failed": 1, "elapsed_s": 2.0}
    a["committed"] = [
        {"topic": "t", "partition": 0, "offset": 5},
        {"topic": "t", "partition": 1, "offset": 3},
    ]
    b = {"source": "kafka", "core": "cython", "consumed": 7, "handled": 7, "failed": 0, "elapsed_s": 4.0}
    b["committed"] = [
        {"topic": "t", "partition": 0, "offset": 8},
        {"topic": "t", "partition": 2, "offset": 1},
    ]
    b["error"] = "boom"
    merged = supervisor.merge([a, b], 2)
    assert merged["consumed"] == 17 and merged["handled"] == 16 and merged["failed"] == 1
    assert merged["committed"] == [
        {"topic": "t", "partition": 0, "offset": 8},
        {"topic": "t", "partition": 1, "offset": 3},
        {"topic": "t", "partition": 2, "offset": 1},
    ]
    assert merged["elapsed_s"] == 4.0 and merged["rate"] == 4.0
    assert merged["error"] == "boom" and merged["processes"] == 2


class FakeChild:
    """A child that ends when the test says so, or when it is signalled (and then says so itself)."""

    def __init__(self, group, index, config_error=None):
        self.group, self.index, self.config_error = group, index, config_error
        self.returncode = None
        self.signals = []

    def end(self, code):
        self.returncode = code
        self.group.ended.put(self.index)

    def signal(self, signum):
        self.signals.append(signum)
        if self.returncode is None:
            self.end(0)


def test_processes_leave_a_refused_configuration_to_each_child_and_stop_them_after_a_grace(monkeypatch):
    # A configuration error is the same in every child: they refuse it by themselves, unsignalled (a
    # signal would add their "stopping" lines to the one error). One that does not is stopped later.
    monkeypatch.setattr(supervisor, "CONFIG_ERROR_GRACE_S", 0.2)
    group = supervisor.Group(3)
    group.children = [FakeChild(group, i, "bad -X") for i in range(3)]
    group.children[1].end(2)
    group.children[0].end(2)
    group.children[2].end(2)
    group.wait()
    assert [c.signals for c in group.children] == [[], [], []]

    group = supervisor.Group(2)
    group.children = [FakeChild(group, 0, "bad -X"), FakeChild(group, 1)]
    group.children[0].end(2)
    group.wait()  # returns: the one that did not follow was stopped after the grace
    assert group.children[1].signals == [signal.SIGTERM]

    group = supervisor.Group(2)  # any other failure stops the others at once
    group.children = [FakeChild(group, 0), FakeChild(group, 1)]
    group.children[0].end(1)
    group.wait()
    assert group.children[1].signals == [signal.SIGTERM]
