"""What the probes and the per-partition gauges know of a consumer, read from another thread than its own.

- ``/healthz`` (liveness): 200 while the consumer's event loop turns. A thread asks the loop to note the time
  every ``heartbeat`` seconds; a note older than ``liveness_timeout`` (the loop is blocked) or a finished run
  is 503.
- ``/readyz`` (readiness): 200 when the consumer runs, its loop turns, it has partitions (a member of the
  group with an assignment) and no partition is stalled: messages wait past its committed offset and that
  offset has not moved for ``stall_timeout`` seconds. Both answer with a JSON body saying why.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastconsumer.engine import Consumer

Key = tuple[str, int]


class Watch:
    """What the probes and the per-partition gauges need, read from another thread than the consumer's.

    Only plain reads of the consumer (counters, a copy of its ``committed`` dict) and its source happen here;
    the event loop is asked to note the time (``last_turn``) and does nothing else for it.
    """

    def __init__(
        self,
        consumer: Consumer,
        *,
        stall_timeout: float = 60.0,
        liveness_timeout: float = 10.0,
        heartbeat: float = 1.0,
    ) -> None:
        self.consumer = consumer
        self.stall_timeout = stall_timeout
        self.liveness_timeout = liveness_timeout
        self.heartbeat = heartbeat
        self.last_turn = time.monotonic()
        self._asked = False  # a heartbeat is queued on the loop and has not run yet
        self._loop: Any = None  # the consumer's loop, once seen
        self._committed: dict[Key, int] = {}
        # when each partition's committed offset last moved, or the partition was last seen caught up
        self._since: dict[Key, float] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="fastconsumer-heartbeat", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    # -- the loop's heartbeat

    def _beat(self) -> None:
        while not self._closed.wait(self.heartbeat):
            loop = self.consumer.loop
            if loop is not None and loop is not self._loop:  # the run started: its clock starts now
                self.last_turn = time.monotonic()
                self._loop = loop
            if loop is not None and not self._asked and not loop.is_closed():
                self._asked = True
                try:
                    loop.call_soon_threadsafe(self._turned)
                except RuntimeError:  # the loop closed meanwhile
                    pass
            self.partitions()  # notes committed offsets that moved, between scrapes too

    def _turned(self) -> None:
        self.last_turn = time.monotonic()
        self._asked = False

    def loop_age(self) -> float:
        """Seconds since the event loop last turned; 0 before it runs."""
        if self.consumer.loop is None or self.consumer.loop is not self._loop:
            return 0.0
        return max(0.0, time.monotonic() - self.last_turn)

    # -- partitions

    def assignment(self) -> set[Key]:
        return self.consumer.source.assignment()

    def offsets(self) -> dict[Key, tuple[int | None, int | None]]:
        """``(start, end)`` of each partition where known: ``end`` the next offset to be written, ``start``
        where a member with no committed offset begins (auto.offset.reset)."""
        return {key: (w.start, w.end) for key, w in self.consumer.source.watermarks().items()}

    def partitions(self) -> dict[Key, dict[str, Any]]:
        """``{(topic, partition): {"committed", "lag", "stalled_s"}}`` for each assigned partition.

        ``lag``: messages past the committed offset (None while unknown). ``stalled_s``: seconds since the
        committed offset last moved, counted only while messages wait past it (0 when caught up).
        """
        now = time.monotonic()
        committed = dict(self.consumer.stats.committed)
        offsets = self.offsets()
        out = {}
        with self._lock:
            assigned = self.assignment()
            for key in list(self._since):
                if key not in assigned:
                    del self._since[key]
                    self._committed.pop(key, None)
            for key in assigned:
                start, end = offsets.get(key, (None, None))
                offset = committed.get(key)
                base = offset if offset is not None else start  # nothing committed yet: where it starts
                lag = max(0, end - base) if end is not None and base is not None else None
                if key not in self._since or self._committed.get(key) != offset or lag == 0:
                    self._since[key] = now
                    self._committed[key] = offset  # type: ignore[assignment]
                out[key] = {"committed": offset, "lag": lag, "stalled_s": now - self._since[key]}
        return out

    # -- the probes

    def health(self) -> tuple[bool, dict[str, Any]]:
        finished = self.consumer.summary is not None
        age = self.loop_age()
        alive = not finished and age <= self.liveness_timeout
        return alive, {"alive": alive, "loop_age_s": round(age, 3), "finished": bool(finished)}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        alive, body = self.health()
        partitions = self.partitions()
        stalled = sorted(
            f"{t}[{p}]" for (t, p), state in partitions.items() if state["stalled_s"] > self.stall_timeout
        )
        running = bool(self.consumer.running)
        ready = alive and running and bool(partitions) and not stalled
        body.update(ready=ready, running=running, partitions=len(partitions), stalled=stalled)
        return ready, body
