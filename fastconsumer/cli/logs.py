"""The command line's logging: ``--log-level`` and ``--log-format text|json``, one line per record, so that
a log collector can read stderr line by line.

Every line about a message names it as ``topic[partition]@offset``; the JSON format also gives those as
``topic``, ``partition`` and ``offset`` fields (from a record's ``extra`` or, failing that, from the text).
librdkafka's own log comes through the logger ``fastconsumer.librdkafka`` and is formatted the same way.
"""

from __future__ import annotations

import json
import logging
import re
import time
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

# topic[partition]@offset, as every line about a message spells it
_MESSAGE = re.compile(r"(?P<topic>[A-Za-z0-9._-]+)\[(?P<partition>\d+)\]@(?P<offset>-?\d+)")


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``message``, and ``topic``, ``partition``,
    ``offset`` when the line is about a message (and ``process`` under ``--processes``)."""

    def __init__(self, process: int | None = None) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        if self.process is not None:
            out["process"] = self.process
        topic = getattr(record, "topic", None)
        if topic is not None:
            out["topic"] = topic
            out["partition"] = getattr(record, "partition", None)
            out["offset"] = getattr(record, "offset", None)
        else:
            found = _MESSAGE.search(message)
            if found is not None:
                out["topic"] = found["topic"]
                out["partition"] = int(found["partition"])
                out["offset"] = int(found["offset"])
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(stream: TextIO, level: str = "info", fmt: str = "text", process: int | None = None) -> None:
    """Send every ``fastconsumer`` logger (librdkafka's included) to ``stream`` at ``level``."""
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process))
    else:
        prefix = "fastconsumer" if process is None else f"fastconsumer[{process}]"
        handler.setFormatter(logging.Formatter(prefix + ": %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))
