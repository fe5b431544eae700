"""``python -m fastconsumer`` in a subprocess, as a user runs it; and ``main()`` in this process where a test
must see what the ``--processes`` parent does not do (create a Kafka client, start children)."""

import io
import json
import logging
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fastconsumer.cli import main, supervisor

ROOT = Path(__file__).resolve().parent.parent
KAFKA_PARENT = ["--processes", "2", "--bootstrap-servers", "127.0.0.1:1", "--topic", "t"]


def start(*args, env=None, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "fastconsumer", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
        **kwargs,
    )


def wait_for_mark(proc):
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if line.strip() == "MARK":
            return
    raise AssertionError("the run ended before it was mid-stream:\n" + "".join(lines))


def check_committed_equals_handled(summary):
    # The memory log starts every partition at 0, so a commit that covers exactly the handled messages
    # has offsets adding up to the number handled: nothing handled is left uncommitted, nothing skipped.
    assert sum(c["offset"] for c in summary["committed"]) == summary["handled"]


def test_sigint_mid_run_stops_cleanly_and_commits_every_handled_message():
    proc = start("--handler", "tests.cli_handlers:marked", "--json", "--concurrency", "64", "--keys", "12")
    wait_for_mark(proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["source"] == "memory" and summary["failed"] == 0
    assert summary["handled"] >= 500
    assert summary["rate"] > 0 and summary["elapsed_s"] > 0
    check_committed_equals_handled(summary)
    assert "stopping gracefully" in err


def test_second_signal_abandons_stuck_handlers_and_commits_what_completed():
    proc = start("--handler", "tests.cli_handlers:stuck_after_mark", "--json", "--ordering", "unordered")
    wait_for_mark(proc)
    proc.send_signal(signal.SIGTERM)
    for line in proc.stderr:
        if "stopping gracefully" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["abandoned"] > 0
    check_committed_equals_handled(summary)


def test_max_messages_stops_by_itself_with_a_readable_summary():
    proc = start("--max-messages", "2000", "--latency-ms", "0")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.startswith("stopped after ")
    assert "handled" in out and "committed: foo[0]@" in out
    assert "consuming from the memory source (endless" in err, err


def test_handler_failure_exits_1_naming_the_message():
    proc = start("--handler", "tests.cli_handlers:poison", "--json", "--partitions", "1")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert "foo[0]@100" in err and "cannot parse this one" in err
    summary = json.loads(out)
    assert summary["committed"] == [{"topic": "foo", "partition": 0, "offset": 100}]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--concurrency", "0"], "--concurrency: must be >= 1"),
        (["--concurrency", "many"], "'many' is not an integer"),
        (["--handler", "nosuchmodule:handle"], "cannot import 'nosuchmodule'"),
        (["--handler", "tests.cli_handlers:missing"], "has no 'missing'"),
        (["--handler", "tests.cli_handlers"], "expected MODULE:FUNCTION"),
        (["--handler", "tests.cli_handlers:not_async"], "must be a coroutine function"),
        (["--ordering", "fifo"], "invalid choice: 'fifo'"),
        (["--commit-interval", "0"], "--commit-interval: must be > 0"),
        (["--keys", "-1"], "--keys must be >= 0"),
        (["--retries", "-1"], "--retries: must be >= 0"),
        (["--handler-timeout", "0"], "--handler-timeout: must be > 0"),
        (["--on-error", "dlq"], "--on-error dlq needs --dlq-topic"),
        (["--on-error", "dlq", "--dlq-topic", "x"], "--on-error dlq needs --bootstrap-servers"),
        (["--dlq-topic", "x"], "--dlq-topic needs --on-error dlq"),
        (["--retry-backoff-ms", "200", "--retry-backoff-max-ms", "100"], "must not exceed"),
        (["--exit-at-end"], "never ends: add --count N"),
        (["--topic", "t"], "need --bootstrap-servers"),
        (["--from-beginning"], "need --bootstrap-servers"),
        (["--bootstrap-servers", "127.0.0.1:1"], "needs at least one --topic"),
        (["--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "--count", "5"], "shape the memory source"),
        (["--processes", "2"], "--processes needs --bootstrap-servers"),
        (["--processes", "0"], "--processes: must be >= 1"),
        (["--metrics-port", "70000"], "--metrics-port: must be a port number"),
        (["--log-format", "xml"], "invalid choice: 'xml'"),
        (["--stall-timeout", "0"], "--stall-timeout: must be > 0"),
        ([*KAFKA_PARENT, "--handler", "tests.cli_handlers:not_async"], "must be a coroutine function"),
        ([*KAFKA_PARENT, "--concurrency", "0"], "--concurrency: must be >= 1"),
        (
            ["--bootstrap-servers", "127.0.0.1:1", "--topic", "t", "-X", "no.such.property=1"],
            "no.such.property",
        ),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, message):
    proc = start(*args)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == ""
    assert len(err.strip().splitlines()) == 1, err
    assert message in err


def test_processes_say_a_kafka_property_error_once():
    # Only librdkafka judges -X, so each child finds it as its source opens; the parent says it once.
    proc = start(*KAFKA_PARENT, "-X", "no.such.property=1", "--json")
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert out == ""  # no summary
    lines = [line for line in err.strip().splitlines() if "started 2 consumer processes" not in line]
    assert len(lines) == 1, err
    assert (
        lines[0].startswith("fastconsumer: error: invalid Kafka consumer property: ")
        and "no.such" in lines[0]
    )


@pytest.fixture
def parent(monkeypatch):
    """``main()`` in this process with every way to reach Kafka refused: librdkafka's clients,
    ``KafkaSource``, ``Consumer``; no child starts either: the supervisor only notes the arguments it got."""
    import confluent_kafka
    import confluent_kafka.admin

    from fastconsumer.engine import Consumer
    from fastconsumer.sources import KafkaSource

    def refuse(*args, **kwargs):
        raise AssertionError("the --processes parent made a Kafka client, a source or a consumer")

    clients = (confluent_kafka.Consumer, confluent_kafka.Producer, confluent_kafka.admin.AdminClient)
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith(("fastconsumer", "confluent_kafka")):
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, type) and issubclass(value, clients):
                monkeypatch.setattr(module, attr, refuse)
    monkeypatch.setattr(KafkaSource, "__init__", refuse)
    monkeypatch.setattr(Consumer, "__init__", refuse)
    started = []
    monkeypatch.setattr(supervisor, "run", lambda argv, args, out: started.append(args) or 0)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield started
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def run_parent(capsys, *args):
    out, err = io.StringIO(), io.StringIO()
    try:
        code = main([*KAFKA_PARENT, *args], out=out, err=err)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    return code, out.getvalue(), err.getvalue() + capsys.readouterr().err


def test_processes_parent_checks_the_flags_without_a_kafka_client(parent, capsys):
    code, out, err = run_parent(
        capsys,
        "--handler", "tests.cli_handlers:marked", "--concurrency", "8", "--retries", "2",
        "--on-error", "dlq", "--dlq-topic", "dead", "-X", "fetch.min.bytes=1",
        "--exit-at-end", "--from-beginning",
    )  # fmt: skip
    assert (code, out, err) == (0, "", "")
    assert len(parent) == 1 and parent[0].concurrency == 8  # all checked: the children would start


@pytest.mark.parametrize(
    "args, message",
    [
        (["--handler", "tests.cli_handlers:not_async"], "must be a coroutine function"),
        (["--concurrency", "0"], "--concurrency: must be >= 1"),
        (["--handler", "nosuchmodule:handle"], "cannot import 'nosuchmodule'"),
        (["--on-error", "dlq"], "--on-error dlq needs --dlq-topic"),
        (["--retry-backoff-ms", "200", "--retry-backoff-max-ms", "100"], "must not exceed"),
        (["--count", "5"], "shape the memory source"),
        (["--metrics-port", "70000"], "--metrics-port: must be a port number"),
    ],
)
def test_processes_parent_refuses_bad_flags_in_one_line_without_starting_children(
    parent, capsys, args, message
):
    code, out, err = run_parent(capsys, *args)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err
    assert parent == []  # no child started


def test_environment_variables_set_flags_and_flags_win():
    proc = start(
        "--json", "--max-messages", "50", env={"FASTCONSUMER_PARTITIONS": "5", "FASTCONSUMER_JSON": "0"}
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert len(json.loads(out)["committed"]) == 5
    proc = start("--concurrency", "4", env={"FASTCONSUMER_CONCURRENCY": "abc", "FASTCONSUMER_COUNT": "10"})
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert err.strip() == (
        "fastconsumer: error: environment variable FASTCONSUMER_CONCURRENCY='abc': 'abc' is not an integer "
        "(see --help)"
    )


def test_pure_python_core_on_request():
    proc = start("--max-messages", "100", "--json", env={"FASTCONSUMER_NO_EXTENSIONS": "1"})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["core"] == "python"


def test_the_compiled_core_is_what_runs_by_default():
    if os.environ.get("FASTCONSUMER_NO_EXTENSIONS") == "1":
        pytest.skip("the pure-Python core was asked for")
    proc = start("--max-messages", "100", "--json", env={"FASTCONSUMER_NO_EXTENSIONS": ""})
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert json.loads(out)["core"] == "cython"


def test_a_terminal_gets_a_live_progress_line():
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastconsumer", "--handler", "tests.cli_handlers:marked"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    while b"/s  in flight" not in seen:
        chunk = os.read(leader, 4096)
        assert chunk, "the run ended without a progress line"
        seen += chunk
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 0
    os.close(leader)
    assert b"\r\x1b[K" in seen  # redrawn in place
