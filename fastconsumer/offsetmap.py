"""Which offsets above a committed one are already done, as a Kafka offset commit's metadata string.

A partition's committed offset is its first offset not yet handled (``base``); handlers that run in parallel
finish offsets above it too. Committing those with the offset lets the partition's next owner skip them
instead of handling them again, as Parallel Consumer (Java) does with its ``OffsetMapCodecManager``.

``encode(base, done)`` gives a string to put in the commit's metadata (or ``None`` when it would not fit in
``limit`` bytes: commit without metadata then); ``decode(base, metadata)`` gives the done offsets back, or
raises ``OffsetMapError`` (a ``ValueError``) for metadata that is foreign, corrupt, truncated or written for
another base. Empty metadata (``""``, which is also what ``encode`` gives for nothing done) is an empty set.

The format (version 1)::

    metadata = "fc:" + base64url(payload), unpadded (RFC 4648 section 5: A-Z a-z 0-9 - _, no "=")
    payload  = version (1 byte, 0x01)
               layout  (1 byte: 0x01 run-length, 0x02 bitmap)
               span    (varint: the done offsets lie in base+1 .. base+span; base+span is done)
               body    (the layout's, below)
               crc     (4 bytes, big-endian: CRC-32 of the 8-byte big-endian base followed by every
                        payload byte before the crc)

    run-length body: varints, alternately the length of a run of offsets not done and of a run of done
        ones, from base+1 on: not-done, done, not-done, ..., done. The first run (not done) may be 0; every
        other is at least 1; the lengths add up to span.
    bitmap body: ceil(span / 8) bytes; bit i (least significant first: byte i // 8, bit i % 8) is set when
        offset base+1+i is done. The bits past span are 0.

    varint: unsigned LEB128 (7 bits a byte, least significant group first, high bit set on all but the last
        byte), at most 10 bytes, no redundant trailing zero groups.

``encode`` keeps the shorter layout, the run-length one on a tie (a bitmap that could not be shorter, or
could not fit, is never built: a span near 2**63 costs nothing). Run-length wins when done offsets come in
long runs (a few slow messages in a wide window), the bitmap when done and not-done alternate often.

The "fc:" prefix tells this metadata from any other client's; the version byte lets a later format be told
apart (a version this module does not know is an ``OffsetMapError`` too, so an older member ignores newer
metadata and handles those offsets again, never skips wrongly). The CRC covers the base, so metadata decoded
against another committed offset, cut short by a store, or altered is detected rather than read as garbage.

Pure Python and standard library only: no engine imports.
"""

from __future__ import annotations

import base64
import binascii
import re
import zlib
from collections.abc import Iterable

__all__ = [
    "BITMAP",
    "DEFAULT_LIMIT",
    "PREFIX",
    "RUN_LENGTH",
    "VERSION",
    "OffsetMapError",
    "decode",
    "encode",
    "encode_bitmap",
    "encode_run_length",
]

PREFIX = "fc:"
VERSION = 1
RUN_LENGTH = 1
BITMAP = 2
#: The broker's default ``offset.metadata.max.bytes``.
DEFAULT_LIMIT = 4096
MAX_OFFSET = 2**63 - 1  # Kafka offsets are signed 64-bit
_HEADER = 2  # version, layout
_CRC = 4
_B64 = re.compile(r"[A-Za-z0-9_-]*")


class OffsetMapError(ValueError):
    """Metadata that is not an offset map of this module for this base: foreign, corrupt, truncated, or of an
    unknown version."""


# -- encoding


def encode(base: int, done: Iterable[int], limit: int | None = DEFAULT_LIMIT) -> str | None:
    """The done offsets above ``base`` as a metadata string of at most ``limit`` bytes, or ``None`` when even
    the smaller layout would be longer (``limit=None``: no limit). ``""`` when nothing above ``base`` is
    done. Offsets at or below ``base`` are left out: those below are covered by the committed offset itself,
    and ``base`` is by definition not done."""
    offsets = _above(base, done)
    if not offsets:
        return ""
    runs = _runs(base, offsets)
    span = offsets[-1] - base
    run_length = _run_length(base, span, runs, limit)
    if run_length is not None:  # the bitmap must be shorter to win: never built when it cannot be
        limit = len(run_length) - 1 if limit is None else min(limit, len(run_length) - 1)
    return _bitmap(base, span, offsets, limit) or run_length


def encode_run_length(base: int, done: Iterable[int], limit: int | None = None) -> str | None:
    """``encode`` with the run-length layout only (``None`` when longer than ``limit``)."""
    offsets = _above(base, done)
    if not offsets:
        return ""
    return _run_length(base, offsets[-1] - base, _runs(base, offsets), limit)


def encode_bitmap(base: int, done: Iterable[int], limit: int | None = None) -> str | None:
    """``encode`` with the bitmap layout only (``None`` when longer than ``limit``)."""
    offsets = _above(base, done)
    if not offsets:
        return ""
    return _bitmap(base, offsets[-1] - base, offsets, limit)


def _above(base: int, done: Iterable[int]) -> list[int]:
    if not 0 <= base <= MAX_OFFSET:
        raise ValueError(f"base {base} is not a Kafka offset (0 .. 2**63-1)")
    offsets = sorted({o for o in done if o > base})
    if offsets and offsets[-1] > MAX_OFFSET:
        raise ValueError(f"offset {offsets[-1]} is not a Kafka offset (0 .. 2**63-1)")
    return offsets


def _runs(base: int, offsets: list[int]) -> list[int]:
    """Alternating run lengths from base+1: not done, done, not done, ..., done."""
    runs: list[int] = []
    previous = base  # the last offset of the previous done run (base stands for "before the first")
    start = None
    for o in offsets:
        if start is None:
            runs.append(o - previous - 1)
            start = o
        elif o != previous + 1:
            runs.append(previous - start + 1)
            runs.append(o - previous - 1)
            start = o
        previous = o
    assert start is not None
    runs.append(previous - start + 1)
    return runs


