"""The look-ahead sweep's data: topic shapes, how they are filled, and each row's ideal.

A 1 ms handler at concurrency 64 keeps 64 calls running only if the ordering lets 64 messages run at once:
the data decides how many can. Each row's ideal is what its data allows, with the event loop's own ceilings
measured in the same run (``io(n)``: ``n`` coroutines looping on ``await asyncio.sleep(0.001)``):

    ideal = min(io(min(concurrency, lanes)), io(1) * messages / messages in the busiest lane)

``lanes``: how many messages may run at once (key ordering: distinct keys, each living in one partition;
partition ordering: partitions holding messages; unordered: no limit). The second term is the busiest lane
running flat out while the others are done: a hot key or a hot partition bounds the rate.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from confluent_kafka import Producer

from fastconsumer.produce.messages import message_value
from fastconsumer.produce.producer import DEFAULT_CONFIG

KEYS = (1, 8, 97, 1_000, 100_000)
PARTITIONS = (1, 4, 16)
ORDERINGS = ("key", "partition", "unordered")
CONCURRENCY = 64
MESSAGE_SIZE = 100


@dataclass(frozen=True)
class Shape:
    """A topic's data: ``keys`` distinct keys spread over ``partitions`` partitions by librdkafka's default
    partitioner (as a keyed producer places them), each key carrying as many messages, except:
    ``hot_key`` (a share of all messages carried by one key) and ``hot_partition`` (a share of all messages
    written to partition 0, with keys of their own)."""

    keys: int
    partitions: int
    hot_key: float = 0.0
    hot_partition: float = 0.0

    @property
    def name(self) -> str:
        if self.hot_key:
            return f"{self.keys} keys, one carrying {self.hot_key:.0%}, {self.partitions} partitions"
        if self.hot_partition:
            return f"{self.keys} keys, {self.partitions} partitions, one carrying {self.hot_partition:.0%}"
        return f"{self.keys:,} keys, {self.partitions} partition{'s' if self.partitions > 1 else ''}"

    @property
    def slug(self) -> str:
        skew = f"-hotkey{self.hot_key:g}" if self.hot_key else ""
        skew += f"-hotpart{self.hot_partition:g}" if self.hot_partition else ""
        return f"k{self.keys}-p{self.partitions}{skew}"

    def place(self, i: int) -> tuple[int, int | None]:
        """Message ``i``'s key number and partition (None: the partitioner's choice by key)."""
        if self.hot_key:
            # every 1/hot_key-th message (half: every other) is key 0; the rest cycle over the others
            period = round(1 / self.hot_key)
            if i % period == 0:
                return 0, None
            return 1 + (i - i // period - 1) % (self.keys - 1), None
        if self.hot_partition:
            # hot_partition of the messages go to partition 0 with keys of its own; the rest to the others
            period = round(1 / (1 - self.hot_partition))
            per = self.keys // self.partitions
            if i % period:
                return (i % per) * self.partitions, 0
            j = i // period
            p = 1 + j % (self.partitions - 1)
            return p + self.partitions * ((j // (self.partitions - 1)) % per), p
        return i % self.keys, None


SHAPES = [Shape(k, p) for p in PARTITIONS for k in KEYS] + [
    Shape(97, 4, hot_key=0.5),
    Shape(1_000, 4, hot_partition=0.9),
]


def fill(bootstrap: str, topic: str, shape: Shape, count: int) -> dict[str, int]:
    """Produce ``count`` messages of ``shape`` to ``topic`` (made beforehand with its partitions); return the
    messages per lane: ``{"key": busiest key's count, "partition": busiest partition's count, "keys": distinct
    keys, "partitions": partitions holding messages}``."""
    producer = Producer({"bootstrap.servers": bootstrap, **DEFAULT_CONFIG})
    keys: Counter[int] = Counter()
    for i in range(count):
        k, p = shape.place(i)
        keys[k] += 1
        value = message_value(i, MESSAGE_SIZE)
        key = b"key-%d" % k
        while True:
            try:
                if p is None:
                    producer.produce(topic, value, key)
                else:
                    producer.produce(topic, value, key, partition=p)
                break
            except BufferError:
                producer.poll(0.1)
        if i % 10_000 == 0:
            producer.poll(0)
    if producer.flush(60):
        raise RuntimeError(f"{topic}: messages left undelivered after 60 s")
    return {"key": max(keys.values()), "keys": len(keys)}


def lanes(ordering: str, shape_counts: dict[str, int], partitions: dict[int, int]) -> tuple[int, int]:
    """``(lanes, messages in the busiest lane)`` of a filled topic under ``ordering``; ``partitions`` is its
    end offset per partition."""
    total = sum(partitions.values())
    if ordering == "key":
        return shape_counts["keys"], shape_counts["key"]
    if ordering == "partition":
        return sum(1 for n in partitions.values() if n), max(partitions.values())
    return total, 1


def ideal(io: dict[int, float], concurrency: int, n_lanes: int, busiest: int, total: int) -> float:
    """What the data allows (module docstring); ``io[n]``: the measured ceiling of ``n`` coroutines."""
    width = io[min(concurrency, n_lanes)]
    return min(width, io[1] * total / busiest) if busiest > 1 else width
