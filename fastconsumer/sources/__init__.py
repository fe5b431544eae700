"""Where messages come from: the contract every source keeps, the memory source and Kafka."""

from fastconsumer.sources.base import Source, SourceListener
from fastconsumer.sources.kafka import KafkaShareSource, KafkaSource
from fastconsumer.sources.memory import MemoryLog, MemorySource

__all__ = ["KafkaShareSource", "KafkaSource", "MemoryLog", "MemorySource", "Source", "SourceListener"]
