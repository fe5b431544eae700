"""One run of a consumer, from opening the source to closing it: the parts wired, started and stopped in
order.

A stop stops fetching, lets the running handlers finish, then handles the messages that lanes held back
below each partition's highest handled offset (so the final commit covers every handled message and a
clean stop re-delivers nothing), commits synchronously and closes the source. ``shutdown_timeout`` bounds
the waiting; a second, abandoning stop ends it at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any

from fastconsumer import tracing
from fastconsumer.engine import handler as handlers
from fastconsumer.engine.commits import Committer
from fastconsumer.engine.dispatch import RUNNING, Dispatcher
from fastconsumer.engine.fetch import Fetcher
from fastconsumer.engine.rebalance import Rebalance
from fastconsumer.engine.retry import Recovery
from fastconsumer.engine.settings import Settings
from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.loops import loop_name
from fastconsumer.policy import SHARE_POLICY_OUTCOMES, Policy
from fastconsumer.sources.base import Source

log = logging.getLogger("fastconsumer")


class Run:
    def __init__(
        self,
        source: Source,
        handler: Callable[[Any], Awaitable[Any]],
        settings: Settings,
        policy: Policy,
        stats: Stats,
        impl: ModuleType,
        core_name: str,
    ) -> None:
        self.source = source
        self.core_name = core_name
        self.settings = settings
        self.policy = policy
        self.stats = stats
        self.error: BaseException | None = None
        self.stopping = asyncio.Event()
        self.abandoning = asyncio.Event()
        self.ended = asyncio.Event()  # set by the consumer once the run's summary is made
        call = handler
        if settings.handler_timeout is not None:
            call = handlers.with_timeout(call, settings.handler_timeout)
        if stats.handler_seconds is not None:
            call = handlers.timed(call, stats.handler_seconds)
        self.batch = handlers.is_batch(handler)
        tracer = tracing.for_run(settings.tracing, source)  # None when off: then nothing of it per message
        if tracer is not None:
            call = tracer.wrap(call, self.batch)
        settle = source.settle if source.settles_messages else None
        if settle is not None:
            call = handlers.settling(call, settle, self.batch)
        self.tracker = impl.OffsetTracker()
        self.scheduler = impl.Scheduler(settings.ordering, settings.cap, self.tracker)
        revoking: set[Partition] = set()
        revoked = asyncio.Event()
        recovery = Recovery if tracer is None else tracer.recovery
        self.recovery = recovery(settings, policy, call, stats, self.stopping, self.fail, revoking, revoked)
        if settle is not None:
            self.recovery.outcomes = SHARE_POLICY_OUTCOMES
        stop_at = settings.max_messages if settings.max_messages is not None else 2**63
        self.dispatcher = Dispatcher(
            self.scheduler, impl, call, self.recovery, stats, stop_at, self.fail, settle
        )
        self.committer = Committer(source, self.tracker, stats, settings.commit_interval)
        self.fetcher = Fetcher(
            source,
            self.scheduler,
            self.tracker,
            self.dispatcher,
            stats,
            settings,
            self.stop,
            self.committer.reset,
        )
        self.listener = Rebalance(
            self.scheduler,
            self.tracker,
            self.dispatcher,
            self.committer,
            stats,
            settings.shutdown_timeout,
            revoking,
            revoked,
            self.fetcher.skip,
        )
        self.dispatcher.watch(self._watch_limit)

    def stop(self, abandon: bool = False) -> None:
        self.dispatcher.stop()
        self.stopping.set()
        if abandon:
            self.abandoning.set()

    def fail(self, error: BaseException, what: str | None = None) -> None:
        """Stop with ``error`` (of ``what``, a task); the first error is the one the run raises."""
        if self.error is None:
            self.error = error
            if what is None:
                log.error("%s; stopping", error)
            else:
                log.error("%s failed: %r; stopping", what, error)
        self.stop()

    def _watch_limit(self) -> bool:
        if self.stats.handled >= self.dispatcher.stop_at and self.dispatcher.phase is RUNNING:
            self.stop()
        return False

    def _task_ended(self, task: asyncio.Task[None]) -> None:
        """A fetcher, committer or worker that ends before the stop asked for it (an exception, or a
        cancellation from elsewhere) stops the run with that error, not silently."""
        if self.stopping.is_set() and (task.cancelled() or task.exception() is None):
            return  # ended by the stop
        if task.cancelled():
            error: BaseException = RuntimeError(f"{task.get_name()} was cancelled from outside the consumer")
        else:
            error = task.exception() or RuntimeError(f"{task.get_name()} returned while running")
        self.fail(error, task.get_name())

    async def main(self, opened: Callable[[], None]) -> None:
        """Open the source, run until a stop, then stop in order; ``opened`` is called once consuming."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        await self.source.open(self.listener)
        opened()
        log.info(
            "consuming from %s: concurrency %d, ordering %s, %s core, %s; Ctrl-C stops",
            self.source.describe(),
            settings.concurrency,
            settings.ordering,
            self.core_name,
            loop_name(loop),
        )
        fetcher = loop.create_task(self.fetcher.loop(), name="fastconsumer-fetch")
        committer = loop.create_task(self.committer.loop(), name="fastconsumer-commit")
        workers = self.dispatcher.start(settings.concurrency, settings.batch_size if self.batch else None)
        for task in (fetcher, committer, *workers):
            task.add_done_callback(self._task_ended)
        try:
            await self.stopping.wait()
        except asyncio.CancelledError:  # the run itself was cancelled: abandon, but still commit and close
            self.stop(abandon=True)
            await self._drain(fetcher, committer, workers)
            raise
        await self._drain(fetcher, committer, workers)

    async def _drain(
        self, fetcher: asyncio.Task[None], committer: asyncio.Task[None], workers: list[asyncio.Task[None]]
    ) -> None:
        fetcher.cancel()
        committer.cancel()
        await asyncio.gather(fetcher, committer, return_exceptions=True)
        dispatcher = self.dispatcher
        deadline = asyncio.get_running_loop().time() + self.settings.shutdown_timeout
        settled = await self._settle(deadline)
        # A source that settles messages gives back what did not start (close()): nothing to fill.
        if settled and not self.source.settles_messages:
            # A failed message caps its partition: everything below it is handled, nothing at or above it.
            fill_to = {(t, p): f for t, p, f in self.tracker.frontiers()}
            fill_to.update(self.recovery.failed_at)
            if fill_to:
                dispatcher.fill(fill_to)
                settled = await self._settle(deadline)
        dispatcher.close()
        if not settled:
            self.stats.abandoned = self.stats.in_flight
            log.warning(
                "abandoning %d running handler(s); their messages stay uncommitted", self.stats.in_flight
            )
            for task in workers:
                task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        try:
            await self.committer.commit_sync()
        except Exception as exc:
            log.error("final commit failed: %s", exc)
            if self.error is None:
                self.error = exc
        finally:
            await self.policy.close()
            await self.source.close()

    async def _settle(self, deadline: float) -> bool:
        """Wait until no handler runs and none can start; False on timeout or abandon."""
        dispatcher = self.dispatcher
        dispatcher.check_quiet()
        if not dispatcher.quiet.is_set() and not self.abandoning.is_set():
            quiet = asyncio.ensure_future(dispatcher.quiet.wait())
            abandon = asyncio.ensure_future(self.abandoning.wait())
            timeout = max(0.0, deadline - asyncio.get_running_loop().time())
            await asyncio.wait([quiet, abandon], timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            quiet.cancel()
            abandon.cancel()
        return dispatcher.quiet.is_set() and not self.abandoning.is_set()
