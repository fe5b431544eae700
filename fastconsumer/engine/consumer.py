"""The engine: fetches batches, schedules them under an ordering, runs handlers, commits what is safe."""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import KafkaException, Message, TopicPartition

from fastconsumer import core, policy
from fastconsumer.errors import ConfigError, HandlerError, HandlerTimeout
from fastconsumer.loops import loop_name, new_event_loop
from fastconsumer.engine.settings import Settings
from fastconsumer.engine.stats import Stats, Summary
from fastconsumer.sources.base import Source

log = logging.getLogger("fastconsumer")

Handler = Callable[[Message], Awaitable[Any]]
BatchHandler = Callable[[list[Message]], Awaitable[Any]]

# A worker that never had to wait yields to the loop this often, so fetching and committing keep going
# even when handlers finish without suspending.
YIELD_EVERY = 64


def batch(handler: BatchHandler) -> BatchHandler:
    """Mark a handler as taking a list of messages (in offset order per partition and key) per call."""
    handler.__fastconsumer_batch__ = True  # type: ignore[attr-defined]
    return handler


def is_batch_handler(handler: Any) -> bool:
    return bool(getattr(handler, "__fastconsumer_batch__", False))


def _is_coroutine_function(obj: Any) -> bool:
    return inspect.iscoroutinefunction(obj) or inspect.iscoroutinefunction(getattr(obj, "__call__", None))  # noqa: B004


