"""The built-in demo handler: parse the brief's JSON, then wait as if calling a downstream service."""

from __future__ import annotations

import asyncio
import json

from confluent_kafka import Message

from fastconsumer.engine import Handler


def make_handler(latency_ms: float = 1.0) -> Handler:
    latency = latency_ms / 1000.0

    async def handle(msg: Message) -> None:
        json.loads(msg.value())  # a payload that does not parse is a handler failure, under the error policy
        if latency > 0:
            await asyncio.sleep(latency)

    return handle
