"""What a run has done so far, as one object: the engine writes it, metrics and progress read it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from fastconsumer.histogram import Histogram

Partition = tuple[str, int]


@dataclass(eq=False, slots=True)
class Stats:
    """Counters of one run. Written on the consumer's event loop; plain reads from other threads see
    values at most one update old."""

    consumed: int = 0  # fetched from the source
    handled: int = 0  # handler finished, or the error policy let them pass
    failed: int = 0  # handler failed after its last retry
    retried: int = 0
    skipped: int = 0
    dead_lettered: int = 0
    released: int = 0  # given back to a share group by the error policy (on_error="release")
    abandoned: int = 0  # running when a stop stopped waiting for them
    in_flight: int = 0  # handed to a handler and not finished
    lookahead: int = 0  # messages the engine may hold now, buffered and in flight (engine/lookahead.py)
    paused: int = 0  # partitions paused for holding their share of the look-ahead
    commit_failures: int = 0
    metadata_dropped: int = 0  # commits whose handled-offsets metadata did not fit offset.metadata.max.bytes
    already_done: int = 0  # fetched messages skipped: a commit's metadata said they were handled
    #: The offset each partition's group offset was last committed at, from successful commits only.
    committed: dict[Partition, int] = field(default_factory=dict)
    #: Handler call durations (per batch for batch handlers); None unless asked for before the run starts.
    handler_seconds: Histogram | None = None


@dataclass
class Summary:
    """What a run did; ``committed`` is what the group's offsets were left at."""

    source: str
    core: str
    consumed: int
    handled: int
    failed: int
    retried: int
    skipped: int
    dead_lettered: int
    abandoned: int
    commit_failures: int
    committed: list[dict[str, Any]] = field(default_factory=list)
    elapsed_s: float = 0.0
    rate: float = 0.0
    error: str | None = None
    released: int = 0
    #: A share group's per-record acknowledgements (``SourceStats.acks``); None for the other sources.
    acknowledged: dict[str, int] | None = None

    @classmethod
    def of(
        cls,
        stats: Stats,
        *,
        source: str,
        core: str,
        elapsed: float,
        error: BaseException | None,
        acks: dict[str, int] | None = None,
    ) -> Summary:
        return cls(
            source=source,
            core=core,
            consumed=stats.consumed,
            handled=stats.handled,
            failed=stats.failed,
            retried=stats.retried,
            skipped=stats.skipped,
            dead_lettered=stats.dead_lettered,
            abandoned=stats.abandoned,
            commit_failures=stats.commit_failures,
            committed=[
                {"topic": t, "partition": p, "offset": o} for (t, p), o in sorted(stats.committed.items())
            ],
            elapsed_s=round(elapsed, 3),
            rate=round(stats.handled / elapsed, 1) if elapsed > 0 else 0.0,
            error=str(error) if error is not None else None,
            released=stats.released,
            acknowledged=dict(acks) if acks else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
