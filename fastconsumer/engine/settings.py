"""How a consumer runs: every engine option in one validated value, checked before anything starts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastconsumer.errors import ConfigError

ORDERINGS = ("key", "partition", "unordered")


@dataclass(frozen=True)
class Settings:
    """The engine's options; ``Consumer`` takes them as keywords. A bad value is a ``ConfigError`` naming it.

    The command line's ``--processes`` parent builds one to check the flags without starting anything.
    """

    concurrency: int = 64
    ordering: str = "key"
    batch_size: int = 500
    max_buffered: int | None = None  # None: 10 x the first look-ahead (4 x batch_size or 8 x concurrency)
    max_buffered_bytes: int = 64 * 1024 * 1024
    max_window: int | None = None  # None: 2 x max_buffered
    commit_interval: float = 1.0
    shutdown_timeout: float = 30.0
    max_messages: int | None = None
    exit_at_end: bool = False
    retries: int = 0
    retry_backoff_ms: float = 100.0
    retry_backoff_max_ms: float = 10_000.0
    handler_timeout: float | None = None
    tracing: Any = "auto"  # "off", "on", "auto" or an OpenTelemetry TracerProvider: fastconsumer/tracing.py

    def __post_init__(self) -> None:
        for name in ("concurrency", "batch_size"):
            _check_int(name, getattr(self, name), 1)
        if not isinstance(self.ordering, str) or self.ordering not in ORDERINGS:
            raise ConfigError(f"ordering must be one of {', '.join(ORDERINGS)}; got {self.ordering!r}")
        if self.max_buffered is not None:
            _check_int("max_buffered", self.max_buffered, 1)
            if self.max_buffered < self.batch_size:
                raise ConfigError(
                    f"max_buffered ({self.max_buffered}) must be >= batch_size ({self.batch_size})"
                )
        _check_int("max_buffered_bytes", self.max_buffered_bytes, 1)
        if self.max_window is not None:
            _check_int("max_window", self.max_window, 1)
            if self.max_window < self.cap:
                raise ConfigError(f"max_window ({self.max_window}) must be >= max_buffered ({self.cap})")
        _check_seconds("commit_interval", self.commit_interval, positive=True)
        _check_seconds("shutdown_timeout", self.shutdown_timeout, positive=False)
        if self.max_messages is not None:
            _check_int("max_messages", self.max_messages, 1)
        _check_int("retries", self.retries, 0)
        _check_seconds("retry_backoff_ms", self.retry_backoff_ms, positive=True)
        _check_seconds("retry_backoff_max_ms", self.retry_backoff_max_ms, positive=True)
        if self.retry_backoff_ms > self.retry_backoff_max_ms:
            raise ConfigError(
                f"retry backoff must satisfy 0 < retry_backoff_ms ({self.retry_backoff_ms}) "
                f"<= retry_backoff_max_ms ({self.retry_backoff_max_ms})"
            )
        if self.handler_timeout is not None:
            _check_seconds("handler_timeout", self.handler_timeout, positive=True)
        from fastconsumer.tracing import check_mode  # here: the tracing module imports the engine's

        check_mode(self.tracing)

    @property
    def lookahead(self) -> int:
        """Messages the engine holds at first, buffered and in flight; it grows up to ``cap`` while handler
        slots starve behind the ordering (``engine/lookahead.py``)."""
        return min(max(4 * self.batch_size, 8 * self.concurrency), self.cap)

    @property
    def cap(self) -> int:
        """Messages the engine holds at most, buffered and in flight (and at most ``max_buffered_bytes``)."""
        if self.max_buffered is not None:
            return self.max_buffered
        return 10 * max(4 * self.batch_size, 8 * self.concurrency)

    @property
    def window(self) -> int:
        """Offsets the engine tracks at most: from each partition's lowest unfinished offset to the newest
        fetched, handled ones between included. A handler stuck on one message stops fetching here."""
        return self.max_window if self.max_window is not None else 2 * self.cap


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_seconds(name: str, value: object, *, positive: bool) -> None:
    ok = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > 0 if positive else value >= 0)
    )
    if not ok:
        raise ConfigError(f"{name} must be {'>' if positive else '>='} 0, got {value!r}")