def _encoded_len(payload: int) -> int:
    """The length of ``PREFIX + base64url(payload bytes)``, unpadded."""
    return len(PREFIX) + (4 * payload + 2) // 3


def _run_length(base: int, span: int, runs: list[int], limit: int | None) -> str | None:
    # every varint is at least one byte: give up early on what cannot fit
    if limit is not None and _encoded_len(_HEADER + _CRC + 1 + len(runs)) > limit:
        return None
    body = bytearray()
    for run in runs:
        _put_varint(body, run)
    return _finish(base, RUN_LENGTH, span, body, limit)


def _bitmap(base: int, span: int, offsets: list[int], limit: int | None) -> str | None:
    size = (span + 7) // 8
    if limit is not None and _encoded_len(_HEADER + _CRC + 1 + size) > limit:
        return None  # before allocating: a span near 2**63 must not build its bitmap
    body = bytearray(size)
    first = base + 1
    for o in offsets:
        i = o - first
        body[i >> 3] |= 1 << (i & 7)
    return _finish(base, BITMAP, span, body, limit)


def _finish(base: int, layout: int, span: int, body: bytearray, limit: int | None) -> str | None:
    payload = bytearray((VERSION, layout))
    _put_varint(payload, span)
    payload += body
    payload += _crc(base, payload).to_bytes(4, "big")
    if limit is not None and _encoded_len(len(payload)) > limit:
        return None
    return PREFIX + base64.urlsafe_b64encode(bytes(payload)).rstrip(b"=").decode("ascii")


def _crc(base: int, data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data, zlib.crc32(base.to_bytes(8, "big")))


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


# -- decoding


def decode(base: int, metadata: str) -> frozenset[int]:
    """The done offsets above ``base`` that ``metadata`` (committed with ``base``) holds: all > ``base``.

    ``""`` gives an empty set; anything that is not what ``encode(base, ...)`` wrote raises
    ``OffsetMapError``."""
    if not metadata:
        return frozenset()
    if not 0 <= base <= MAX_OFFSET:
        raise OffsetMapError(f"base {base} is not a Kafka offset")
    if not metadata.startswith(PREFIX):
        raise OffsetMapError("not fastconsumer offset metadata (no 'fc:' prefix)")
    text = metadata[len(PREFIX) :]
    if not _B64.fullmatch(text) or len(text) % 4 == 1:
        raise OffsetMapError("offset metadata is not unpadded base64url")
    try:
        payload = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise OffsetMapError(f"offset metadata is not base64url: {exc}") from None
    if base64.urlsafe_b64encode(payload).rstrip(b"=").decode("ascii") != text:
        raise OffsetMapError("offset metadata is not canonical base64url")  # stray bits in the last char
    if len(payload) < _HEADER + 1 + _CRC:
        raise OffsetMapError(f"offset metadata too short ({len(payload)} bytes)")
    if payload[0] != VERSION:
        raise OffsetMapError(f"offset metadata of version {payload[0]}; this fastconsumer reads {VERSION}")
    data, crc = memoryview(payload)[:-_CRC], int.from_bytes(payload[-_CRC:], "big")
    if _crc(base, data) != crc:
        raise OffsetMapError("offset metadata fails its checksum (corrupt, truncated, or of another offset)")
    layout = data[1]
    span, pos = _get_varint(data, _HEADER)
    if span < 1 or base + span > MAX_OFFSET:
        raise OffsetMapError(f"offset metadata spans {span} offsets past {base}")
    if layout == RUN_LENGTH:
        return _decode_runs(base, span, data, pos)
    if layout == BITMAP:
        return _decode_bitmap(base, span, data[pos:])
    raise OffsetMapError(f"offset metadata of unknown layout {layout}")


def _decode_runs(base: int, span: int, data: memoryview, pos: int) -> frozenset[int]:
    out: list[int] = []
    offset = base + 1
    is_done = False
    first = True
    while pos < len(data):
        run, pos = _get_varint(data, pos)
        if run == 0 and not first:
            raise OffsetMapError("offset metadata holds an empty run")
        if offset + run - 1 > base + span:
            raise OffsetMapError("offset metadata's runs pass its span")
        if is_done:
            out.extend(range(offset, offset + run))
        offset += run
        is_done = not is_done
        first = False
    if offset != base + span + 1 or is_done:  # must end just past a done run that reaches the span
        raise OffsetMapError("offset metadata's runs do not add up to its span")
    return frozenset(out)


def _decode_bitmap(base: int, span: int, body: memoryview) -> frozenset[int]:
    if len(body) != (span + 7) // 8:
        raise OffsetMapError(f"offset metadata's bitmap holds {len(body)} bytes for a span of {span}")
    last = body[-1]
    if last >> ((span - 1) % 8) != 1:  # the span's bit set, none past it
        raise OffsetMapError("offset metadata's bitmap does not end at its span")
    out: list[int] = []
    offset = base + 1
    for byte in body:
        if byte:
            out.extend(offset + i for i in range(8) if byte >> i & 1)
        offset += 8
    return frozenset(out)


def _get_varint(data: memoryview, pos: int) -> tuple[int, int]:
    value = shift = 0
    for n in range(10):
        if pos >= len(data):
            raise OffsetMapError("offset metadata ends inside a number")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            if byte == 0 and n > 0:
                raise OffsetMapError("offset metadata holds a number with redundant bytes")
            return value, pos
    raise OffsetMapError("offset metadata holds a number longer than 10 bytes")
