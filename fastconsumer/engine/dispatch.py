"""Dispatch: ``concurrency`` workers take runnable messages from the scheduler and run the handler.

The hot path. A worker first lets ``drive()`` run handlers that finish without suspending inside the core
(no Task, no loop trip); the first one that suspends is awaited through ``Resume``. Batch handlers get a
lane-ordered list per call. Whatever else must happen after a message is handled (room for the fetcher,
a revoke waiting, the stop) is looked at only while ``attention`` is set, never per message.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from confluent_kafka import Message

from fastconsumer.engine.retry import Recovery
from fastconsumer.engine.stats import Partition, Stats

if TYPE_CHECKING:
    from fastconsumer._core_py import Scheduler

# A worker that never had to wait yields to the loop this often, so fetching and committing keep going
# even when handlers finish without suspending.
YIELD_EVERY = 64


class Phase(enum.Enum):
    """Where a run is in its life: RUNNING, STOPPING, then FILLING if gaps need it, then CLOSING. A stop
    asked for while FILLING (a second signal, a failure) goes back to STOPPING: nothing more starts."""

    RUNNING = 1  # fetching, and handing out every runnable message
    STOPPING = 2  # nothing new starts; the running handlers finish
    FILLING = 3  # only messages below a partition's highest handled offset start, so the commit covers all
    CLOSING = 4  # workers return; the final commit follows


# Read on the hot path: a global lookup, where ``Phase.RUNNING`` goes through the enum class (4x slower).
RUNNING, STOPPING, FILLING, CLOSING = Phase


class Dispatcher:
    def __init__(
        self,
        scheduler: Scheduler,
        impl: Any,
        call: Callable[[Any], Awaitable[Any]],
        recovery: Recovery,
        stats: Stats,
        stop_at: int,
    ) -> None:
        self.scheduler = scheduler
        self.phase = RUNNING
        self._loop = asyncio.get_running_loop()
        #: Set whenever something must be looked at after a message is handled; cleared once nothing is.
        self.attention = False
        self.quiet = asyncio.Event()  # no handler runs and none can start (while not RUNNING)
        self.stats = stats
        self.stop_at = stop_at
        self._drive = impl.drive
        self._resume = impl.Resume
        self._call = call
        self._recover = recovery.recover
        self._idle: deque[asyncio.Future[None]] = deque()
        self._fill_to: dict[Partition, int] = {}
        self._watchers: list[Callable[[], bool]] = []

    def watch(self, watcher: Callable[[], bool]) -> None:
        """Call ``watcher`` after messages are handled while ``attention`` is set; it returns whether it
        still wants to be called. Set ``attention`` when it starts to want it."""
        self._watchers.append(watcher)

    def after_handled(self) -> None:
        wanted = False
        for watcher in self._watchers:
            wanted = watcher() or wanted
        if self.phase is not RUNNING:
            self.check_quiet()
            wanted = True
        self.attention = wanted

    # -- the lifecycle, moved forward by the run

    def stop(self) -> None:
        if self.phase is not CLOSING:
            self.phase = STOPPING
        self.attention = True
        self.wake(len(self._idle))

    def fill(self, fill_to: dict[Partition, int]) -> None:
        """Start only what lies below ``fill_to`` of its partition."""
        self._fill_to = fill_to
        self.phase = FILLING
        self.quiet.clear()
        self.wake(len(self._idle))

    def close(self) -> None:
        self.phase = CLOSING
        self.wake(len(self._idle))

    def check_quiet(self) -> None:
        # While handing out (running, filling), quiet also needs nothing left runnable.
        phase = self.phase
        handing_out = phase is RUNNING or phase is FILLING
        if self.stats.in_flight == 0 and (not handing_out or self.scheduler.ready() == 0):
            self.quiet.set()

    # -- waiting for work

    def wake(self, n: int) -> None:
        idle = self._idle
        while n > 0 and idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    async def _wait_for_work(self) -> None:
        if self.phase is not RUNNING:
            self.check_quiet()
        waiter = self._loop.create_future()
        self._idle.append(waiter)
        await waiter

    def _fills_gap(self, msg: Message) -> bool:
        return msg.offset() < self._fill_to.get((msg.topic(), msg.partition()), -1)  # type: ignore[operator,arg-type]

    # -- the workers

    async def worker(self) -> None:
        scheduler = self.scheduler
        stats = self.stats
        handler = self._call
        drive = self._drive
        resume = self._resume
        while True:
            phase = self.phase
            if phase is RUNNING:
                # The fast path: handlers that finish without suspending run to completion inside drive().
                finished, pending = drive(scheduler, handler, YIELD_EVERY)
                if pending is not None:
                    stats.in_flight += 1  # before any quiet check below: this one is still running
                if finished:
                    stats.handled += finished
                    if self.attention or stats.handled >= self.stop_at:
                        self.after_handled()
                if pending is None:
                    if finished:
                        await asyncio.sleep(0)  # let fetching, committing and the other workers run
                    else:
                        await self._wait_for_work()
                    continue
                msg, coro, first = pending
            elif phase is FILLING:
                msg = scheduler.pop()
                if msg is None:
                    await self._wait_for_work()
                    continue
                if not self._fills_gap(msg):
                    continue
                coro = first = None
                stats.in_flight += 1
            elif phase is CLOSING:
                return
            else:
                await self._wait_for_work()
                continue
            try:
                if coro is not None:
                    await resume(coro, first)
                elif first is not None:
                    raise first  # the handler raised before it first suspended
                else:
                    await handler(msg)
            except Exception as exc:
                outcome = await self._recover([msg], exc, msg)
                stats.in_flight -= 1
                if not outcome.done:
                    self.check_quiet()
                    continue
                scheduler.done(msg)
                if outcome is outcome.HANDLED:
                    stats.handled += 1
                self.after_handled()
                continue
            stats.in_flight -= 1
            scheduler.done(msg)
            stats.handled += 1
            if self.attention or stats.handled >= self.stop_at:
                self.after_handled()

    async def batch_worker(self, size: int) -> None:
        scheduler = self.scheduler
        stats = self.stats
        handler = self._call
        while True:
            phase = self.phase
            if phase is CLOSING:
                return
            messages = scheduler.pop_batch(size) if phase is RUNNING or phase is FILLING else []
            if phase is FILLING:
                messages = [msg for msg in messages if self._fills_gap(msg)]
            if not messages:
                await self._wait_for_work()
                continue
            n = len(messages)
            stats.in_flight += n
            try:
                await handler(messages)
                handled = n
            except Exception as exc:
                outcome = await self._recover(messages, exc, messages)
                if not outcome.done:
                    stats.in_flight -= n
                    self.check_quiet()
                    continue
                handled = n if outcome is outcome.HANDLED else 0
            stats.in_flight -= n
            scheduler.done_batch(messages)
            stats.handled += handled
            self.after_handled()
            await asyncio.sleep(0)
