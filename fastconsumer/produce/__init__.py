"""The load generator: fill a Kafka topic with known test messages, fast.

Tests and benchmarks of the consumer need topics holding known messages, from a thousand to millions:
``{"foo": "foo<i>", "bar": "bar<i>"}`` for consecutive ``i``, optionally padded to a fixed size and keyed.
This writes them with the same confluent-kafka (librdkafka) the consumer uses, so no other tool (kcat,
the Java console producer, Docker) is needed, and fast enough that filling a topic takes seconds::

    from fastconsumer.produce import produce

    produce("127.0.0.1:9092", "foo", 1_000_000, size=100, keys=1000, partitions=4)

or from a shell, ``python -m fastconsumer.produce --bootstrap-servers 127.0.0.1:9092 --topic foo --count
1000000 --size 100 --keys 1000 --partitions 4 --json`` (``--help`` for the rest).
"""

from fastconsumer.produce.messages import message_value
from fastconsumer.produce.producer import DEFAULT_CONFIG, ProduceError, produce

__all__ = ["DEFAULT_CONFIG", "ProduceError", "message_value", "produce"]
