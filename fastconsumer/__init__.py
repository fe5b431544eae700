"""fastconsumer: a Cython-accelerated, high-throughput, at-least-once Kafka consumer for asyncio."""

from fastconsumer.engine import Consumer, Settings, Summary, batch
from fastconsumer.core import core_impl
from fastconsumer.errors import ConfigError, HandlerError
from fastconsumer.sources import KafkaSource, MemoryLog, MemorySource

__all__ = [
    "ConfigError",
    "Consumer",
    "HandlerError",
    "MemoryLog",
    "MemorySource",
    "Summary",
    "batch",
    "core_impl",
]
__version__ = "0.1.0"