class Consumer:
    """Runs ``handler`` on every message of ``source`` with at most ``concurrency`` calls at once.

    Offsets are committed asynchronously every ``commit_interval`` seconds and synchronously on stop, and
    never past a message whose handler has not finished: delivery is at-least-once.
    """

    def __init__(
        self,
        source: Source,
        handler: Handler | BatchHandler,
        *,
        concurrency: int = 64,
        ordering: str = "key",
        batch_size: int = 500,
        max_buffered: int | None = None,
        commit_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        max_messages: int | None = None,
        exit_at_end: bool = False,
        retries: int = 0,
        retry_backoff_ms: float = 100.0,
        retry_backoff_max_ms: float = 10_000.0,
        handler_timeout: float | None = None,
        on_error: str | policy.ErrorPolicy = "stop",
    ) -> None:
        if not _is_coroutine_function(handler):
            raise ConfigError(f"handler {_name(handler)} must be a coroutine function (async def)")
        settings = Settings(
            concurrency=concurrency,
            ordering=ordering,
            batch_size=batch_size,
            max_buffered=max_buffered,
            commit_interval=commit_interval,
            shutdown_timeout=shutdown_timeout,
            max_messages=max_messages,
            exit_at_end=exit_at_end,
            retries=retries,
            retry_backoff_ms=retry_backoff_ms,
            retry_backoff_max_ms=retry_backoff_max_ms,
            handler_timeout=handler_timeout,
        )
        max_buffered = settings.cap
        self.settings = settings
        if isinstance(on_error, str):
            on_error = policy.named(on_error)
        impl = core.impl
        self._drive = impl.drive
        self._resume = impl.Resume
        self._tracker = impl.OffsetTracker()
        try:
            self._scheduler = impl.Scheduler(ordering, max_buffered, self._tracker)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        self.core = core.core_impl()
        self.source = source
        self.handler = handler
        self.batch = is_batch_handler(handler)
        self.concurrency = concurrency
        self.ordering = ordering
        self.batch_size = batch_size
        self.max_buffered = max_buffered
        self.commit_interval = commit_interval
        self.shutdown_timeout = shutdown_timeout
        self.max_messages = max_messages
        self.exit_at_end = exit_at_end
        self.retries = retries
        self.retry_backoff = retry_backoff_ms / 1000.0
        self.retry_backoff_max = retry_backoff_max_ms / 1000.0
        self.handler_timeout = handler_timeout
        self.on_error = on_error
        self._call = handler if handler_timeout is None else _with_timeout(handler, handler_timeout)

        self.stats = Stats()
        self.error: BaseException | None = None
        self.summary: Summary | None = None

        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()  # set once consuming, or once the run ended
        self._finished = threading.Event()
        self._stop_reported = False
        self._stopping = False
        self._dispatching = True  # workers may take messages from the scheduler
        self._exit = False  # workers return once idle
        self._fill_to: dict[tuple[str, int], int] | None = None
        self._failed_at: dict[tuple[str, int], int] = {}  # lowest failed offset per partition
        self._recommit: dict[tuple[str, int], int] = {}  # offsets whose asynchronous commit failed
        self._started_at = 0.0
        self._elapsed = 0.0
        self._low_water = max_buffered - batch_size
        self._space_wanted = False
        self._at_end = False  # every partition read to its end (with exit_at_end)
        # Set whenever something must be looked at after a message is handled; cleared once nothing is.
        self._attention = False
        self._stop_at = max_messages if max_messages is not None else sys.maxsize
        self._idle: deque[asyncio.Future] = deque()
        self._revoking: set[tuple[str, int]] = set()
        self._opened: asyncio.Future | None = None

    # -- state for progress displays

    @property
    def buffered(self) -> int:
        """Messages fetched and waiting for a handler slot."""
        return len(self._scheduler)

    @property
    def running(self) -> bool:
        return self._running.is_set() and not self._finished.is_set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the run is on (None before it runs): for probes that check the loop turns."""
        return self._loop

    def elapsed(self) -> float:
        if self._finished.is_set() or not self._started_at:
            return self._elapsed
        return time.monotonic() - self._started_at

    # -- the asyncio API

    async def run(self) -> Summary:
        """Consume until stopped; raise ``HandlerError`` if the error policy stopped the run."""
        if self._loop is not None:
            raise RuntimeError("this Consumer has already run; create a new one")
        loop = self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._stop_event = asyncio.Event()
        self._abandon_event = asyncio.Event()
        self._space = asyncio.Event()
        self._revoked = asyncio.Event()
        self._done = asyncio.Event()
        self._quiet = asyncio.Event()
        self._started_at = time.monotonic()
        try:
            await self.source.open(self)
            self._running.set()
            if self._opened is not None:
                self._opened.set_result(None)
            log.info(
                "consuming from %s: concurrency %d, ordering %s, %s core, %s; Ctrl-C stops",
                self.source.describe(),
                self.concurrency,
                self.ordering,
                self.core,
                loop_name(loop),
            )
            fetcher = loop.create_task(self._fetch_loop(), name="fastconsumer-fetch")
            committer = loop.create_task(self._commit_loop(), name="fastconsumer-commit")
            work = self._batch_worker if self.batch else self._worker
            workers = [
                loop.create_task(work(), name=f"fastconsumer-worker-{i}") for i in range(self.concurrency)
            ]
            for task in (fetcher, *workers):
                task.add_done_callback(self._task_ended)
            try:
                await self._stop_event.wait()
            except (
                asyncio.CancelledError
            ):  # the run itself was cancelled: abandon, but still commit and close
                self._begin_stop(True)
                await self._drain(fetcher, committer, workers)
                raise
            await self._drain(fetcher, committer, workers)
        finally:
            self._elapsed = time.monotonic() - self._started_at
            self.summary = self._summarize()
            self._done.set()
            self._finished.set()
            self._running.set()
        if self.error is not None:
            raise self.error
        return self.summary

    async def aclose(self) -> Summary | None:
        """Stop gracefully and wait until the run has ended."""
        if self._loop is None:
            return None
        self.request_stop()
        await self._done.wait()
        return self.summary

    async def __aenter__(self) -> Consumer:
        loop = asyncio.get_running_loop()
        self._opened = loop.create_future()
        self._task = loop.create_task(self.run())
        await asyncio.wait([self._task, self._opened], return_when=asyncio.FIRST_COMPLETED)
        if self._task.done():
            self._task.result()  # raises what ended it
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self.request_stop()
        await self._task

    # -- the thread API (the brief's Start/Stop)

    def start(self, loop: str = "auto") -> None:
        """Start consuming on a background event loop; return once consumption is running."""
        if self._thread is not None or self._loop is not None:
            raise RuntimeError("this Consumer has already been started; create a new one")
        event_loop = new_event_loop(loop)

        def main() -> None:
            try:
                event_loop.run_until_complete(self.run())
            except BaseException:  # kept in self.error or re-raised from run(): reported by stop()/join()
                pass
            finally:
                event_loop.close()

        self._thread = threading.Thread(target=main, name="fastconsumer", daemon=True)
        self._thread.start()
        self._running.wait()
        if self._finished.is_set():
            self.join()

    def stop(self) -> Summary | None:
        """Stop fetching, wait for the handlers already started, commit, close the source.

        Idempotent, and a no-op before ``start()``. Raises the ``HandlerError`` that stopped the run, once.
        """
        if self._loop is None:
            return None
        if threading.get_ident() == self._loop_thread:
            raise RuntimeError(
                "stop() would block the consumer's own event loop; use request_stop() or aclose()"
            )
        self.request_stop()
        return self.join()

    def join(self, timeout: float | None = None) -> Summary | None:
        """Wait until the run has ended (stopped or failed) and return its summary."""
        if not self._finished.wait(timeout):
            return None
        if self._thread is not None:
            self._thread.join()
        if self.error is not None and not self._stop_reported:
            self._stop_reported = True
            raise self.error
        return self.summary

    def request_stop(self, abandon: bool = False) -> None:
        """Ask for a graceful stop without waiting; ``abandon`` stops waiting for running handlers.

        Safe from any thread, a signal handler or a handler.
        """
        loop = self._loop
        if loop is None or self._finished.is_set():
            return
        if threading.get_ident() == self._loop_thread:
            self._begin_stop(abandon)
        else:
            try:
                loop.call_soon_threadsafe(self._begin_stop, abandon)
            except RuntimeError:  # the loop closed meanwhile: the run is over
                pass

    # -- inside the loop

    def _begin_stop(self, abandon: bool) -> None:
        self._stopping = True
        self._attention = True
        self._dispatching = False
        self._stop_event.set()
        if abandon:
            self._abandon_event.set()
        self._wake_idle(len(self._idle))

    def _task_ended(self, task: asyncio.Task) -> None:
        """A fetcher or worker that dies of an exception stops the run with that error, not silently."""
        if task.cancelled() or task.exception() is None:
            return
        if self.error is None:
            self.error = task.exception()
            log.error("%s failed: %r; stopping", task.get_name(), self.error)
        self._begin_stop(False)

    def _wake_idle(self, n: int) -> None:
        idle = self._idle
        while n > 0 and idle:
            waiter = idle.popleft()
            if not waiter.done():
                waiter.set_result(None)
                n -= 1

    async def _fetch_loop(self) -> None:
        source = self.source
        scheduler = self._scheduler
        tracker = self._tracker
        batch_size = self.batch_size
        cap = self.max_buffered
        while not self._stopping:
            room = cap - len(scheduler) - self.stats.in_flight
            if room < batch_size:
                self._space.clear()
                self._space_wanted = True
                self._attention = True
                await self._space.wait()
                continue
            # The source may fetch the next batch while this one is handled, within what the cap leaves.
            messages = await source.fetch(batch_size, room - batch_size)
            if not messages:
                if self.exit_at_end and source.at_end():
                    self._at_end = True
                    self._attention = True
                    self._end_if_all_handled()
                continue
            self._at_end = False
            tracker.track_messages(messages)
            scheduler.extend(messages)
            self.stats.consumed += len(messages)
            self._wake_idle(scheduler.ready())

    async def _wait_for_work(self) -> None:
        if self._stopping:
            self._check_quiet()
        waiter = self._loop.create_future()  # type: ignore[union-attr]
        self._idle.append(waiter)
        await waiter

    def _fills_gap(self, msg: Message) -> bool:
        """While stopping: run only messages below a partition's highest handled offset, so the final commit
        covers every message handled and nothing is delivered twice."""
        return msg.offset() < self._fill_to.get((msg.topic(), msg.partition()), -1)  # type: ignore[union-attr]

    def _check_quiet(self) -> None:
        if self.stats.in_flight == 0 and (not self._dispatching or self._scheduler.ready() == 0):
            self._quiet.set()

    def _after_handled(self) -> None:
        """What may follow a handled message, off the per-message path: ``_attention`` says when to look."""
        if self._space_wanted and len(self._scheduler) + self.stats.in_flight <= self._low_water:
            self._space_wanted = False
            self._space.set()
        if self._revoking:
            self._revoked.set()
        if self._stopping:
            self._check_quiet()
        elif self.stats.handled >= self._stop_at:
            self._begin_stop(False)
        elif self._at_end:
            self._end_if_all_handled()
        self._attention = self._space_wanted or self._stopping or self._at_end or bool(self._revoking)

    def _end_if_all_handled(self) -> None:
        if self.stats.in_flight == 0 and len(self._scheduler) == 0 and not self._stopping:
            log.info("every assigned partition read to its end and handled; stopping")
            self._begin_stop(False)

    async def _worker(self) -> None:
        scheduler = self._scheduler
        handler = self._call
        drive = self._drive
        resume = self._resume
        while True:
            if not self._dispatching:
                if self._exit:
                    return
                await self._wait_for_work()
                continue
            if self._fill_to is None:
                # The fast path: handlers that finish without suspending run to completion inside drive().
                finished, pending = drive(scheduler, handler, YIELD_EVERY)
                if pending is not None:
                    self.stats.in_flight += 1  # before any quiet check below: this one is still running
                if finished:
                    self.stats.handled += finished
                    if self._attention or self.stats.handled >= self._stop_at:
                        self._after_handled()
                if pending is None:
                    if finished:
                        await asyncio.sleep(0)  # let fetching, committing and the other workers run
                    elif self._exit:
                        return
                    else:
                        await self._wait_for_work()
                    continue
                msg, coro, first = pending
            else:
                msg = scheduler.pop()
                if msg is None:
                    if self._exit:
                        return
                    await self._wait_for_work()
                    continue
                if not self._fills_gap(msg):
                    continue
                coro = first = None
                self.stats.in_flight += 1
            try:
                if coro is not None:
                    await resume(coro, first)
                elif first is not None:
                    raise first  # the handler raised before it first suspended
                else:
                    await handler(msg)
                handled = 1
            except Exception as exc:
                handled = await self._recover([msg], exc, msg)
                if handled < 0:
                    self.stats.in_flight -= 1
                    self._check_quiet()
                    continue
            self.stats.in_flight -= 1
            scheduler.done(msg)
            self.stats.handled += handled
            if self._attention or self.stats.handled >= self._stop_at:
                self._after_handled()

    async def _batch_worker(self) -> None:
        scheduler = self._scheduler
        handler = self._call
        size = self.batch_size
        while True:
            messages = scheduler.pop_batch(size) if self._dispatching else []
            if self._fill_to is not None:
                messages = [msg for msg in messages if self._fills_gap(msg)]
            if not messages:
                if self._exit:
                    return
                await self._wait_for_work()
                continue
            n = len(messages)
            self.stats.in_flight += n
            try:
                await handler(messages)
                handled = n
            except Exception as exc:
                handled = await self._recover(messages, exc, messages)
                if handled < 0:
                    self.stats.in_flight -= n
                    self._check_quiet()
                    continue
            self.stats.in_flight -= n
            scheduler.done_batch(messages)
            self.stats.handled += handled
            self._after_handled()
            await asyncio.sleep(0)

    async def _recover(self, messages: list[Message], exc: Exception, arg: Any) -> int:
        """Retry a failed call with exponential backoff and jitter, then ask the error policy.

        Returns how many messages to count as handled (0 when the policy let them pass), or -1 when they
        stay unacked: the policy stopped the consumer, or a stop came while they waited for a retry. The
        slot stays taken meanwhile, and the lane held: later messages of the key wait, other keys go on.
        """
        attempts = 1
        while attempts <= self.retries:
            delay = min(self.retry_backoff_max, self.retry_backoff * 2 ** (attempts - 1))
            delay *= random.uniform(0.5, 1.0)
            first = messages[0]
            log.warning(
                "%s[%d]@%d failed (attempt %d of %d), retrying in %.0f ms: %s: %s",
                first.topic(),
                first.partition(),
                first.offset(),
                attempts,
                self.retries + 1,
                delay * 1000,
                type(exc).__name__,
                exc,
            )
            self.stats.retried += len(messages)
            if await self._stopped_within(delay):
                return -1  # not handled, not failed: delivered again next time
            try:
                await self._call(arg)
                return len(messages)
            except Exception as again:
                exc = again
                attempts += 1
        self.stats.failed += len(messages)
        try:
            done = await self.on_error(messages, exc, attempts)
        except Exception as policy_exc:  # a policy that fails cannot vouch for the message
            log.error(
                "error policy %s failed: %s", getattr(self.on_error, "name", _name(self.on_error)), policy_exc
            )
            exc, done = policy_exc, False
        if done:
            if getattr(self.on_error, "name", None) == "dlq":
                self.stats.dead_lettered += len(messages)
            else:
                self.stats.skipped += len(messages)
            return 0
        # The lanes stay held and the offsets unacked: nothing at or after the failed message is committed.
        failed_at = self._failed_at
        for msg in messages:
            key = (msg.topic(), msg.partition())
            failed_at[key] = min(msg.offset(), failed_at.get(key, msg.offset()))
        if self.error is None:
            self.error = HandlerError.for_message(messages[0], exc)
            log.error("%s; stopping", self.error)
        self._begin_stop(False)
        return -1

    async def _stopped_within(self, delay: float) -> bool:
        if self._stopping:
            return True
        try:
            await asyncio.wait_for(self._stop_event.wait(), delay)
        except asyncio.TimeoutError:
            return False
        return True

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.commit_interval)
            self._commit_async()

    def _commit_async(self) -> None:
        offsets = {(t, p): o for t, p, o in self._tracker.committable()}
        if self._recommit:  # failed commits are sent again, never skipped
            owned = set(self._tracker.partitions())
            for key, offset in self._recommit.items():
                if key in owned:
                    offsets.setdefault(key, offset)
            self._recommit.clear()
        if offsets:
            self.source.commit([TopicPartition(t, p, o) for (t, p), o in offsets.items()])

    def on_commit(self, offsets: list[TopicPartition], error: KafkaException | None) -> None:
        if error is not None:
            self.stats.commit_failures += 1
            log.warning("asynchronous commit failed; sending it again with the next one: %s", error)
            for tp in offsets:
                key = (tp.topic, tp.partition)
                if tp.offset > self.stats.committed.get(key, -1):
                    self._recommit[key] = max(tp.offset, self._recommit.get(key, -1))
            return
        for tp in offsets:
            self.stats.committed[(tp.topic, tp.partition)] = tp.offset

    async def _commit_sync(self, positions: list[tuple[str, int, int]], attempts: int = 5) -> None:
        """Commit and wait; a broker that is restarting gets a few tries with backoff before this fails."""
        pending = [(t, p, o) for t, p, o in positions if self.stats.committed.get((t, p)) != o]
        if not pending:
            return
        offsets = [TopicPartition(t, p, o) for t, p, o in pending]
        for attempt in range(1, attempts + 1):
            try:
                await self.source.commit_sync(offsets)
                break
            except Exception as exc:
                self.stats.commit_failures += 1
                if attempt == attempts:
                    raise
                log.warning("final commit failed (attempt %d of %d), retrying: %s", attempt, attempts, exc)
                await asyncio.sleep(0.5 * 2 ** (attempt - 1))
        for t, p, o in pending:
            self.stats.committed[(t, p)] = o

    async def on_revoke(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        """Stop dispatching the revoked partitions, let their running handlers finish (for at most
        ``shutdown_timeout``), forget them, and return their safe offsets for the source to commit."""
        keys = [(tp.topic, tp.partition) for tp in partitions]
        queued = {key: self._scheduler.drop(*key) for key in keys}
        self._revoking.update(keys)
        self._attention = True
        try:
            # Once the workers are gone (the run is closing) no handler can still be running; a failed or
            # abandoned message stays unacked for good, so waiting for it would only wait out the timeout.
            running = self._until_handled(queued) if not self._exit else asyncio.sleep(0)
            waited = asyncio.ensure_future(running)
            done, _ = await asyncio.wait([waited], timeout=self.shutdown_timeout)
            if not done:
                waited.cancel()
                log.warning(
                    "revoke: handlers still running after %ss; their messages go back", self.shutdown_timeout
                )
        finally:
            self._revoking.difference_update(keys)
        offsets = [
            TopicPartition(t, p, o)
            for t, p, o in self._tracker.positions()
            if (t, p) in queued and self.stats.committed.get((t, p)) != o
        ]
        for key in keys:
            self._tracker.drop(*key)
        for tp in offsets:  # the source commits them before it lets the partitions go
            self.stats.committed[(tp.topic, tp.partition)] = tp.offset
        return offsets

    async def _until_handled(self, queued: dict[tuple[str, int], int]) -> None:
        while any(self._tracker.pending(*key) > n for key, n in queued.items()):
            self._revoked.clear()
            await self._revoked.wait()

    def on_lost(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            self._scheduler.drop(tp.topic, tp.partition)
            self._tracker.drop(tp.topic, tp.partition)
            self.stats.committed.pop((tp.topic, tp.partition), None)

    async def _drain(
        self, fetcher: asyncio.Task, committer: asyncio.Task, workers: list[asyncio.Task]
    ) -> None:
        """The graceful stop: no new fetches, let running handlers finish, fill the gaps below what they
        handled, commit, close. Bounded by ``shutdown_timeout``; a second stop abandons the handlers."""
        fetcher.cancel()
        committer.cancel()
        await asyncio.gather(fetcher, committer, return_exceptions=True)
        deadline = self._loop.time() + self.shutdown_timeout  # type: ignore[union-attr]
        settled = await self._settle(deadline)
        if settled:
            # A failed message caps its partition: everything below it is handled, nothing at or above it.
            fill_to = {(t, p): f for t, p, f in self._tracker.frontiers()}
            fill_to.update(self._failed_at)
            if fill_to:
                self._fill_to = fill_to
                self._dispatching = True
                self._quiet.clear()
                self._wake_idle(len(self._idle))
                settled = await self._settle(deadline)
        self._dispatching = False
        self._exit = True
        if not settled:
            self.stats.abandoned = self.stats.in_flight
            log.warning(
                "abandoning %d running handler(s); their messages stay uncommitted", self.stats.in_flight
            )
            for task in workers:
                task.cancel()
        self._wake_idle(len(self._idle))
        await asyncio.gather(*workers, return_exceptions=True)
        try:
            await self._commit_sync(self._tracker.positions())
        except Exception as exc:
            log.error("final commit failed: %s", exc)
            if self.error is None:
                self.error = exc
        finally:
            close = getattr(self.on_error, "close", None)
            if close is not None:
                await close()
            await self.source.close()

    async def _settle(self, deadline: float) -> bool:
        """Wait until no handler runs and none can start; False on timeout or abandon."""
        self._check_quiet()
        if not self._quiet.is_set() and not self._abandon_event.is_set():
            quiet = asyncio.ensure_future(self._quiet.wait())
            abandon = asyncio.ensure_future(self._abandon_event.wait())
            timeout = max(0.0, deadline - self._loop.time())  # type: ignore[union-attr]
            await asyncio.wait([quiet, abandon], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            quiet.cancel()
            abandon.cancel()
        return self._quiet.is_set() and not self._abandon_event.is_set()

    def _summarize(self) -> Summary:
        return Summary.of(
            self.stats, source=self.source.name, core=self.core, elapsed=self._elapsed, error=self.error
        )


def _with_timeout(handler: Any, timeout: float) -> Any:
    async def timed(arg: Any) -> Any:
        try:
            return await asyncio.wait_for(handler(arg), timeout)
        except asyncio.TimeoutError:
            raise HandlerTimeout(f"handler did not finish within {timeout:g} s") from None

    return timed


def _name(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qualname}" if module else qualname
