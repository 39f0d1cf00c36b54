"""LoopHistogram: the same exposition as prometheus_client's Histogram, without locks."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from agentcast.histogram import LoopHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)
VALUES = [0.0, 0.0005, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 3.0, 42.0]


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


def test_exposes_what_a_prometheus_histogram_exposes() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    fast = LoopHistogram("x_seconds", "doc", BUCKETS, ours)
    reference = Histogram("x_seconds", "doc", buckets=BUCKETS, registry=theirs)
    for v in VALUES[:5]:
        fast.observe(v)
    fast.observe_many(VALUES[5:])
    for v in VALUES:
        reference.observe(v)
    assert _samples(ours) == _samples(theirs)
    assert fast.count == len(VALUES)
    assert fast.sum == pytest.approx(sum(VALUES))
    text = generate_latest(ours).decode()
    assert 'x_seconds_bucket{le="0.001"} 3.0' in text  # le: a value equal to a bound is in it
    assert 'x_seconds_bucket{le="+Inf"} 11.0' in text
    assert "x_seconds_count 11.0" in text


def test_a_second_metric_of_the_same_name_is_refused() -> None:
    registry = CollectorRegistry()
    LoopHistogram("dup_seconds", "doc", BUCKETS, registry)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopHistogram("dup_seconds", "doc", BUCKETS, registry)


@pytest.mark.parametrize("buckets", [(), (1.0, 1.0), (2.0, 1.0)])
def test_buckets_must_increase(buckets: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogram("bad_seconds", "doc", buckets, CollectorRegistry())
