"""``--processes N``: N consumer processes in the same group, for handlers that need more than one core.

Each process is ``python -m fastconsumer`` with the same arguments (and ``--json``), its own event loop and
its own ``--concurrency`` slots; the group spreads the partitions over them. This parent forwards SIGINT and
SIGTERM to all of them (a second signal too: it abandons running handlers), stops the others when one fails,
and prints one summary: the counters summed, the committed offsets merged (per partition the highest: the
last owner's), the longest elapsed time. Its exit code is the worst of theirs.

It starts them only once every flag passed ``fastconsumer.cli.build.check()``, which makes no Kafka client;
what only librdkafka can judge (a ``-X`` property) each child finds as it opens and tells this parent, which
says it once, with exit code 2.

The children run in their own process group, so a Ctrl-C on the terminal reaches them once, through here;
a child whose parent dies sees its stdin close and stops gracefully. With ``--metrics-port`` the parent
serves the children's metrics on that port, each sample labelled ``process``, and probes that combine
theirs; the children listen on free loopback ports of their own.
"""

from __future__ import annotations

import argparse
import json
import logging
import queue
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import fields
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from fastconsumer.cli.parser import EXIT_USAGE
from fastconsumer.cli.progress import emit, format_summary
from fastconsumer.engine import Summary

if TYPE_CHECKING:
    from prometheus_client.core import Metric

    from fastconsumer.metrics import HttpServer

log = logging.getLogger("fastconsumer")

# What a child says on its stdout, a JSON object per line: besides its --json summary, one of these.
METRICS = "metrics"  # {"metrics": url}: where it serves its metrics
CONFIG_ERROR = "config_error"  # {"config_error": message}: it refused its configuration (exit 2)
CONFIG_ERROR_GRACE_S = 10.0  # how long the others get to refuse the same configuration by themselves

COUNTERS = (
    "consumed",
    "handled",
    "failed",
    "retried",
    "skipped",
    "dead_lettered",
    "released",
    "abandoned",
    "commit_failures",
)


