"""The soak's members' handler (``--handler bench.soak_handler:record``): a journal of what a member did.

Each member process appends to ``$FASTCONSUMER_SOAK_RECORD`` one line per event, in the order they happened
(a line is one ``write``: a SIGKILL cuts at most the last one, which the checker ignores):

    s P O          a handler call of partition P, offset O started
    d P O KEY      ... and finished (the handler sleeps 1 ms in between, as if calling a service)
    a T P,P,...    partitions assigned (T: time.monotonic(), the machine's clock, shared by processes)
    r T P,P,...    partitions revoked: logged once the revoke drained its handlers and committed
    l T P,P,...    partitions lost (fenced: dropped without a commit)

The assignment lines come from the Kafka source's own log lines ("assigned ...", "revoked ...", "lost ...",
logger ``fastconsumer.kafka``) through a logging handler installed on import.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
from typing import Any

_lock = threading.Lock()  # the client thread logs rebalances, the event loop's thread runs handlers
# One write(2) per line on an O_APPEND descriptor: no buffer that a SIGKILL, or the interpreter's exit while
# the client thread logs a revoke, could lose or write twice.
_journal = os.open(os.environ["FASTCONSUMER_SOAK_RECORD"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
_PARTITION = re.compile(r"\[(\d+)\]")
_EVENTS = (("assigned ", "a"), ("revoked ", "r"), ("lost ", "l"))


def _write(line: str) -> None:
    data = (line + "\n").encode()
    with _lock:
        os.write(_journal, data)


class _Rebalances(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        for word, tag in _EVENTS:
            if message.startswith(word):
                partitions = ",".join(_PARTITION.findall(message.split(":")[0]))
                _write(f"{tag} {time.monotonic():.6f} {partitions}")


logging.getLogger("fastconsumer.kafka").addHandler(_Rebalances())


async def record(msg: Any) -> None:
    partition, offset = msg.partition(), msg.offset()
    _write(f"s {partition} {offset}")
    await asyncio.sleep(0.001)
    key = msg.key().decode() if msg.key() is not None else "-"
    _write(f"d {partition} {offset} {key}")
