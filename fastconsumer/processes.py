"""``--processes N``: N consumer processes in the same group, for handlers that need more than one core.

Each process is ``python -m fastconsumer`` with the same arguments (and ``--json``), its own event loop and
its own ``--concurrency`` slots; the group spreads the partitions over them. This parent forwards SIGINT and
SIGTERM to all of them (a second signal too: it abandons running handlers), stops the others when one fails,
and prints one summary: the counters summed, the committed offsets merged (per partition the highest: the
last owner's), the longest elapsed time. Its exit code is the worst of theirs.

The children run in their own process group, so a Ctrl-C on the terminal reaches them once, through here;
a child whose parent dies sees its stdin close and stops gracefully. With ``--metrics-port`` the parent
serves the children's metrics on that port, each sample labelled ``process``, and probes that combine
theirs; the children listen on free loopback ports of their own.
"""

from __future__ import annotations

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
from typing import Any, TextIO

from fastconsumer.engine import Summary
from fastconsumer.progress import format_summary

log = logging.getLogger("fastconsumer")

COUNTERS = (
    "consumed",
    "handled",
    "failed",
    "retried",
    "skipped",
    "dead_lettered",
    "abandoned",
    "commit_failures",
)


class Child:
    def __init__(self, index: int, argv: list[str], ended: queue.Queue) -> None:
        self.index = index
        self.summary: dict[str, Any] | None = None
        self.metrics_url: str | None = None
        self.returncode: int | None = None
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,  # never written: closes when this process dies, which stops the child
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._ended = ended
        self._reader = threading.Thread(target=self._read, name=f"fastconsumer-child-{index}", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                sys.stdout.write(line)
                continue
            if isinstance(doc, dict) and set(doc) == {"metrics"}:
                self.metrics_url = doc["metrics"]
            elif isinstance(doc, dict):
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


def exit_code(returncode: int | None) -> int:
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


def run(argv: list[str], args: Any, out: TextIO) -> int:
    """Run ``args.processes`` children until they all ended; print the merged summary; the exit code."""
    n = args.processes
    ended: queue.Queue = queue.Queue()
    metrics = args.metrics_port is not None
    signals = 0
    stopping = False
    children: list[Child] = []

    def stop_all(signum: int) -> None:
        for child in children:
            child.signal(signum)

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal signals, stopping
        signals += 1
        stopping = True
        name = signal.Signals(signum).name
        if signals == 1:
            log.warning(
                "%s: stopping the %d processes gracefully (again to abandon running handlers)", name, n
            )
        else:
            log.warning("%s: the processes abandon their running handlers", name)
        stop_all(signum)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    server = None
    try:
        if metrics:
            server = aggregate_server(children, args.metrics_host, args.metrics_port)
        for i in range(n):
            children.append(Child(i, child_argv(argv, i, metrics), ended))
        log.info("started %d consumer processes: %s", n, ", ".join(str(c.proc.pid) for c in children))
        remaining = n
        while remaining:
            child = children[ended.get()]
            remaining -= 1
            if child.returncode != 0 and not stopping and remaining:
                log.error(
                    "process %d exited with code %s; stopping the others", child.index, child.returncode
                )
                stopping = True
                stop_all(signal.SIGTERM)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        for child in children:
            child.close()
        if server is not None:
            server.close()
    summaries = [c.summary for c in children if c.summary is not None]
    merged = merge(summaries, n)
    missing = [c.index for c in children if c.summary is None]
    if missing:
        note = f"process(es) {', '.join(map(str, missing))} ended without a summary"
        merged["error"] = f"{merged['error']}; {note}" if merged["error"] else note
    if args.json:
        out.write(json.dumps(merged) + "\n")
    else:
        fields = {k: v for k, v in merged.items() if k in Summary.__dataclass_fields__}
        out.write(f"{n} processes: " + format_summary(Summary(**fields)) + "\n")
    out.flush()
    return max(exit_code(c.returncode) for c in children)


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

    def collect(self) -> Iterator[Any]:
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


def aggregate_server(children: list[Child], host: str, port: int) -> Any:
    from prometheus_client import CollectorRegistry

    from fastconsumer.metrics import HttpServer, json_route, registry_route

    registry = CollectorRegistry(auto_describe=False)
    registry.register(ChildrenCollector(children))

    def probes(path: str) -> list[dict[str, Any]]:
        out = []
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
