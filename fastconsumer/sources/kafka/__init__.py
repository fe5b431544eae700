"""The Kafka sources: a consumer-group member on confluent-kafka, one thread owning the client; and a
share-group member (``share.py``)."""

from fastconsumer.sources.kafka.config import DEFAULTS, SourceError
from fastconsumer.sources.kafka.share import KafkaShareSource
from fastconsumer.sources.kafka.source import KafkaSource

__all__ = ["DEFAULTS", "KafkaShareSource", "KafkaSource", "SourceError"]
