"""A latency histogram cheap enough to observe per message: a bisect and two additions, no lock.

Observed on one thread (the event loop, or the Kafka thread); read from another (a metrics scrape), which
sees a count that may trail the buckets by the observation in progress: the snapshot sums the buckets so
that its count and its +Inf bucket always agree, as Prometheus requires.
"""

from __future__ import annotations

from bisect import bisect_left

# seconds: 100 µs to 30 s
DEFAULT_BOUNDS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = DEFAULT_BOUNDS) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    @property
    def count(self) -> int:
        return sum(self.counts)

    def snapshot(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative ``(upper bound, count)`` pairs ending with ``("+Inf", count)``, and the sum."""
        counts = list(self.counts)
        total = self.sum
        out = []
        running = 0
        for bound, n in zip((*(repr(float(b)) for b in self.bounds), "+Inf"), counts, strict=True):
            running += n
            out.append((bound, running))
        return out, total
