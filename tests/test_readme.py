"""The README's library example runs as written against the code (with its two placeholders defined)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_the_library_example_runs():
    example = re.search(r"## The library\n\n```python\n(.*?)```", README.read_text(), re.S).group(1)
    saved = []

    async def save(key, value):
        saved.append(key)

    async def quarantine(messages, error):
        pass

    scope = {"save": save, "quarantine": quarantine}
    exec(compile(example, str(README), "exec"), scope)
    summary = scope["summary"]
    assert summary.error is None and summary.handled == len(saved)
    assert sum(c["offset"] for c in summary.committed) == summary.handled  # a clean stop: all, once
    assert scope["consumer"].settings.retries == 3  # the Kafka consumer, made without reaching a broker
