"""fastconsumer: a Cython-accelerated, high-throughput, at-least-once Kafka consumer for asyncio."""

from fastconsumer.core import core_impl
from fastconsumer.engine import BatchHandler, Consumer, Handler, Settings, Stats, Summary, batch
from fastconsumer.errors import ConfigError, HandlerError, HandlerTimeout
from fastconsumer.policy import DeadLetter, Outcome, Policy
from fastconsumer.sources import (
    KafkaShareSource,
    KafkaSource,
    MemoryLog,
    MemorySource,
    Source,
    SourceListener,
)

__all__ = [
    "BatchHandler",
    "ConfigError",
    "Consumer",
    "DeadLetter",
    "Handler",
    "HandlerError",
    "HandlerTimeout",
    "KafkaShareSource",
    "KafkaSource",
    "MemoryLog",
    "MemorySource",
    "Outcome",
    "Policy",
    "Settings",
    "Source",
    "SourceListener",
    "Stats",
    "Summary",
    "batch",
    "core_impl",
]
__version__ = "0.1.0"
