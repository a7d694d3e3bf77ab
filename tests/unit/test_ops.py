"""The operator's summary helpers: histogram quantiles and the events/s sampler."""

from __future__ import annotations

import doctest
import math

from prometheus_client import CollectorRegistry, Histogram

from serving import ops


def test_doctests() -> None:
    assert doctest.testmod(ops).failed == 0


def test_latency_percentiles_read_a_prometheus_histogram() -> None:
    registry = CollectorRegistry()
    h = Histogram(ops.LATENCY_METRIC, "test", ["route"], registry=registry,
                  buckets=(0.001, 0.01, 0.1, 1.0))
    for _ in range(90):
        h.labels("related").observe(0.0005)  # 90 fast answers
    for _ in range(10):
        h.labels("related").observe(0.05)  # 10 slow ones
    h.labels("profile")  # a route with no requests is left out
    out = ops.latency_percentiles(registry.collect())
    assert list(out) == ["related"]
    related = out["related"]
    assert related["count"] == 100
    assert related["p50_ms"] <= 1.0  # in the first bucket
    assert 10.0 < related["p99_ms"] <= 100.0  # in the (10 ms, 100 ms] bucket


def test_quantile_in_the_overflow_bucket_is_the_largest_bound() -> None:
    assert ops.histogram_quantile([(0.5, 1), (math.inf, 10)], 0.9) == 0.5


def test_rate_restarts_when_the_counter_goes_back() -> None:
    sampler = ops.RateSampler(window_s=60)
    sampler.add(0, 1000)
    assert sampler.add(10, 2000) == 100.0
    assert sampler.add(20, 50) is None  # a rebuild reset the counter: no negative rate
    assert sampler.add(30, 250) == 20.0
