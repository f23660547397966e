"""Timing helpers: per-stage timings and an interval-based FPS meter."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

STAGES = ("decode", "preprocess", "inference", "postprocess", "render", "write")


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
    """Collects per-frame seconds for each pipeline stage; thread-safe appends."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.samples: dict[str, list[float]] = {stage: [] for stage in STAGES}

    def add(self, stage: str, seconds: float, count: int = 1) -> None:
        """Record ``seconds`` spent on ``count`` frames (a batch is split evenly)."""
        per = seconds / max(count, 1)
        with self._lock:
            self.samples.setdefault(stage, []).extend([per] * count)

    def summary(self) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {}
        with self._lock:
            for stage, values in self.samples.items():
                if values:
                    arr = np.asarray(values) * 1000.0
                    out[stage] = {
                        "mean_ms": float(arr.mean()),
                        "p50_ms": float(np.percentile(arr, 50)),
                        "p95_ms": float(np.percentile(arr, 95)),
                        "count": float(arr.size),
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
    def of(cls, seconds: list[float]) -> "LatencyStats | None":
        if not seconds:
            return None
        arr = np.asarray(seconds) * 1000.0
        return cls(
            float(arr.mean()),
            float(np.percentile(arr, 50)),
            float(np.percentile(arr, 95)),
            float(np.percentile(arr, 99)),
            float(arr.max()),
        )
