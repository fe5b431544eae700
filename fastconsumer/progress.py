"""What a person watching the CLI sees: a live progress line while it runs, a summary when it stops."""

from __future__ import annotations

import asyncio
from typing import TextIO

from fastconsumer.engine import Consumer, Summary

TTY_EVERY = 0.5  # seconds between redraws of the live line on a terminal
LOG_EVERY = 10.0  # seconds between progress lines when stderr is a file or a pipe


class Progress:
    def __init__(self, consumer: Consumer, stream: TextIO) -> None:
        self.consumer = consumer
        self.stream = stream
        self.tty = stream.isatty()
        self._drawn = False

    def line(self, rate: float) -> str:
        c = self.consumer
        committed = sum(c.stats.committed.values())
        return (
            f"{c.stats.handled:,} handled  {rate:,.0f}/s  in flight {c.stats.in_flight}  buffered {c.buffered}  "
            f"committed {committed:,}  failed {c.stats.failed}"
        )

    async def run(self) -> None:
        every = TTY_EVERY if self.tty else LOG_EVERY
        last = self.consumer.stats.handled
        while True:
            await asyncio.sleep(every)
            now = self.consumer.stats.handled
            text = self.line((now - last) / every)
            last = now
            if self.tty:
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
    if s.error:
        lines.append(f"error: {s.error}")
    return "\n".join(lines)
