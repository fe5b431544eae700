"""The Kafka source: a consumer-group member on confluent-kafka, one thread owning the client."""

from fastconsumer.sources.kafka.config import DEFAULTS, SourceError
from fastconsumer.sources.kafka.source import KafkaSource

__all__ = ["DEFAULTS", "KafkaSource", "SourceError"]