def run(argv: list[str], args: argparse.Namespace, out: TextIO) -> int:
    """Run ``args.processes`` children until they all ended; print the merged summary; the exit code."""
    group = Group(args.processes)
    previous = {s: signal.signal(s, group.on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        if args.metrics_port is not None:
            server = aggregate_server(group.children, args.metrics_host, args.metrics_port)
        group.start(argv, server is not None, out)
        group.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        group.close()
        if server is not None:
            server.close()
    return report(group.children, args.json, out)


class Child:
    """One ``python -m fastconsumer`` process, and a thread reading what it says on stdout."""

    def __init__(self, index: int, argv: list[str], ended: queue.Queue[int], out: TextIO) -> None:
        self.index = index
        self.summary: dict[str, Any] | None = None
        self.metrics_url: str | None = None
        self.config_error: str | None = None
        self.returncode: int | None = None
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,  # never written: closes when this process dies, which stops the child
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._ended = ended
        self._out = out
        self._reader = threading.Thread(target=self._read, name=f"fastconsumer-child-{index}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                doc = None
            if not isinstance(doc, dict):  # the handler's own output: passed on
                self._out.write(line)
            elif set(doc) == {METRICS}:
                self.metrics_url = doc[METRICS]
            elif set(doc) == {CONFIG_ERROR}:
                self.config_error = doc[CONFIG_ERROR]
            else:
                self.summary = doc
        self.returncode = self.proc.wait()
        self._ended.put(self.index)

    @property
    def running(self) -> bool:
        return self.returncode is None

    def signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signum)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass


class Group:
    """The children, and what stops them: a signal here, passed on, or one of them failing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.children: list[Child] = []
        self.ended: queue.Queue[int] = queue.Queue()
        self.signals = 0
        self.stopping = False

    def start(self, argv: list[str], metrics: bool, out: TextIO) -> None:
        for i in range(self.size):
            self.children.append(Child(i, child_argv(argv, i, metrics), self.ended, out))
        log.info(
            "started %d consumer processes: %s", self.size, ", ".join(str(c.proc.pid) for c in self.children)
        )

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signals += 1
        self.stopping = True
        name = signal.Signals(signum).name
        if self.signals == 1:
            log.warning(
                "%s: stopping the %d processes gracefully (again to abandon running handlers)",
                name,
                self.size,
            )
        else:
            log.warning("%s: the processes abandon their running handlers", name)
        self.stop_all(signum)

    def stop_all(self, signum: int) -> None:
        for child in self.children:
            child.signal(signum)

    def wait(self) -> None:
        """Until every child ended; the first to fail stops the others. One that refused its configuration
        is left to the others to follow: they refuse the same arguments as they open, and a signal then
        would only add their "stopping" lines to the one error (they are stopped after a grace)."""
        remaining = self.size
        grace: float | None = None
        while remaining:
            try:
                child = self.children[self.ended.get(timeout=grace)]
            except queue.Empty:
                grace, self.stopping = None, True
                self.stop_all(signal.SIGTERM)
                continue
            remaining -= 1
            if child.returncode == 0 or self.stopping or not remaining:
                continue
            if child.config_error is not None:  # reported once, at the end
                grace = CONFIG_ERROR_GRACE_S
                continue
            log.error("process %d exited with code %s; stopping the others", child.index, child.returncode)
            self.stopping = True
            self.stop_all(signal.SIGTERM)

    def close(self) -> None:
        for child in self.children:
            child.close()


def report(children: list[Child], as_json: bool, out: TextIO) -> int:
    """The merged summary on stdout, or the configuration error the children refused (once, not per child);
    the exit code, the worst of theirs."""
    errors = list(dict.fromkeys(c.config_error for c in children if c.config_error is not None))
    if errors:
        for error in errors:
            log.error("error: %s", error)
        return EXIT_USAGE
    merged = merge([c.summary for c in children if c.summary is not None], len(children))
    missing = [c.index for c in children if c.summary is None]
    if missing:
        note = f"process(es) {', '.join(map(str, missing))} ended without a summary"
        merged["error"] = f"{merged['error']}; {note}" if merged["error"] else note
    if as_json:
        emit(out, json.dumps(merged))
    else:
        names = {f.name for f in fields(Summary)}
        summary = Summary(**{k: v for k, v in merged.items() if k in names})
        emit(out, f"{len(children)} processes: " + format_summary(summary))
    return max(exit_code(c.returncode) for c in children)


def exit_code(returncode: int | None) -> int:
    """A child killed by a signal (a negative code) failed."""
    return returncode if returncode in (0, 1, 2) else 1


def merge(summaries: list[dict[str, Any]], processes: int) -> dict[str, Any]:
    """One summary of several processes' ``--json`` summaries."""
    first = summaries[0] if summaries else {"source": "kafka", "core": "?"}
    merged: dict[str, Any] = {"source": first.get("source"), "core": first.get("core")}
    for name in COUNTERS:
        merged[name] = sum(int(s.get(name) or 0) for s in summaries)
    committed: dict[tuple[str, int], int] = {}
    for s in summaries:
        for c in s.get("committed") or []:
            key = (c["topic"], c["partition"])
            committed[key] = max(c["offset"], committed.get(key, c["offset"]))
    merged["committed"] = [
        {"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(committed.items())
    ]
    acks = [s["acknowledged"] for s in summaries if s.get("acknowledged")]  # share groups
    merged["acknowledged"] = (
        {
            name: (max if name.startswith("max_") else sum)(int(a.get(name) or 0) for a in acks)
            for name in dict.fromkeys(name for a in acks for name in a)
        }
        if acks
        else None
    )
    elapsed = max((float(s.get("elapsed_s") or 0.0) for s in summaries), default=0.0)
    merged["elapsed_s"] = elapsed
    merged["rate"] = round(merged["handled"] / elapsed, 1) if elapsed > 0 else 0.0
    errors = [s["error"] for s in summaries if s.get("error")]
    merged["error"] = "; ".join(errors) if errors else None
    merged["processes"] = processes
    return merged


def child_argv(argv: list[str], index: int, metrics: bool) -> list[str]:
    """The parent's own arguments, then what makes a child (later flags win over earlier ones)."""
    extra = ["--processes", "1", "--json", "--process-index", str(index)]
    if metrics:
        extra += ["--metrics-port", "0", "--metrics-host", "127.0.0.1"]
    return [sys.executable, "-m", "fastconsumer", *argv, *extra]


# -- the combined /metrics, /healthz and /readyz


def _get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (OSError, ValueError) as exc:
        return 0, str(exc).encode()


class ChildrenCollector:
    """The children's metrics, scraped at scrape time, each sample labelled with its process."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import Metric
        from prometheus_client.parser import text_string_to_metric_families

        families: dict[str, Metric] = {}
        for child in list(self.children):
            if child.metrics_url is None or not child.running:
                continue
            status, body = _get(child.metrics_url + "/metrics")
            if status != 200:
                continue
            for family in text_string_to_metric_families(body.decode()):
                merged = families.get(family.name)
                if merged is None:
                    merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                for sample in family.samples:
                    merged.samples.append(
                        sample._replace(labels={**sample.labels, "process": str(child.index)})
                    )
        yield from families.values()


def aggregate_server(children: list[Child], host: str, port: int) -> HttpServer:
    from prometheus_client import CollectorRegistry

    from fastconsumer.metrics import HttpServer, json_route, registry_route

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChildrenCollector(children))

    def probes(path: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for child in list(children):
            if not child.running:
                continue
            if child.metrics_url is None:  # still starting
                out.append({"process": child.index, "alive": True, "ready": False, "starting": True})
                continue
            status, body = _get(child.metrics_url + path)
            try:
                doc = json.loads(body)
            except ValueError:
                doc = {"alive": False, "error": body.decode(errors="replace")}
            out.append({"process": child.index, "status": status, **doc})
        return out

    def health() -> tuple[bool, dict[str, Any]]:
        states = probes("/healthz")
        alive = bool(states) and all(s.get("alive") for s in states)
        return alive, {"alive": alive, "processes": states}

    def readiness() -> tuple[bool, dict[str, Any]]:
        # A process without partitions (more processes than partitions) does not make the whole unready;
        # one that is stalled or whose loop is stuck does.
        states = probes("/readyz")
        ready = (
            bool(states)
            and all(s.get("alive") and not s.get("stalled") for s in states)
            and any(s.get("ready") for s in states)
        )
        return ready, {"ready": ready, "processes": states}

    server = HttpServer(
        host,
        port,
        {
            "/metrics": registry_route(registry),
            "/healthz": json_route(health),
            "/readyz": json_route(readiness),
        },
    )
    log.info("metrics of every process on %s/metrics, probes on /healthz and /readyz", server.url)
    return server
