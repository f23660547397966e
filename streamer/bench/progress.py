"""Progress on stderr: a rich progress bar on a terminal, one line per job otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class BenchProgress:
    """Two bars: jobs done out of all, and the phase of the current job."""

    def __init__(self, total_jobs: int, enabled: bool = True) -> None:
        self.total = total_jobs
        self.enabled = enabled
        self._rich: Any = None
        self._jobs_task: Any = None
        self._phase_task: Any = None
        self._label = ""
        self._t0 = time.perf_counter()
        self._job_t0 = self._t0
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    def __enter__(self) -> BenchProgress:
        if self._rich is not None:
            self._rich.start()
            self._jobs_task = self._rich.add_task("bench", total=self.total)
            self._phase_task = self._rich.add_task("", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()

    def start_job(self, index: int, label: str) -> None:
        self._label = label
        self._job_t0 = time.perf_counter()
        if self._rich is not None:
            self._rich.update(self._jobs_task, description=f"[{index + 1}/{self.total}] {label}")
            self._rich.reset(self._phase_task, description="  starting", total=None)
        elif self.enabled:
            print(f"bench: [{index + 1}/{self.total}] {label} ...", file=sys.stderr, flush=True)

    def step(self, phase: str, done: int, total: int) -> None:
        if self._rich is not None:
            self._rich.update(self._phase_task, description=f"  {phase}", completed=done, total=total or None)

    def end_job(self, status: str, reason: str | None) -> None:
        seconds = time.perf_counter() - self._job_t0
        text = f"{self._label}: {status}" + (f" ({reason})" if reason and status != "ok" else "") + f" in {seconds:.0f} s"
        if self._rich is not None:
            self._rich.advance(self._jobs_task)
            self._rich.console.print(f"bench: {text}")
        elif self.enabled:
            print(f"bench: {text}", file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self._rich is not None:
            self._rich.console.print(f"bench: {text}")
        elif self.enabled:
            print(f"bench: {text}", file=sys.stderr, flush=True)
