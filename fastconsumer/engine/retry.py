"""A failed handler call: retried with backoff and jitter, then settled by the error policy."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from confluent_kafka import Message

from fastconsumer.engine.settings import Settings
from fastconsumer.engine.stats import Partition, Stats
from fastconsumer.errors import HandlerError
from fastconsumer.policy import POLICY_OUTCOMES, Outcome, Policy

log = logging.getLogger("fastconsumer")


class Recovery:
    """Turns a handler's exception into an ``Outcome``.

    While a call waits for its retry its slot stays taken and its lane held: later messages of the key wait,
    other keys go on. ``stopped`` cuts the backoff short. A message the policy stops on caps its partition
    at its offset (``failed_at``) and ``fail`` stops the run. Once a revoke of its partitions has begun
    (``revoking``; ``revoked`` wakes a backoff) a call is neither retried nor given to the policy: the next
    owner handles it.
    """

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        call: Callable[[Any], Awaitable[Any]],
        stats: Stats,
        stopped: asyncio.Event,
        fail: Callable[[BaseException], None],
        revoking: set[Partition],
        revoked: asyncio.Event,
    ) -> None:
        self.retries = settings.retries
        self.backoff = settings.retry_backoff_ms / 1000.0
        self.backoff_max = settings.retry_backoff_max_ms / 1000.0
        self.policy = policy
        self.call = call
        self.stats = stats
        self.stopped = stopped
        self.fail = fail
        self.revoking = revoking
        self.revoked = revoked
        self.failed_at: dict[Partition, int] = {}  # lowest offset per partition the policy stopped on
        #: What the policy may return: RELEASED too when the source settles messages (lifecycle.py).
        self.outcomes: tuple[Outcome, ...] = POLICY_OUTCOMES

    async def recover(
        self, messages: list[Message], error: BaseException, arg: Any, ours: Callable[[], bool]
    ) -> Outcome:
        """``arg`` is what the handler takes: the message, or the list for a batch handler. ``error`` is
        an ``Exception``, or a ``CancelledError`` the engine did not ask for; ``ours()`` tells whether a
        cancellation is the engine's, which is then raised for the worker to settle."""
        attempts = 1
        while attempts <= self.retries:
            if self._revoked(messages):
                return Outcome.REVOKED
            delay = min(self.backoff_max, self.backoff * 2 ** (attempts - 1)) * random.uniform(0.5, 1.0)
            first = messages[0]
            log.warning(
                "%s[%d]@%d failed (attempt %d of %d), retrying in %.0f ms: %s: %s",
                first.topic(),
                first.partition(),
                first.offset(),
                attempts,
                self.retries + 1,
                delay * 1000,
                type(error).__name__,
                error,
            )
            self.stats.retried += len(messages)
            if await self._stopped_within(delay):
                return Outcome.INTERRUPTED  # not handled, not failed: delivered again next time
            if self._revoked(messages):
                return Outcome.REVOKED
            try:
                await self.call(arg)
                return Outcome.HANDLED
            except (Exception, asyncio.CancelledError) as again:
                if isinstance(again, asyncio.CancelledError) and ours():
                    raise
                error = again
                attempts += 1
        if self._revoked(messages):
            return Outcome.REVOKED
        self.stats.failed += len(messages)
        cause: BaseException = error
        try:
            outcome = await self.policy(messages, error, attempts)
            if outcome not in self.outcomes:
                raise TypeError(
                    f"error policy {self.policy.name} returned {outcome!r}; return "
                    + ", ".join(f"Outcome.{o.name}" for o in self.outcomes)
                )
        except (Exception, asyncio.CancelledError) as policy_error:  # it cannot vouch for the message
            if isinstance(policy_error, asyncio.CancelledError) and ours():
                raise
            log.error("error policy %s failed: %s", self.policy.name, policy_error)
            cause, outcome = policy_error, Outcome.STOPPED
        if outcome is Outcome.SKIPPED:
            self.stats.skipped += len(messages)
        elif outcome is Outcome.DEAD_LETTERED:
            self.stats.dead_lettered += len(messages)
        elif outcome is Outcome.RELEASED:
            self.stats.released += len(messages)
        else:  # the lanes stay held and the offsets unacked: nothing at or after it is committed
            failed_at = self.failed_at
            for msg in messages:
                key, offset = _position(msg)
                failed_at[key] = min(offset, failed_at.get(key, offset))
            self.fail(HandlerError.for_message(messages[0], cause))
        return outcome

    def _revoked(self, messages: list[Message]) -> bool:
        """All of them belong to partitions being revoked (a batch with others runs its course)."""
        revoking = self.revoking
        return bool(revoking) and all((m.topic(), m.partition()) in revoking for m in messages)

    async def _stopped_within(self, delay: float) -> bool:
        """Wait out a backoff; True when a stop came meanwhile. A revoke cuts it short too."""
        if self.stopped.is_set():
            return True
        stopped = asyncio.ensure_future(self.stopped.wait())
        revoked = asyncio.ensure_future(self.revoked.wait())
        try:
            await asyncio.wait([stopped, revoked], timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            revoked.cancel()
        return self.stopped.is_set()


def _position(msg: Message) -> tuple[Partition, int]:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None and partition is not None and offset is not None  # set on every fetched one
    return (topic, partition), offset
