"""Operating it against a real Apache Kafka broker: /metrics during a run agrees with the run's summary and
the lag reaches 0; --processes 2 shares the partitions and stops on one SIGTERM; librdkafka's log lines are
JSON like the others."""

import json
import re
import signal
from pathlib import Path

from fastconsumer.produce import produce
from tests.kafka_helpers import committed_offsets, end_offsets
from tests.kafka_helpers import start_cli as cli
from tests.test_operations import get, json_log_lines, metrics_url, per_partition, scrape, value, wait_until

ROOT = Path(__file__).resolve().parent.parent
WAIT = 60.0


def test_metrics_agree_with_the_summary_and_lag_reaches_zero(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, 3000, keys=40)
    ends = {(kafka_topic, p): end for p, end in end_offsets(kafka_bootstrap, kafka_topic).items()}
    proc = cli(
        kafka_bootstrap,
        kafka_topic,
        "metrics",
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--commit-interval",
        "0.1",
        "--latency-ms",
        "0",
        "-X",
        "statistics.interval.ms=100",
        "--json",
    )
    try:
        base = metrics_url(proc)

        def caught_up():
            samples = scrape(base)
            lag = per_partition(samples, "fastconsumer_consumer_lag")
            done = value(samples, "fastconsumer_messages_handled_total") == 3000
            return done and len(lag) == 4 and not any(lag.values()) and samples

        samples = wait_until(caught_up, "every message handled and the lag of every partition 0")
        assert get(base + "/readyz")[0] == 200 and get(base + "/healthz")[0] == 200
        samples = scrape(base)  # settled: nothing changes any more until the stop
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    for name, key in [
        ("fastconsumer_messages_consumed_total", "consumed"),
        ("fastconsumer_messages_handled_total", "handled"),
        ("fastconsumer_messages_failed_total", "failed"),
        ("fastconsumer_messages_retried_total", "retried"),
        ("fastconsumer_messages_dead_lettered_total", "dead_lettered"),
        ("fastconsumer_commit_failures_total", "commit_failures"),
    ]:
        assert value(samples, name) == summary[key], name
    assert summary["handled"] == 3000
    committed = {(c["topic"], c["partition"]): c["offset"] for c in summary["committed"]}
    assert per_partition(samples, "fastconsumer_committed_offset") == committed == ends
    assert committed_offsets(kafka_bootstrap, "metrics", kafka_topic) == end_offsets(
        kafka_bootstrap, kafka_topic
    )
    assert per_partition(samples, "fastconsumer_commit_stalled_seconds") == dict.fromkeys(ends, 0.0)
    assert value(samples, "fastconsumer_handler_seconds_count") == 3000
    assert (
        value(samples, "fastconsumer_messages_in_flight")
        == value(samples, "fastconsumer_messages_buffered")
        == 0
    )
    assert value(samples, "fastconsumer_lookahead_messages") >= 2000  # 4 x batch_size at first, may grow
    assert value(samples, "fastconsumer_partitions_paused") == 0  # all handled: nothing holds a share
    assert value(samples, "fastconsumer_assigned_partitions") == 4
    assert value(samples, "fastconsumer_rebalances_total") >= 1
    commits = value(samples, "fastconsumer_commits_total")
    assert commits >= 1 and value(samples, "fastconsumer_commit_seconds_count") == commits


def test_two_processes_share_the_group_and_stop_together(kafka_bootstrap, kafka_topic, tmp_path):
    record = tmp_path / "handled"
    proc = cli(
        kafka_bootstrap,
        kafka_topic,
        "two",
        "--processes",
        "2",
        "--handler",
        "tests.ops_handlers:record_pid",
        "--commit-interval",
        "0.2",
        "-X",
        "heartbeat.interval.ms=250",  # the first member learns of the second one's joining sooner
        "--metrics-port",
        "0",
        "--metrics-host",
        "127.0.0.1",
        "--json",
        env={"FASTCONSUMER_TEST_RECORD": str(record)},
    )
    try:
        base = metrics_url(proc)  # the parent's: every process's metrics, labelled
        # Messages come once both members have their share: each process gets some to handle.
        assigned = set()
        lines = []
        for line in proc.stderr:
            lines.append(line)
            found = re.match(r"fastconsumer\[(\d)\]: assigned (.*)", line)
            if found and kafka_topic in found[2]:
                assigned.add(found[1])
            if assigned == {"0", "1"}:
                break
        assert assigned == {"0", "1"}, "".join(lines)
        produce(kafka_bootstrap, kafka_topic, 4000, keys=40)
        every = {(p, o) for p, end in end_offsets(kafka_bootstrap, kafka_topic).items() for o in range(end)}

        def handled():
            rows = [line.split() for line in record.read_text().splitlines()] if record.exists() else []
            return {(int(p), int(o)) for _, p, o in rows} >= every and rows

        rows = wait_until(handled, "every message handled")

        def counted():
            samples = scrape(base)
            by_process = [value(samples, "fastconsumer_messages_handled_total", process=i) for i in (0, 1)]
            return sum(by_process) >= 4000 and by_process

        by_process = wait_until(counted, "the processes' metrics to count every message")
        status, body = get(base + "/readyz")
        assert status == 200 and [p["partitions"] for p in json.loads(body)["processes"]] == [2, 2], body
    finally:
        proc.send_signal(signal.SIGTERM)  # one signal, to the parent only
        out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    assert len({pid for pid, _, _ in rows}) == 2  # both processes handled messages
    for index in (0, 1):
        assert f"fastconsumer[{index}]: SIGTERM: stopping gracefully" in err, err
    assert "abandon" not in err.replace("again to abandon", "")
    summary = json.loads(out)  # one merged summary
    assert summary["processes"] == 2 and summary["error"] is None
    assert summary["handled"] == sum(by_process) >= 4000
    assert summary["failed"] == 0 and summary["abandoned"] == 0
    ends = end_offsets(kafka_bootstrap, kafka_topic)
    assert {c["partition"]: c["offset"] for c in summary["committed"]} == ends
    assert committed_offsets(kafka_bootstrap, "two", kafka_topic) == ends


def test_json_logs_carry_librdkafka_and_message_fields(kafka_bootstrap, kafka_topic):
    produce(kafka_bootstrap, kafka_topic, 1000, keys=20)
    assert end_offsets(kafka_bootstrap, kafka_topic)[0] > 100
    proc = cli(
        kafka_bootstrap,
        kafka_topic,
        "json-logs",
        "--handler",
        "tests.cli_handlers:poison",
        "--retries",
        "1",
        "--retry-backoff-ms",
        "1",
        "--on-error",
        "skip",
        "--exit-at-end",
        "--log-format",
        "json",
        "--log-level",
        "debug",
        "-X",
        "debug=cgrp",
        "--json",
    )
    out, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 0, err
    lines = json_log_lines(err, (kafka_topic, 0, 100))
    assert any(line["logger"] == "fastconsumer.librdkafka" for line in lines)
    assert json.loads(out)["skipped"] == 1
