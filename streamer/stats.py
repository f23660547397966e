"""Timing statistics in fixed memory: a log-bucket histogram, per-stage times, latency, FPS.

A camera runs for days, so nothing here keeps one entry per frame.
:class:`Histogram` keeps exact count, mean, standard deviation, min and max,
and percentiles from logarithmic buckets (the DDSketch / HdrHistogram idea):
bucket ``i`` holds values in ``(g**(i-1), g**i]`` with ``g = (1+a)/(1-a)``, and
reports ``2*g**i/(g+1)``, which is within ``a`` (1%) of every value in it.  The
buckets cover 1 ns to 1e5 s in about 1,600 int64 counters (13 KB) whatever the
number of samples; histograms of the same kind merge by adding counts, so the
bench pools the frames of several runs without keeping them.

(``hdrhistogram`` on PyPI does the same over integers in a preset range; for
float seconds that span nanoseconds to minutes this ~70-line class is simpler
than choosing a unit and range per metric.)

The sequence helpers at the end (``summarize``, ``across_repeats``,
``interval_rate``, ``intervals``) serve the bench's tables: percentiles of a
plain list are numpy's (linear interpolation); those of a histogram are the
bucket estimates above.  ``std`` is the sample standard deviation (ddof=1),
None for fewer than two values rather than a misleading 0.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

import numpy as np

STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "write")

_ALPHA = 0.01
_GAMMA = (1 + _ALPHA) / (1 - _ALPHA)
_LOG_GAMMA = math.log(_GAMMA)
_LOWEST = 1e-9
_HIGHEST = 1e5
_OFFSET = math.ceil(math.log(_LOWEST) / _LOG_GAMMA)
_BUCKETS = math.ceil(math.log(_HIGHEST) / _LOG_GAMMA) - _OFFSET + 1


class Histogram:
    """Count, mean, std, min, max and percentiles of non-negative values, in fixed memory (not thread-safe)."""

    relative_error = _ALPHA

    def __init__(self) -> None:
        self.counts = np.zeros(_BUCKETS, dtype=np.int64)
        self.zeros = 0
        """Values <= 0 (a timer can read 0); they count as 0 in every figure."""
        self.count = 0
        self._mean = 0.0
        self._m2 = 0.0
        self.min = math.inf
        self.max = -math.inf

    @staticmethod
    def _index(value: float) -> int:
        return min(max(math.ceil(math.log(value) / _LOG_GAMMA) - _OFFSET, 0), _BUCKETS - 1)

    def add(self, value: float, count: int = 1) -> None:
        """Record ``value`` ``count`` times."""
        if count <= 0:
            return
        value = float(value)
        if value > 0:
            self.counts[self._index(value)] += count
        else:
            value = 0.0
            self.zeros += count
        # Chan et al.'s update of mean and sum of squares for ``count`` equal values.
        total = self.count + count
        delta = value - self._mean
        self._mean += delta * count / total
        self._m2 += delta * delta * self.count * count / total
        self.count = total
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def add_many(self, values: Iterable[float] | np.ndarray) -> None:
        arr = np.asarray(values if isinstance(values, np.ndarray) else list(values), dtype=np.float64).ravel()
        if arr.size:
            self.merge(_histogram_of(arr))

    def merge(self, other: "Histogram") -> "Histogram":
        """Add ``other``'s samples to this one (in place); returns self."""
        if other.count == 0:
            return self
        total = self.count + other.count
        delta = other._mean - self._mean
        self._mean += delta * other.count / total
        self._m2 += other._m2 + delta * delta * self.count * other.count / total
        self.count = total
        self.counts += other.counts
        self.zeros += other.zeros
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def copy(self) -> "Histogram":
        return Histogram().merge(self)

    @property
    def mean(self) -> float | None:
        return self._mean if self.count else None

    @property
    def std(self) -> float | None:
        return math.sqrt(max(self._m2, 0.0) / (self.count - 1)) if self.count >= 2 else None

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0..100): the bucket holding rank ``q/100*(n-1)``, within 1%."""
        if not self.count:
            return None
        rank = q / 100.0 * (self.count - 1)
        if rank < self.zeros:
            return 0.0
        cumulative = np.cumsum(self.counts)
        i = int(np.searchsorted(cumulative, rank - self.zeros, side="right"))
        i = min(i, _BUCKETS - 1)
        estimate = 2.0 * _GAMMA ** (i + _OFFSET) / (_GAMMA + 1.0)
        return min(max(estimate, self.min), self.max)

    @property
    def nbytes(self) -> int:
        return int(self.counts.nbytes)


def _histogram_of(arr: np.ndarray) -> Histogram:
    h = Histogram()
    if not arr.size:
        return h
    positive = arr[arr > 0]
    h.zeros = int(arr.size - positive.size)
    if positive.size:
        idx = np.clip(np.ceil(np.log(positive) / _LOG_GAMMA) - _OFFSET, 0, _BUCKETS - 1).astype(np.int64)
        h.counts += np.bincount(idx, minlength=_BUCKETS)
    values = np.where(arr > 0, arr, 0.0)
    h.count = int(arr.size)
    h._mean = float(values.mean())
    h._m2 = float(((values - h._mean) ** 2).sum())
    h.min, h.max = float(values.min()), float(values.max())
    return h


class FpsMeter:
    """FPS over a sliding window of timestamps, counting intervals (not samples)."""

    def __init__(self, window: int = 30) -> None:
        self._times: deque[float] = deque(maxlen=window + 1)

    def tick(self, t: float) -> None:
        self._times.append(t)

    @property
    def fps(self) -> float | None:
        if len(self._times) < 2:
            return None
        span = self._times[-1] - self._times[0]
        return (len(self._times) - 1) / span if span > 0 else None


class StageTimes:
    """Per-frame seconds for each pipeline stage, one :class:`Histogram` each; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.stages: dict[str, Histogram] = {stage: Histogram() for stage in STAGES}

    def add(self, stage: str, seconds: float, count: int = 1) -> None:
        """Record ``seconds`` spent on ``count`` frames (a batch is split evenly)."""
        with self._lock:
            histogram = self.stages.get(stage)
            if histogram is None:  # not setdefault(stage, Histogram()): that built (and threw away) one per call
                histogram = self.stages[stage] = Histogram()
            histogram.add(seconds / max(count, 1), count)

    def merge(self, stage: str, histogram: Histogram) -> None:
        """Add another collector's samples for ``stage`` (e.g. a sink timing its own writes)."""
        with self._lock:
            mine = self.stages.get(stage)
            if mine is None:
                mine = self.stages[stage] = Histogram()
            mine.merge(histogram)

    def snapshot(self) -> dict[str, Histogram]:
        """A copy of every non-empty stage's histogram (seconds)."""
        with self._lock:
            return {stage: h.copy() for stage, h in self.stages.items() if h.count}

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        for stage, h in self.snapshot().items():
            out[stage] = {
                "mean_ms": float(h.mean or 0.0) * 1000.0,
                "p50_ms": float(h.percentile(50) or 0.0) * 1000.0,
                "p95_ms": float(h.percentile(95) or 0.0) * 1000.0,
                "count": float(h.count),
            }
        return out


