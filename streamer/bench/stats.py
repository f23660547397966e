"""Summary statistics for timings: one place, so every table means the same thing.

Percentiles use numpy's default (linear interpolation).  ``std`` is the sample
standard deviation (ddof=1); it is None for fewer than two values rather than
a misleading 0.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np


Stats = dict[str, "float | int | str | None"]


def summarize(values: Iterable[float]) -> Stats:
    """mean, std, min, p50, p95, p99, max and n of ``values`` (in their own unit)."""
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


def across_repeats(per_repeat: Sequence[Sequence[float]]) -> Stats:
    """Pool the samples of every repeat for the percentiles; mean and std are of the repeats' means.

    So ``std`` answers "how much does the result move from one run to the next",
    which is what a reader comparing two rows needs, and the percentiles describe
    single frames.
    """
    pooled = [v for rep in per_repeat for v in rep]
    out = summarize(pooled)
    means = [float(np.mean(rep)) for rep in per_repeat if len(rep)]
    out["std"] = float(np.std(means, ddof=1)) if len(means) >= 2 else None
    out["repeats"] = len(means)
    out["std_of"] = "repeat means"
    return out


def rate(count: int, seconds: float) -> float | None:
    """Items per second of a batch job timed from before the first item to after the last."""
    return count / seconds if seconds > 0 and count > 0 else None


def interval_rate(timestamps: Sequence[float]) -> float | None:
    """Events per second from event timestamps: intervals, not samples ((n-1)/span)."""
    if len(timestamps) < 2:
        return None
    span = timestamps[-1] - timestamps[0]
    return (len(timestamps) - 1) / span if span > 0 else None


def intervals(timestamps: Sequence[float]) -> list[float]:
    return [b - a for a, b in zip(timestamps, timestamps[1:])]
