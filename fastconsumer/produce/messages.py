"""The test messages: message ``i`` is ``{"foo": "foo<i>", "bar": "bar<i>"}``, optionally padded to a fixed
size, so a test can tell from a value which message it is and whether anything was lost or repeated."""

from __future__ import annotations

_BASE = '{"foo": "foo%d", "bar": "bar%d"}'
_PAD_FIELD = ', "pad": "'


def template(digits: int, size: int | None) -> bytes:
    """``template % (i, i)`` is the value of every message ``i`` with ``digits`` digits: one %-format per
    message is all the producer's hot loop does. With a ``size``, all of them are ``size`` bytes long
    (``ValueError`` if they do not fit)."""
    if size is None:
        return _BASE.encode()
    head, tail = _BASE[:-1] + _PAD_FIELD, '"}'
    pad = size - (len(head) - len("%d%d") + 2 * digits + len(tail))
    if pad < 0:
        raise ValueError(f"size {size} is too small: the JSON of a {digits}-digit i needs {size - pad} bytes")
    return (head + "x" * pad + tail).encode()


def message_value(i: int, size: int | None = None) -> bytes:
    """Message ``i``'s value: ``{"foo": "foo<i>", "bar": "bar<i>"}``; with ``size``, a ``"pad"`` field of
    ``x`` makes it exactly ``size`` bytes (``ValueError`` if it does not fit)."""
    return template(len(str(i)), size) % (i, i)


def segments(start: int, count: int, size: int | None) -> list[tuple[int, int, bytes]]:
    """``(lo, hi, template)`` for each run ``lo <= i < hi`` of ``i`` with the same number of digits."""
    out = []
    lo, end = start, start + count
    while lo < end:
        digits = len(str(lo))
        hi = min(end, 10**digits)
        out.append((lo, hi, template(digits, size)))
        lo = hi
    return out
