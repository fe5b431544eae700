"""Handlers for the CLI tests, loaded with ``--handler tests.cli_handlers:NAME``."""

import asyncio
import json
import sys

MARK_AT = 500
handled = 0


async def _count() -> None:
    """Say MARK on stderr once MARK_AT messages are handled: the test then knows the run is mid-stream."""
    global handled
    handled += 1
    if handled == MARK_AT:
        print("MARK", file=sys.stderr, flush=True)


async def marked(msg):
    await asyncio.sleep(0.001)
    await _count()


async def stuck_after_mark(msg):
    if handled >= MARK_AT:
        await asyncio.Event().wait()  # never finishes: only a second signal ends the run
    await _count()


async def poison(msg):
    if msg.partition() == 0 and msg.offset() == 100:
        raise ValueError("cannot parse this one")


def not_async(msg):
    return msg


_record = None


async def record(msg):
    """Append ``partition offset key`` to $FASTCONSUMER_TEST_RECORD per handled message (kept across a
    SIGKILL: each line is flushed before the handler returns)."""
    global _record
    if _record is None:
        import os

        _record = open(os.environ["FASTCONSUMER_TEST_RECORD"], "a", buffering=1)  # noqa: SIM115
    key = msg.key().decode() if msg.key() is not None else "-"
    await asyncio.sleep(0.0005)
    _record.write(f"{msg.partition()} {msg.offset()} {key}\n")
    await _count()


async def reject_threes(msg):
    """Fails every message whose JSON index ends in 3: the poison pills of the dead-letter tests."""
    index = int(json.loads(msg.value())["foo"][3:])
    if index % 10 == 3:
        raise ValueError(f"rejecting {index}")
