"""What a handler is: a coroutine function of one message, or of a list with ``@batch``; and its wrappers."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from confluent_kafka import Message

from fastconsumer.errors import ConfigError, HandlerTimeout
from fastconsumer.histogram import Histogram
from fastconsumer.policy import Outcome

Handler = Callable[[Message], Awaitable[Any]]
BatchHandler = Callable[[list[Message]], Awaitable[Any]]
AnyHandler = Handler | BatchHandler
_B = TypeVar("_B", bound=Callable[..., Awaitable[Any]])


def batch(handler: _B) -> _B:
    """Mark a handler as taking a list of messages (in offset order per partition and key) per call."""
    handler.__fastconsumer_batch__ = True  # type: ignore[attr-defined]
    return handler


def is_batch(handler: object) -> bool:
    return getattr(handler, "__fastconsumer_batch__", False) is True


def check(handler: object) -> None:
    """Refuse what cannot be awaited per message before anything runs, naming it."""
    call = getattr(type(handler), "__call__", None)  # noqa: B004 - an object with an async __call__
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise ConfigError(f"handler {name_of(handler)} must be a coroutine function (async def)")


def with_timeout(handler: Callable[[Any], Awaitable[Any]], timeout: float) -> Callable[[Any], Awaitable[Any]]:
    async def bounded(arg: Any) -> Any:
        try:
            return await asyncio.wait_for(handler(arg), timeout)
        except asyncio.TimeoutError:
            raise HandlerTimeout(f"handler did not finish within {timeout:g} s") from None

    return bounded


def timed(handler: Callable[[Any], Awaitable[Any]], histogram: Histogram) -> Callable[[Any], Awaitable[Any]]:
    """Observe each call's duration, failed calls included: a few hundred ns a call, so only on request."""
    observe = histogram.observe
    clock = time.perf_counter

    async def call(arg: Any) -> Any:
        start = clock()
        try:
            return await handler(arg)
        finally:
            observe(clock() - start)

    return call


def settling(
    handler: Callable[[Any], Awaitable[Any]],
    settle: Callable[[list[Message], Outcome], None],
    batch: bool,
) -> Callable[[Any], Awaitable[Any]]:
    """Report each call that returns as ``HANDLED`` to a source that settles messages (``Source.settle``),
    retries included; how the others end is reported by the dispatcher."""
    handled = Outcome.HANDLED

    if batch:

        async def call_batch(messages: list[Message]) -> Any:
            result = await handler(messages)
            settle(messages, handled)
            return result

        return call_batch

    async def call(msg: Message) -> Any:
        result = await handler(msg)
        settle([msg], handled)
        return result

    return call


def name_of(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qualname}" if module else qualname
