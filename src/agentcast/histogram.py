"""A Prometheus histogram for the event loop's hot path.

``prometheus_client.Histogram.observe`` takes two locks and scans its buckets
linearly: a few microseconds, paid per delivered event and per appended event
— as much as some whole steps of the delivery path. The histograms observed
there are only ever observed on the event loop, so they need no lock: a
bisect and two additions. :class:`LoopHistogram` is that, registered as a
custom collector so ``/metrics`` shows the same ``_bucket``/``_count``/``_sum``
series a ``Histogram`` would.

A scrape from another thread reads a copy of the counts taken in one step
(atomic under the GIL), so ``_count`` always equals the ``+Inf`` bucket; the
``_sum`` may include an observation more or less than the buckets.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import pairwise

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

__all__ = ["LoopHistogram"]

#: How prometheus_client writes a bucket bound (``0.005``, ``1.0``), so the
#: ``le`` labels are exactly a ``Histogram``'s. Untyped upstream.
_bound_label: Callable[[float], str] = floatToGoString


class LoopHistogram(Collector):
    """An unlabelled histogram observed from one thread (the event loop), lock-free.

    Args:
        name: The metric name (``_bucket``, ``_count``, ``_sum`` are added).
        documentation: The help text.
        buckets: Upper bounds, increasing; ``+Inf`` is implied.
        registry: Where to register it.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        bounds = tuple(float(b) for b in buckets)
        if not bounds or any(b >= c for b, c in pairwise(bounds)):
            raise ValueError("buckets must be a non-empty increasing sequence")
        self.name = name
        self.documentation = documentation
        self._bounds = bounds
        self._labels = (*(_bound_label(b) for b in bounds), "+Inf")
        self._counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self._sum = 0.0
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count one observation (``le`` buckets: a value equal to a bound is in it)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        """Count several observations at once."""
        counts, bounds = self._counts, self._bounds
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self._sum += total

    @property
    def count(self) -> int:
        """Observations so far."""
        return sum(self._counts)

    @property
    def sum(self) -> float:
        """The sum of the observations so far."""
        return self._sum

    def collect(self) -> Iterator[Metric]:
        """The cumulative buckets, count and sum, as a ``Histogram`` exposes them."""
        counts = list(self._counts)  # one step: consistent buckets and count
        total = self._sum
        family = HistogramMetricFamily(self.name, self.documentation)
        cumulative: list[tuple[str, float]] = []
        running = 0
        for label, n in zip(self._labels, counts, strict=True):
            running += n
            cumulative.append((label, float(running)))
        family.add_metric([], cumulative, total)
        yield family

    def describe(self) -> Iterator[Metric]:
        """The metric's name and type, for the registry's duplicate check."""
        yield HistogramMetricFamily(self.name, self.documentation)
