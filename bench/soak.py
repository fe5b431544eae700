"""A chaos soak: members of one group come and go under a steady produce, then an invariant check.

    python -m bench.soak --seconds 60 --members 3            # starts its own broker (dev/broker.py)
    python -m bench.soak --seconds 300 --protocol consumer --json
    python -m bench.soak --bootstrap localhost:9092          # a running broker: no broker restart then

For ``--seconds`` a producer writes ``--rate`` keyed messages a second to a new topic while ``--members``
``python -m fastconsumer`` processes of one group (handler ``bench.soak_handler:record``, which journals
every call and rebalance) consume it, and chaos strikes every few seconds: a member joins, a member leaves
gracefully (SIGTERM), a member is killed (SIGKILL), and once, the broker restarts (only a broker the soak
started). Each kind happens at least once. Then the producer stops, a member is started if none is left,
and once the group's committed offsets reach the end of the topic every member is stopped with SIGTERM.

The checker reads the journals and says whether these hold (exit 0 if they all do, 1 otherwise):

- nothing lost: every offset of the topic was handled by some member;
- per-key order within each ownership period (from a member's "assigned" to its "revoked"/"lost", its
  exit or its kill): a key's messages start and finish in offset order, and no member handles a partition
  outside its ownership periods;
- the group's committed offsets equal the end offsets;
- every member exits 0, except the killed ones.

and counts the deliveries beyond a message's first (duplicates), each attributed to what ended the
ownership period of its previous delivery: ``kill, in flight`` (the call was running at the SIGKILL),
``kill, handled since the last commit``, ``graceful rebalance`` (a revoke while the member stayed),
``graceful leave`` (the revoke of a member stopped with SIGTERM), ``lost`` (a fenced member), or
``abandoned`` (a call a revoke's deadline cut short). ``--json`` prints the summary as one object.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from fastconsumer.produce.messages import message_value
from tests.kafka_helpers import (
    committed_offsets,
    create_topic,
    end_offsets,
    local_broker_module,
    wait_for_cluster,
)

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("join", "leave", "kill", "restart")
# Rebalances and the detection of a killed member, in seconds rather than tens of them: the classic
# protocol's timings are the client's, the consumer protocol's the broker's (set on a broker the soak starts).
CLASSIC = ("-X", "session.timeout.ms=6000", "-X", "heartbeat.interval.ms=500")
BROKER_OVERRIDES = {
    "group.consumer.heartbeat.interval.ms": 500,
    "group.consumer.min.heartbeat.interval.ms": 500,
    "group.consumer.session.timeout.ms": 6000,
    "group.consumer.min.session.timeout.ms": 6000,
}
MEMBER_ARGS = ("--commit-interval", "0.5", "--concurrency", "16", "--shutdown-timeout", "10")


@dataclass
class Member:
    name: str
    proc: subprocess.Popen[bytes]
    journal: Path
    log: Path
    started: float
    ended: str = ""  # "", "kill", "leave" (SIGTERM during the chaos), "final" (SIGTERM at the end)
    signalled: float = float("inf")  # when it was sent SIGTERM or SIGKILL

    def ready(self) -> bool:
        """Whether it runs with its signal handlers (a SIGTERM before them would kill it): its log says
        it is consuming."""
        try:
            return b"consuming from" in self.log.read_bytes()
        except OSError:
            return False


@dataclass
class Soak:
    bootstrap: str
    topic: str
    group: str
    workdir: Path
    protocol: str
    members: list[Member] = field(default_factory=list)
    events: list[tuple[float, str, str]] = field(default_factory=list)  # (seconds in, kind, member)
    t0: float = field(default_factory=time.monotonic)

    def note(self, kind: str, who: str = "") -> None:
        self.events.append((round(time.monotonic() - self.t0, 2), kind, who))

    def start_member(self) -> Member:
        name = f"m{len(self.members)}"
        journal, log = self.workdir / f"{name}.journal", self.workdir / f"{name}.log"
        protocol = ("-X", "group.protocol=consumer") if self.protocol == "consumer" else CLASSIC
        with open(log, "wb") as err:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "fastconsumer",
                    "--bootstrap-servers",
                    self.bootstrap,
                    "--topic",
                    self.topic,
                    "--group",
                    self.group,
                    "--from-beginning",
                    "--handler",
                    "bench.soak_handler:record",
                    *MEMBER_ARGS,
                    *protocol,
                ],
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "FASTCONSUMER_SOAK_RECORD": str(journal), "PYTHONPATH": str(ROOT)},
            )
        member = Member(name, proc, journal, log, time.monotonic())
        self.members.append(member)
        self.note("join", name)
        return member

    def live(self) -> list[Member]:
        return [m for m in self.members if not m.ended and m.proc.poll() is None]

    def stop_member(self, member: Member, how: str) -> None:
        member.ended, member.signalled = how, time.monotonic()
        member.proc.send_signal(signal.SIGKILL if how == "kill" else signal.SIGTERM)
        self.note(how, member.name)


class Load(threading.Thread):
    """``rate`` keyed messages a second, in 10 ms slices, until stopped; then every one delivered."""

    def __init__(self, bootstrap: str, topic: str, rate: int, keys: int) -> None:
        super().__init__(name="soak-producer", daemon=True)
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "log_level": 2}
        )
        self.topic, self.rate, self.keys = topic, rate, keys
        self.stop = threading.Event()
        self.produced = 0
        self.failed = 0

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failed += 1

    def run(self) -> None:
        start = time.monotonic()
        while not self.stop.is_set():
            due = int((time.monotonic() - start) * self.rate)
            while self.produced < due:
                i = self.produced
                try:
                    self.producer.produce(
                        self.topic, message_value(i), f"key-{i % self.keys}", on_delivery=self._delivered
                    )
                except BufferError:  # the queue is full (the broker is away): wait for room
                    break
                self.produced += 1
            self.producer.poll(0)
            self.stop.wait(0.01)  # the producer's pace, not a synchronisation

    def finish(self, timeout: float = 120.0) -> int:
        self.stop.set()
        self.join()
        return self.producer.flush(timeout)


def plan(rng: random.Random, seconds: float, restart: bool) -> list[tuple[float, str]]:
    """When each chaos event happens: every kind at least once, more at random, about one every 4 s, the
    broker restart away from the first and last seconds."""
    kinds = [k for k in KINDS if restart or k != "restart"]
    count = max(len(kinds), int(seconds / 4))
    chosen = kinds + [rng.choice(("join", "leave", "kill")) for _ in range(count - len(kinds))]
    rng.shuffle(chosen)
    times = sorted(rng.uniform(3.0, max(4.0, seconds - 2.0)) for _ in chosen)
    return list(zip(times, chosen, strict=True))


def wait_until(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # polling interval
    return True


def run(
    *,
    seconds: float = 60.0,
    members: int = 3,
    bootstrap: str | None = None,
    rate: int = 1000,
    partitions: int = 6,
    keys: int = 120,
    protocol: str = "classic",
    seed: int | None = None,
    workdir: Path | None = None,
    log: Any = None,
) -> dict[str, Any]:
    """Run the soak; return the summary (``summary["ok"]``: every invariant held)."""
    say = log or (lambda *_: None)
    seed = random.randrange(1 << 30) if seed is None else seed
    rng = random.Random(seed)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fastconsumer-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = None
    if bootstrap is None:
        broker = local_broker_module().LocalBroker(overrides=BROKER_OVERRIDES)
        broker.start()
        bootstrap = broker.bootstrap
        say(f"broker {broker.version} at {bootstrap}")
    try:
        wait_for_cluster(bootstrap)
        topic = f"soak-{uuid.uuid4().hex[:12]}"
        create_topic(bootstrap, topic, partitions)
        soak = Soak(bootstrap, topic, f"{topic}-group", workdir, protocol)
        load = Load(bootstrap, topic, rate, keys)
        load.start()
        for _ in range(members):
            soak.start_member()
        restart_s = 0.0
        for at, kind in plan(rng, seconds, broker is not None):
            left = soak.t0 + at - time.monotonic()
            if left > 0:
                time.sleep(left)  # the schedule of the chaos
            if kind == "join" and len(soak.live()) >= members + 2:
                kind = rng.choice(("leave", "kill"))
            say(f"{time.monotonic() - soak.t0:5.1f} s: {kind}")
            if kind == "join":
                soak.start_member()
            elif kind == "restart":
                assert broker is not None
                t = time.monotonic()
                soak.note("broker restart")
                broker.restart()
                restart_s = time.monotonic() - t
            else:  # every planned leave and kill happens: the test counts on at least one of each
                if len(soak.live()) <= 1:  # one stays to consume
                    soak.start_member()
                if kind == "leave":  # only a member past its start-up stops gracefully
                    wait_until(lambda: any(m.ready() for m in soak.live()), 60.0)
                live = soak.live()
                ready = [m for m in live if m.ready()]
                soak.stop_member(rng.choice(ready if kind == "leave" and ready else live), kind)
        left = soak.t0 + seconds - time.monotonic()
        if left > 0:
            time.sleep(left)
        undelivered = load.finish()
        soak.note("producer stopped")
        if not soak.live():
            soak.start_member()
        ends = end_offsets(bootstrap, topic)

        def caught_up_now() -> bool:
            return committed_offsets(bootstrap, soak.group, topic) == end_offsets(bootstrap, topic)

        caught_up = wait_until(caught_up_now, 120.0)
        if caught_up:
            soak.note("caught up")
        else:  # which partitions, and how far: the members' logs say what they think they committed
            now, ends_now = committed_offsets(bootstrap, soak.group, topic), end_offsets(bootstrap, topic)
            behind = {p: (now.get(p), end) for p, end in ends_now.items() if now.get(p) != end}
            soak.note(f"not caught up: (committed, end) of {behind}")
        wait_until(lambda: all(m.ready() for m in soak.live()), 60.0)
        for member in soak.live():
            soak.stop_member(member, "final")
        for member in soak.members:
            try:
                member.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                member.proc.kill()
                member.proc.wait()
        elapsed = time.monotonic() - soak.t0
        committed = committed_offsets(bootstrap, soak.group, topic)
        final_ends = end_offsets(bootstrap, topic)
        summary = check(soak, final_ends, committed)
        summary["ends_when_the_producer_stopped"] = ends
        summary.update(
            seed=seed,
            protocol=protocol,
            seconds=round(elapsed, 1),
            chaos_seconds=seconds,
            rate=rate,
            partitions=partitions,
            keys=keys,
            produced=load.produced,
            produce_failures=load.failed + undelivered,
            broker_restart_s=round(restart_s, 1),
            caught_up=caught_up,
            events=soak.events,
            workdir=str(workdir),
        )
        summary["ok"] = summary["ok"] and caught_up
        return summary
    finally:
        if broker is not None:
            broker.stop()


# -- the checker


@dataclass
class Period:
    member: Member
    partition: int
    start: float  # when it was assigned (time.monotonic())
    end: str = ""  # what ended it: revoke, lost, leave, kill, final
    ended_at: float = 0.0  # when a revoke or loss ended it (the member had given it up)
    starts: list[int] = field(default_factory=list)  # offsets whose handling started, in order
    done: dict[int, str] = field(default_factory=dict)  # offset -> key, of the handled ones


def read_periods(member: Member) -> tuple[list[Period], list[str]]:
    """A member's ownership periods from its journal, and the violations found on the way: messages of a
    partition it did not own, keys out of offset order within a period."""
    periods: list[Period] = []
    open_: dict[int, Period] = {}
    fenced: dict[int, Period] = {}  # lost: calls that started before may still finish (a zombie's)
    problems: list[str] = []
    text = member.journal.read_text() if member.journal.exists() else ""
    lines = text.split("\n")
    if not text.endswith("\n"):
        lines = lines[:-1]  # a line cut by a SIGKILL
    last_key: dict[tuple[int, str], int] = {}  # per period (its id) and key: the last offset handled
    for line in lines:
        if not line:
            continue
        kind, *rest = line.split()
        if kind in ("a", "r", "l"):
            at = float(rest[0])
            for p in (int(x) for x in rest[1].split(",")) if len(rest) > 1 and rest[1] else ():
                if kind == "a":
                    if p in open_:
                        problems.append(f"{member.name}: partition {p} assigned twice")
                    open_[p] = Period(member, p, at)
                    periods.append(open_[p])
                    fenced.pop(p, None)
                elif p in open_:
                    period = open_.pop(p)
                    period.ended_at = at
                    if kind == "l":
                        fenced[p] = period
                    leaving = member.ended in ("leave", "final") and at >= member.signalled
                    period.end = "lost" if kind == "l" else ("leave" if leaving else "revoke")
            continue
        p, o = int(rest[0]), int(rest[1])
        period = open_.get(p)
        if period is None and kind == "d" and p in fenced and o in fenced[p].starts:
            period = fenced[p]
        if period is None:
            problems.append(f"{member.name}: {'started' if kind == 's' else 'handled'} {p}@{o} unowned")
            continue
        if kind == "s":
            period.starts.append(o)
        else:
            key = rest[2]
            period.done[o] = key
            before = last_key.get((id(period), key))
            if before is not None and before >= o:
                problems.append(f"{member.name}: key {key} of {p} handled {o} after {before}")
            last_key[id(period), key] = o
    for period in open_.values():
        period.end = member.ended or "exit"
    return periods, problems


def check(soak: Soak, ends: dict[int, int], committed: dict[int, int]) -> dict[str, Any]:
    periods: list[Period] = []
    problems: list[str] = []
    for member in soak.members:
        found, wrong = read_periods(member)
        periods += found
        problems += wrong
    # per key, starts in offset order too (one call at a time per key): checked on the handled keys
    for period in periods:
        seen: dict[str, int] = {}
        for o in period.starts:
            key = period.done.get(o)
            if key is None:
                continue
            if key in seen and seen[key] >= o:
                problems.append(f"{period.member.name}: key {key} of {period.partition} started {o} late")
            seen[key] = o
    deliveries: dict[tuple[int, int], list[tuple[Period, bool]]] = collections.defaultdict(list)
    for period in sorted(periods, key=lambda x: x.start):
        for o in dict.fromkeys(period.starts):
            deliveries[period.partition, o].append((period, o in period.done))
    handled = {(p.partition, o) for p in periods for o in p.done}
    everything = {(p, o) for p, end in ends.items() for o in range(end)}
    lost = sorted(everything - handled)
    causes: collections.Counter[str] = collections.Counter()
    for times in deliveries.values():
        for previous, was_done in times[:-1]:
            if previous.end == "kill":
                causes["kill, handled since the last commit" if was_done else "kill, in flight"] += 1
            elif not was_done:
                causes["abandoned"] += 1
            else:
                causes[
                    {"revoke": "graceful rebalance", "leave": "graceful leave"}.get(
                        previous.end, previous.end
                    )
                ] += 1
    twice = sum(1 for times in deliveries.values() if sum(done for _, done in times) > 1)
    # A partition given up gracefully (a revoke, a leave) is without an owner until the next one gets it.
    handoffs = []
    by_partition: dict[int, list[Period]] = collections.defaultdict(list)
    for period in periods:
        by_partition[period.partition].append(period)
    for owned in by_partition.values():
        owned.sort(key=lambda x: x.start)
        for before, after in itertools.pairwise(owned):
            if before.end in ("revoke", "leave") and before.ended_at and after.start >= before.ended_at:
                handoffs.append(1000 * (after.start - before.ended_at))
    handoffs.sort()
    bad_exits = [
        f"{m.name} exited {m.proc.returncode}"
        for m in soak.members
        if m.ended != "kill" and m.proc.returncode != 0
    ]
    order_ok = not problems
    summary: dict[str, Any] = {
        "members_started": len(soak.members),
        "joins": sum(1 for _, k, _ in soak.events if k == "join"),
        "leaves": sum(1 for _, k, _ in soak.events if k == "leave"),
        "kills": sum(1 for _, k, _ in soak.events if k == "kill"),
        "broker_restarts": sum(1 for _, k, _ in soak.events if k == "broker restart"),
        "messages": len(everything),
        "deliveries": sum(len(t) for t in deliveries.values()),
        "handled": sum(len(p.done) for p in periods),
        "lost": len(lost),
        "lost_examples": lost[:10],
        "order_violations": len(problems),
        "order_examples": problems[:10],
        "committed_equals_end": committed == ends,
        "committed": committed,
        "ends": ends,
        "bad_exits": bad_exits,
        "duplicates": sum(causes.values()),
        "handled_twice": twice,
        "duplicates_by_cause": dict(causes),
        "ownership_periods": len(periods),
        "handoffs": len(handoffs),
        "handoff_ms_median": round(handoffs[len(handoffs) // 2]) if handoffs else None,
        "handoff_ms_max": round(handoffs[-1]) if handoffs else None,
    }
    summary["ok"] = not lost and order_ok and committed == ends and not bad_exits
    return summary


def table(summary: dict[str, Any]) -> str:
    rows = [
        ("verdict", "OK" if summary["ok"] else "FAILED"),
        ("time", f"{summary['seconds']} s ({summary['chaos_seconds']:g} s of chaos), seed {summary['seed']}"),
        ("protocol", summary["protocol"]),
        ("load", f"{summary['rate']}/s, {summary['partitions']} partitions, {summary['keys']} keys"),
        ("messages", f"{summary['messages']} ({summary['produce_failures']} produce failures)"),
        (
            "chaos",
            f"{summary['members_started']} members started: {summary['joins']} joins, {summary['leaves']} "
            f"leaves (SIGTERM), {summary['kills']} kills (SIGKILL), {summary['broker_restarts']} broker "
            f"restarts ({summary['broker_restart_s']} s)",
        ),
        ("ownership periods", str(summary["ownership_periods"])),
        (
            "partitions without an owner",
            f"{summary['handoffs']} graceful handoffs: median {summary['handoff_ms_median']} ms, max "
            f"{summary['handoff_ms_max']} ms (from its revoke to the next owner's assignment)",
        ),
        ("lost", f"{summary['lost']} {summary['lost_examples'] or ''}"),
        ("order violations", f"{summary['order_violations']} {summary['order_examples'] or ''}"),
        ("committed == end", f"{summary['committed_equals_end']} (caught up: {summary['caught_up']})"),
        *(
            [("  committed", str(summary["committed"])), ("  ends", str(summary["ends"]))]
            if not summary["committed_equals_end"]
            else []
        ),
        ("bad exits", ", ".join(summary["bad_exits"]) or "none"),
        ("deliveries", f"{summary['deliveries']} (handled {summary['handled']})"),
        ("duplicates", f"{summary['duplicates']} (handled twice: {summary['handled_twice']})"),
    ]
    rows += [(f"  {cause}", str(n)) for cause, n in sorted(summary["duplicates_by_cause"].items())]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the chaos lasts (60)")
    parser.add_argument("--members", type=int, default=3, help="members at the start (3)")
    parser.add_argument("--bootstrap", help="a running broker (default: start one; only then a restart)")
    parser.add_argument("--rate", type=int, default=1000, help="messages produced a second (1000)")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--keys", type=int, default=120)
    parser.add_argument("--protocol", choices=("classic", "consumer"), default="classic")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--workdir", type=Path, help="where the journals and member logs go (a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = parser.parse_args(argv)
    if args.members < 1 or args.seconds <= 0 or args.rate < 1 or args.partitions < 1 or args.keys < 1:
        parser.error("--members, --seconds, --rate, --partitions and --keys must be positive")
    summary = run(
        seconds=args.seconds,
        members=args.members,
        bootstrap=args.bootstrap,
        rate=args.rate,
        partitions=args.partitions,
        keys=args.keys,
        protocol=args.protocol,
        seed=args.seed,
        workdir=args.workdir,
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(json.dumps(summary) if args.json else table(summary), flush=True)
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
