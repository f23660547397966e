"""Bounded statistics: fixed memory whatever the sample count, percentiles within 1% of numpy's."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from streamer import stats as stats_module
from streamer.stats import Histogram, LatencyStats, StageTimes, across_repeats, summarize

N = 10**6


@pytest.fixture(scope="module")
def latencies() -> np.ndarray:
    """A million frame latencies in seconds: lognormal around 30 ms with a long tail, some exact zeros."""
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=np.log(0.03), sigma=0.6, size=N)
    values[rng.integers(0, N, 1000)] = 0.0  # a coarse timer can read 0
    return values


def _check(h: Histogram, values: np.ndarray) -> None:
    assert h.count == values.size
    assert h.mean == pytest.approx(float(values.mean()), rel=1e-9)
    assert h.std == pytest.approx(float(values.std(ddof=1)), rel=1e-6)
    assert (h.min, h.max) == (float(values.min()), float(values.max()))
    for q in (1, 10, 50, 90, 95, 99, 99.9):
        expected = float(np.percentile(values, q))
        assert h.percentile(q) == pytest.approx(expected, rel=Histogram.relative_error + 1e-4), q


def test_a_million_samples_one_at_a_time_in_fixed_memory(latencies: np.ndarray) -> None:
    h = Histogram()
    size = h.nbytes
    values = latencies.tolist()
    for v in values[:1000]:
        h.add(v)
    # Count only memory allocated by stats.py itself: tracemalloc sees every thread, and a
    # thread another test left winding down (a server, a pipeline) is not the histogram growing.
    only_stats = [tracemalloc.Filter(True, stats_module.__file__)]
    tracemalloc.start()
    before = tracemalloc.take_snapshot().filter_traces(only_stats)
    for v in values[1000:]:
        h.add(v)
    after = tracemalloc.take_snapshot().filter_traces(only_stats)
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert h.nbytes == size < 16 * 1024
    assert grown < 4096, f"the histogram grew {grown} bytes over {N} samples"
    _check(h, latencies)


def test_bulk_adds_and_merges_give_the_same_figures(latencies: np.ndarray) -> None:
    whole = Histogram()
    whole.add_many(latencies)
    _check(whole, latencies)
    parts = [Histogram() for _ in range(4)]
    for part, chunk in zip(parts, np.array_split(latencies, 4)):
        part.add_many(chunk)
    pooled = Histogram()
    for part in parts:
        pooled.merge(part)
    _check(pooled, latencies)
    assert across_repeats(parts)["p95"] == pytest.approx(whole.percentile(95))
    assert across_repeats(parts)["repeats"] == 4


def test_stage_times_and_latency_stats_stay_the_same_size(latencies: np.ndarray) -> None:
    times = StageTimes()
    for v in latencies[:1000]:
        times.add("inference", float(v) * 4, count=4)  # a batch of 4 is split evenly
    size = sum(h.nbytes for h in times.stages.values())
    for v in latencies[1000:100_000]:
        times.add("inference", float(v) * 4, count=4)
    assert sum(h.nbytes for h in times.stages.values()) == size
    summary = times.summary()["inference"]
    assert summary["count"] == 4 * 100_000
    assert summary["mean_ms"] == pytest.approx(float(latencies[:100_000].mean()) * 1000.0, rel=1e-9)
    stats = LatencyStats.of(times.stages["inference"])
    assert stats is not None and stats.p50_ms <= stats.p95_ms <= stats.p99_ms <= stats.max_ms


def test_empty_and_plain_lists() -> None:
    assert Histogram().percentile(50) is None and Histogram().mean is None and Histogram().std is None
    assert summarize(Histogram())["n"] == 0
    one = Histogram()
    one.add(0.25)
    assert one.percentile(0) == one.percentile(100) == 0.25  # clamped to the exact min and max
    assert summarize([1.0, 2.0, 3.0, 4.0])["p50"] == 2.5  # plain lists keep numpy's interpolation
