"""The handler that runs without ``--handler``: it parses each message's JSON and waits ``--latency-ms``, as a
handler that calls a downstream service would, so the CLI shows what the consumer does with no code."""

from __future__ import annotations

import asyncio
import json

from confluent_kafka import Message

from fastconsumer.engine import Handler


def make_handler(latency_ms: float = 1.0) -> Handler:
    latency = latency_ms / 1000.0

    async def handle(msg: Message) -> None:
        value = msg.value()
        if value is None:
            raise ValueError("the message has no value (a tombstone): no JSON to parse")
        json.loads(value)  # a payload that does not parse is a handler failure, under the error policy
        if latency > 0:
            await asyncio.sleep(latency)

    return handle
