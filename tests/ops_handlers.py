"""Handlers for the operations tests (metrics, probes, --processes) and the --processes benchmark, loaded with
``--handler tests.ops_handlers:NAME``."""

import asyncio
import atexit
import hashlib
import os
import time

_record = None
_stuck = False


async def record_pid(msg):
    """Append ``pid partition offset`` to $FASTCONSUMER_TEST_RECORD per handled message: several processes
    append to one file, a line per write."""
    global _record
    if _record is None:
        _record = open(os.environ["FASTCONSUMER_TEST_RECORD"], "a", buffering=1)  # noqa: SIM115
    await asyncio.sleep(0.0005)
    _record.write(f"{os.getpid()} {msg.partition()} {msg.offset()}\n")


async def stuck_when_told(msg):
    """Handles messages until $FASTCONSUMER_TEST_TRIGGER exists; then the next message of partition 0 never
    finishes (until a stop abandons it): that partition's committed offset stands still, the others move."""
    global _stuck
    await asyncio.sleep(0.001)
    if not _stuck and msg.partition() == 0 and os.path.exists(os.environ["FASTCONSUMER_TEST_TRIGGER"]):
        _stuck = True
        await asyncio.Event().wait()


_ROUNDS = int(os.environ.get("FASTCONSUMER_BENCH_HASH_ROUNDS") or 400)
_BLOCK = b"x" * 64


def hash_rounds(rounds: int) -> bytes:
    digest = _BLOCK
    for _ in range(rounds):
        digest = hashlib.sha256(digest).digest()
    return digest


_span: list = []  # [first, last, count]: when this process handled its first and last message


def _write_span() -> None:
    with open(os.environ["FASTCONSUMER_BENCH_SPAN"], "a") as fh:
        fh.write(f"{_span[0]} {_span[1]} {_span[2]}\n")


async def cpu_bound(msg):
    """A fixed amount of CPU work per message: $FASTCONSUMER_BENCH_HASH_ROUNDS chained SHA-256 rounds
    (the benchmark calibrates them to about 200 µs); it never awaits, so only more processes scale it.
    With $FASTCONSUMER_BENCH_SPAN, each process appends ``first last count`` (wall clock) there at exit."""
    hash_rounds(_ROUNDS)
    now = time.time()
    if _span:
        _span[1] = now
        _span[2] += 1
    else:
        _span.extend((now, now, 1))
        if os.environ.get("FASTCONSUMER_BENCH_SPAN"):
            atexit.register(_write_span)
