"""What every Kafka measurement shares, without importing fastconsumer: bench/peers.py runs the
Pyrallel-Consumer rows under a Python (3.12) that has no fastconsumer installed."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

#: What fastconsumer sets (fastconsumer.kafka.DEFAULTS) and the ceiling and the librdkafka-based peers get
#: too, so they differ in how they use the client, not in this one knob. librdkafka's default (1000 ms)
#: stalls any consumer that drains its fetch queue faster than that: the "default backoff" row shows by how
#: much.
FAST_BACKOFF = {"fetch.queue.backoff.ms": 10}
TIMEOUT = 300.0  # seconds any one run may take before it counts as hung


def new_group(what: str) -> str:
    return f"bench-{what}-{uuid.uuid4().hex[:12]}"


@dataclass
class Run:
    """One read of a topic: ``messages`` handled, with monotonic timestamps."""

    messages: int
    started: float  # just before the client was made
    first: float  # first message fetched or handled
    last: float  # last message handled (counted)
    ended: float  # client closed

    def row(self) -> dict[str, Any]:
        steady = self.last - self.first
        return {
            "messages": self.messages,
            "msgs_per_s": self.messages / steady if steady > 0 else None,
            "msgs_per_s_incl_join": self.messages / (self.last - self.started),
            "join_s": round(self.first - self.started, 4),
            "stop_s": round(self.ended - self.last, 4),
            "elapsed_s": round(self.ended - self.started, 4),
        }
