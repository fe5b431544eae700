"""What a person watching the CLI sees: progress while it runs, one summary on stdout when it stops."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import TextIO

from fastconsumer.engine import Consumer, Summary

TTY_EVERY = 0.5  # seconds between redraws of the live line on a terminal
LOG_EVERY = 10.0  # seconds between progress lines when stderr is a file or a pipe

log = logging.getLogger("fastconsumer")


class Progress:
    """A live line redrawn in place on a terminal; otherwise a line every ``LOG_EVERY`` seconds, through
    logging when ``through_log`` (JSON logs, or a child of ``--processes`` whose lines the terminal shares)
    so that every line of stderr has the same form."""

    def __init__(self, consumer: Consumer, stream: TextIO, *, through_log: bool = False) -> None:
        self.consumer = consumer
        self.stream = stream
        self.through_log = through_log
        self.live = not through_log and stream.isatty()
        self._drawn = False

    def line(self, rate: float) -> str:
        stats = self.consumer.stats
        committed = sum(stats.committed.values())
        return (
            f"{stats.handled:,} handled  {rate:,.0f}/s  in flight {stats.in_flight}  "
            f"buffered {self.consumer.buffered}  committed {committed:,}  failed {stats.failed}"
        )

    async def run(self) -> None:
        every = TTY_EVERY if self.live else LOG_EVERY
        last = self.consumer.stats.handled
        while True:
            await asyncio.sleep(every)
            now = self.consumer.stats.handled
            self._show(self.line((now - last) / every))
            last = now

    def _show(self, text: str) -> None:
        if self.through_log:
            log.info("%s", text)
            return
        if self.live:
            self.stream.write("\r\033[K" + text)
            self._drawn = True
        else:
            self.stream.write("fastconsumer: " + text + "\n")
        self.stream.flush()

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()


def format_summary(summary: Summary) -> str:
    s = summary
    committed = ", ".join(f"{c['topic']}[{c['partition']}]@{c['offset']}" for c in s.committed) or "nothing"
    abandoned = f", {s.abandoned:,} abandoned" if s.abandoned else ""
    lines = [
        f"stopped after {s.elapsed_s:.1f} s: {s.consumed:,} consumed, {s.handled:,} handled "
        f"({s.rate:,.0f}/s), {s.failed:,} failed{abandoned}",
        f"committed: {committed}",
    ]
    if s.acknowledged is not None:  # a share group acknowledges records instead of committing offsets
        lines[-1] = "acknowledged: " + ", ".join(f"{n:,} {name}" for name, n in s.acknowledged.items())
    if s.error:
        lines.append(f"error: {s.error}")
    return "\n".join(lines)


def emit(out: TextIO, line: str) -> None:
    """A line on stdout; a reader that went away (a dead ``--processes`` parent, ``| head``) is no error."""
    try:
        out.write(line + "\n")
        out.flush()
    except BrokenPipeError:
        if out is sys.stdout:  # nor is the flush at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