@dataclass
class LatencyStats:
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: "Sequence[float] | Histogram") -> "LatencyStats | None":
        h = seconds if isinstance(seconds, Histogram) else _histogram_of(np.asarray(seconds, dtype=np.float64))
        if not h.count:
            return None
        ms = [float(v or 0.0) * 1000.0 for v in (h.mean, h.percentile(50), h.percentile(95), h.percentile(99), h.max)]
        return cls(*ms)


# -- the bench's tables ---------------------------------------------------------------------------
Stats = dict[str, "float | int | str | None"]
Samples = Union[Sequence[float], Histogram]


def summarize(values: "Iterable[float] | Histogram") -> Stats:
    """mean, std, min, p50, p95, p99, max and n of ``values`` (in their own unit)."""
    if isinstance(values, Histogram):
        if not values.count:
            return summarize([])
        return {
            "mean": values.mean, "std": values.std, "min": values.min,
            "p50": values.percentile(50), "p95": values.percentile(95), "p99": values.percentile(99),
            "max": values.max, "n": values.count,
        }  # fmt: skip
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return {"mean": None, "std": None, "min": None, "p50": None, "p95": None, "p99": None, "max": None, "n": 0}
    return {
        "mean": float(arr.mean()),
        "std": float(arr.std(ddof=1)) if arr.size >= 2 else None,
        "min": float(arr.min()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "max": float(arr.max()),
        "n": int(arr.size),
    }


def across_repeats(per_repeat: Sequence[Samples]) -> Stats:
    """Pool the samples of every repeat for the percentiles; mean and std are of the repeats' means.

    So ``std`` answers "how much does the result move from one run to the next",
    which is what a reader comparing two rows needs, and the percentiles describe
    single frames.  Repeats are lists of values, or histograms (pooled by merging).
    """
    if per_repeat and all(isinstance(rep, Histogram) for rep in per_repeat):
        pooled = Histogram()
        for rep in per_repeat:
            pooled.merge(rep)  # type: ignore[arg-type]
        out = summarize(pooled)
        means = [float(rep.mean) for rep in per_repeat if isinstance(rep, Histogram) and rep.mean is not None]
    else:
        out = summarize([float(v) for rep in per_repeat for v in _values(rep)])
        means = [float(np.mean(_values(rep))) for rep in per_repeat if len(_values(rep))]
    out["std"] = float(np.std(means, ddof=1)) if len(means) >= 2 else None
    out["repeats"] = len(means)
    out["std_of"] = "repeat means"
    return out


def _values(rep: Samples) -> Sequence[float]:
    if isinstance(rep, Histogram):
        raise TypeError("across_repeats: mix of histograms and value lists")
    return rep


def interval_rate(timestamps: Sequence[float]) -> float | None:
    """Events per second from event timestamps: intervals, not samples ((n-1)/span)."""
    if len(timestamps) < 2:
        return None
    span = timestamps[-1] - timestamps[0]
    return (len(timestamps) - 1) / span if span > 0 else None


def intervals(timestamps: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(timestamps, timestamps[1:])]
