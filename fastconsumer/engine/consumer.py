"""``Consumer``: the public face of the engine, for asyncio code and for threads."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Literal

from fastconsumer import core
from fastconsumer import policy as policies
from fastconsumer.engine import handler as handlers
from fastconsumer.engine.handler import AnyHandler
from fastconsumer.engine.lifecycle import Run
from fastconsumer.engine.settings import Settings
from fastconsumer.engine.stats import Stats, Summary
from fastconsumer.errors import ConfigError
from fastconsumer.loops import new_event_loop
from fastconsumer.sources.base import Source

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

log = logging.getLogger("fastconsumer")


class Consumer:
    """Runs ``handler`` on every message of ``source`` with at most ``concurrency`` calls at once.

    Offsets are committed asynchronously every ``commit_interval`` seconds and synchronously on stop, and
    never past a message whose handler has not finished: delivery is at-least-once. The keywords are those
    of ``fastconsumer.Settings``, plus ``on_error``: ``"stop"``, ``"skip"``, a ``fastconsumer.policy.Policy``
    (``DeadLetter``) or an ``async def policy(messages, error, attempts) -> Outcome``.
    """

    def __init__(
        self,
        source: Source,
        handler: AnyHandler,
        *,
        concurrency: int = 64,
        ordering: Literal["key", "partition", "unordered"] = "key",
        batch_size: int = 500,
        max_buffered: int | None = None,
        max_buffered_bytes: int = 64 * 1024 * 1024,
        max_window: int | None = None,
        commit_interval: float = 1.0,
        shutdown_timeout: float = 30.0,
        max_messages: int | None = None,
        exit_at_end: bool = False,
        retries: int = 0,
        retry_backoff_ms: float = 100.0,
        retry_backoff_max_ms: float = 10_000.0,
        handler_timeout: float | None = None,
        tracing: Literal["off", "on", "auto"] | TracerProvider = "auto",
        on_error: policies.ErrorPolicy = "stop",
    ) -> None:
        handlers.check(handler)
        self.settings = Settings(
            concurrency=concurrency,
            ordering=ordering,
            batch_size=batch_size,
            max_buffered=max_buffered,
            max_buffered_bytes=max_buffered_bytes,
            max_window=max_window,
            commit_interval=commit_interval,
            shutdown_timeout=shutdown_timeout,
            max_messages=max_messages,
            exit_at_end=exit_at_end,
            retries=retries,
            retry_backoff_ms=retry_backoff_ms,
            retry_backoff_max_ms=retry_backoff_max_ms,
            handler_timeout=handler_timeout,
            tracing=tracing,
        )
        self.policy = policies.resolve(on_error)
        if source.settles_messages:
            if ordering != "unordered":
                raise ConfigError(
                    f"ordering={ordering!r}: a share group keeps no order (other members hold the records "
                    "around each one); pass ordering='unordered'"
                )
            if exit_at_end:
                raise ConfigError("exit_at_end: a share group has no end to read to")
        elif isinstance(self.policy, policies.Release):
            raise ConfigError("on_error='release' needs a share group source (it hands records back to one)")
        self.source = source
        self.handler = handler
        self.core = core.core_impl()
        self.stats = Stats()
        self.error: BaseException | None = None
        self.summary: Summary | None = None
        self._impl = core.impl
        self._run: Run | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._running = threading.Event()  # set once consuming, or once the run ended
        self._finished = threading.Event()
        self._error_raised = False  # join() raises the run's error once
        self._started_at = 0.0
        self._elapsed = 0.0
        self._opened: asyncio.Future[None] | None = None  # for ``async with``: resolved once consuming
        self._task: asyncio.Future[Summary] | None = None
        self._asking = threading.RLock()  # request_stop() against run() setting up (RLock: signal handlers)
        self._asked: bool | None = None  # a stop asked for before the run began: whether it abandons

    # -- state, for progress displays and probes (read from any thread)

    @property
    def buffered(self) -> int:
        """Messages fetched and waiting for a handler slot."""
        return len(self._run.scheduler) if self._run is not None else 0

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
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._started_at = time.monotonic()
        run = Run(self.source, self.handler, self.settings, self.policy, self.stats, self._impl, self.core)
        with self._asking:
            self._run = run
            if self._asked is not None:  # a stop asked for before the run began
                run.stop(self._asked)
        try:
            await run.main(self._opened_now)
        finally:
            self._elapsed = time.monotonic() - self._started_at
            self.error = run.error
            self.summary = Summary.of(
                self.stats,
                source=self.source.name,
                core=self.core,
                elapsed=self._elapsed,
                error=self.error,
                acks=self.source.stats.acks,
            )
            run.ended.set()
            self._finished.set()
            self._running.set()
        if self.error is not None:
            raise self.error
        return self.summary

    def _opened_now(self) -> None:
        self._running.set()
        if self._opened is not None and not self._opened.done():
            self._opened.set_result(None)

    async def aclose(self) -> Summary | None:
        """Stop gracefully and wait until the run has ended."""
        if self._loop is None:
            return None
        self.request_stop()
        if self._run is not None:
            await self._run.ended.wait()
        return self.summary

    async def __aenter__(self) -> Consumer:
        opened = self._opened = asyncio.get_running_loop().create_future()
        task = self._task = asyncio.ensure_future(self.run())
        await asyncio.wait([task, opened], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # raises what ended it
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.request_stop()
        if self._task is not None:
            await self._task

    # -- the thread API

    def start(self, loop: Literal["auto", "uvloop", "asyncio"] = "auto") -> None:
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
        if threading.get_ident() == self._loop_thread and not self._finished.is_set():
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
        if self.error is not None and not self._error_raised:
            self._error_raised = True
            raise self.error
        return self.summary

    def request_stop(self, abandon: bool = False) -> None:
        """Ask for a graceful stop without waiting; ``abandon`` stops waiting for running handlers.

        Safe from any thread, a signal handler or a handler.
        """
        with self._asking:
            loop, run = self._loop, self._run
            if run is None:  # not running yet: the run stops as soon as it begins
                self._asked = abandon or bool(self._asked)
                return
        if loop is None or self._finished.is_set():
            return
        if threading.get_ident() == self._loop_thread:
            run.stop(abandon)
        else:
            try:
                loop.call_soon_threadsafe(run.stop, abandon)
            except RuntimeError:  # the loop closed meanwhile: the run is over
                pass
