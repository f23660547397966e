"""Where a process's CPU goes, by thread role, and how long a thread waits for Python's GIL.

``bench --streams`` runs many threads in one process (per stream: capture,
batcher, render; one inference worker; the decoders' native threads).  To say
what bounds it, :class:`ThreadSampler` reads each thread's CPU time from
``/proc/self/task/TID/stat`` a few times a second and sums it by role (the
Python thread's name, or ``native`` for threads Python did not start: FFmpeg's
frame threads, CUDA's), and a probe thread measures how late a 1 ms sleep
wakes up: a sleep releases the GIL, and waking needs it back, so the lateness
is the wait for the GIL (plus the scheduler's ~0.1 ms), the number that grows
when Python code on many threads is the limit.

Linux only (``/proc``); elsewhere the sampler reports nothing.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from streamer.stats import Histogram

_TASKS = Path("/proc/self/task")


def role_of(name: str) -> str:
    """A thread's role from its Python name (``stream-NAME`` renders, ``capture`` decodes, ...)."""
    if name.startswith("stream-"):
        return "render"
    if name == "capture":
        return "capture"
    if name == "batcher":
        return "batcher"
    if name == "inference":
        return "inference worker"
    if name == "MainThread":
        return "main"
    return "other Python"


def _cpu_s(tid: int, tick: float) -> float | None:
    try:
        text = (_TASKS / str(tid) / "stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) ": state is field 3
    return (int(fields[11]) + int(fields[12])) * tick  # utime, stime (fields 14 and 15)


@dataclass
class ThreadUse:
    """What a :class:`ThreadSampler` saw over one interval."""

    wall_s: float
    cores: dict[str, float] = field(default_factory=dict)
    """CPU seconds per wall second, per role (``render``, ``capture``, ``native``, ...)."""
    threads: dict[str, int] = field(default_factory=dict)
    """How many threads of each role were seen."""
    gil_wait_p50_ms: float | None = None
    gil_wait_p99_ms: float | None = None
    """How late a 1 ms sleep woke up (the wait for the GIL, plus the scheduler's)."""

    @property
    def total_cores(self) -> float:
        return sum(self.cores.values())


class ThreadSampler:
    """``with ThreadSampler() as sampler: ...``, then :attr:`result`."""

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.result: ThreadUse | None = None
        self._stop = threading.Event()
        self._tick = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._roles: dict[int, str] = {}
        self._lateness = Histogram()
        self._threads: list[threading.Thread] = []
        self._t0 = 0.0

    @property
    def available(self) -> bool:
        return _TASKS.is_dir()

    def _tids(self) -> list[int]:
        try:
            return [int(p.name) for p in _TASKS.iterdir()]
        except OSError:
            return []

    def _sample(self) -> None:
        python = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
        for tid in self._tids():
            cpu = _cpu_s(tid, self._tick)
            if cpu is None:
                continue
            if tid not in self._start:
                self._start[tid] = 0.0 if self._t0 else cpu  # a thread born during the run counts whole
            self._last[tid] = cpu
            if tid in python:
                self._roles[tid] = role_of(python[tid])
            else:
                self._roles.setdefault(tid, "native")

    def _sampling(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample()

    def _probing(self) -> None:
        while not self._stop.is_set():
            t0 = time.perf_counter()
            time.sleep(0.001)
            self._lateness.add(max(0.0, time.perf_counter() - t0 - 0.001))
            time.sleep(0.01)

    def __enter__(self) -> "ThreadSampler":
        if not self.available:
            return self
        self._sample()  # the threads already there: only what they spend from now on counts
        self._t0 = time.perf_counter()
        for target, name in ((self._sampling, "sampler"), (self._probing, "gil-probe")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.available:
            return
        self._stop.set()
        for thread in self._threads:
            thread.join()
        self._sample()
        wall = time.perf_counter() - self._t0
        own = {t.native_id for t in self._threads}
        cores: dict[str, float] = {}
        counts: dict[str, int] = {}
        for tid, last in self._last.items():
            if tid in own:
                continue
            role = self._roles.get(tid, "native")
            cores[role] = cores.get(role, 0.0) + (last - self._start.get(tid, last)) / wall if wall > 0 else 0.0
            counts[role] = counts.get(role, 0) + 1
        late = self._lateness
        self.result = ThreadUse(
            wall_s=wall,
            cores={k: round(v, 3) for k, v in sorted(cores.items(), key=lambda kv: -kv[1])},
            threads=counts,
            gil_wait_p50_ms=_ms(late.percentile(50)),
            gil_wait_p99_ms=_ms(late.percentile(99)),
        )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


__all__ = ["ThreadSampler", "ThreadUse", "role_of"]
