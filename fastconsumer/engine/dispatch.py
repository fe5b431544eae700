"""Dispatch: ``concurrency`` workers take runnable messages from the scheduler and run the handler.

A handler that raises anything, a cancellation the engine did not ask for included, is a failed call for
``Recovery``; one that raises ``SystemExit`` or ``KeyboardInterrupt`` stops the run with it. The engine
cancels a call only when it abandons it (a stop's timeout) or at a revoke's deadline.

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
from fastconsumer.policy import Outcome

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
        fatal: Callable[[BaseException], None],
        settle: Callable[[list[Message], Outcome], None] | None = None,
    ) -> None:
        self.scheduler = scheduler
        #: A source's ``settle``, when it settles messages: told how each failed call ended (handled calls
        #: report themselves, ``handler.settling``).
        self._settle = settle
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
        self._recovery = recovery
        self._fatal = fatal
        self._idle: deque[asyncio.Future[None]] = deque()
        self._batch_size: int | None = None
        self._fill_to: dict[Partition, int] = {}
        self._watchers: list[Callable[[], bool]] = []
        self._tasks: list[asyncio.Task[None]] = []
        # What each worker's suspended call handles (a message, or a batch's list), for a revoke's deadline.
        self._current: list[Any] = []
        self._revoke_cancelled: set[int] = set()  # workers whose call a revoke cancelled
        self._gave_up: Callable[[list[Message]], None] = lambda messages: None

    def start(self, concurrency: int, batch_size: int | None) -> list[asyncio.Task[None]]:
        """The workers; ``batch_size`` for a batch handler."""
        self._current = [None] * concurrency
        self._batch_size = batch_size
        self._tasks = [
            self._loop.create_task(
                self._batch_worker(i, batch_size) if batch_size is not None else self._worker(i),
                name=f"fastconsumer-worker-{i}",
            )
            for i in range(concurrency)
        ]
        return self._tasks

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

    # -- revokes

    def on_give_up(self, gave_up: Callable[[list[Message]], None]) -> None:
        """Told of the messages of revoked partitions that are left unhandled (their lanes released)."""
        self._gave_up = gave_up

    def running(self, partitions: set[Partition]) -> dict[Partition, int]:
        """The highest offset of each of ``partitions`` that a call is handling now."""
        out: dict[Partition, int] = {}
        for current in self._current:
            if current is None:
                continue
            for m in current if isinstance(current, list) else [current]:
                key = (m.topic(), m.partition())
                if key in partitions and m.offset() > out.get(key, -1):
                    out[key] = m.offset()
        return out

    def cancel(self, partitions: set[Partition]) -> int:
        """Cancel the running calls that handle only messages of ``partitions``; how many. A batch that
        also holds other partitions' messages runs on: those must not be left half-done."""
        cancelled = 0
        for i, current in enumerate(self._current):
            if current is None:
                continue
            messages = current if isinstance(current, list) else [current]
            if all((m.topic(), m.partition()) in partitions for m in messages):
                self._revoke_cancelled.add(i)
                self._tasks[i].cancel()
                cancelled += 1
        return cancelled

    # -- waiting for work

    def work(self, ready: int) -> None:
        """Wake the workers that ``ready`` runnable messages need: a worker runs up to ``YIELD_EVERY``
        handlers that do not suspend (a batch worker, one batch), and one whose handler suspends wakes the
        next while messages are left (``_pass_on``). Waking one per message woke dozens for nothing."""
        per_worker = self._batch_size or YIELD_EVERY
        self.wake(-(-ready // per_worker))

    def _pass_on(self) -> None:
        if self._idle and self.scheduler.ready():
            self.wake(1)

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

    async def _worker(self, i: int) -> None:
        scheduler = self.scheduler
        stats = self.stats
        handler = self._call
        drive = self._drive
        resume = self._resume
        current = self._current
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
                self._pass_on()  # this worker waits for its handler: the next one takes what is left
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
            current[i] = msg
            try:
                if coro is not None:
                    await resume(coro, first)
                elif first is not None:
                    raise first  # the handler raised before it first suspended
                else:
                    await handler(msg)
            except BaseException as exc:
                await self._failed(i, [msg], exc, msg)
                current[i] = None
                continue
            current[i] = None
            stats.in_flight -= 1
            scheduler.done(msg)
            stats.handled += 1
            if self.attention or stats.handled >= self.stop_at:
                self.after_handled()

    async def _batch_worker(self, i: int, size: int) -> None:
        scheduler = self.scheduler
        stats = self.stats
        handler = self._call
        current = self._current
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
            current[i] = messages
            self._pass_on()
            try:
                await handler(messages)
            except BaseException as exc:
                await self._failed(i, messages, exc, messages)
                current[i] = None
                continue
            current[i] = None
            stats.in_flight -= n
            scheduler.done_batch(messages)
            stats.handled += n
            self.after_handled()
            await asyncio.sleep(0)

    async def _failed(self, i: int, messages: list[Message], error: BaseException, arg: Any) -> None:
        """A call that raised: settle it (retries, the policy), then account for how it ended."""
        outcome = await self._outcome(i, messages, error, arg)
        if self._settle is not None and outcome is not Outcome.HANDLED:
            self._settle(messages, outcome)
        self.stats.in_flight -= len(messages)
        scheduler = self.scheduler
        if outcome.done:
            scheduler.done_batch(messages)
            if outcome is Outcome.HANDLED:
                self.stats.handled += len(messages)
            self.after_handled()
        elif outcome is Outcome.REVOKED:
            for msg in messages:  # the lane passes on; the offset stays unacked, for the next owner
                scheduler.release(msg)
            self._gave_up(messages)
            self.after_handled()
        else:  # stopped, interrupted, fatal: the lanes stay held, nothing at or after them is committed
            self.check_quiet()

    async def _outcome(self, i: int, messages: list[Message], error: BaseException, arg: Any) -> Outcome:
        while True:
            try:
                if isinstance(error, asyncio.CancelledError):
                    if i in self._revoke_cancelled:  # a revoke's deadline: the engine asked for it
                        self._revoke_cancelled.discard(i)
                        _uncancel()
                        return Outcome.REVOKED
                    if self.phase is CLOSING:  # a stop abandons the call: the engine asked for it
                        raise error
                if not isinstance(error, Exception | asyncio.CancelledError):
                    self._fatal(error)
                    return Outcome.FATAL
                return await self._recovery.recover(
                    messages, error, arg, lambda: i in self._revoke_cancelled or self.phase is CLOSING
                )
            except asyncio.CancelledError as again:  # cancelled while retrying: look at why, as above
                if error is again:
                    raise
                error = again
            except BaseException as fatal:  # SystemExit or KeyboardInterrupt from a retry or the policy
                if isinstance(fatal, Exception):
                    raise
                error = fatal


def _uncancel() -> None:
    """Take back the cancellation the engine asked for, so the worker task goes on (Python 3.11+)."""
    task = asyncio.current_task()
    if task is not None and hasattr(task, "uncancel"):
        task.uncancel()
