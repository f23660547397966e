"""Running ``streamer`` in a child process: environment, live output, resource samples, checks."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import helpers
from helpers import TESTS
from helpers import streamer_cmd as streamer  # noqa: F401 - re-exported
MODEL_ARGS = ("--model", "efficientnet_lite0")
"""The one model whose ImageNet weights ship with a package (no download)."""


def cli_env(**extra: str) -> dict[str, str]:
    """:func:`helpers.cli_env` with tests/ importable as well (for ``faults`` and ``helpers``, which
    ``python -m faults.fakecli`` imports): no display, the private cache folders the session set,
    OpenCV's and FFmpeg's log levels unset, and ``extra``."""
    return helpers.cli_env(importable=[TESTS], **extra)


def fake_streamer(backend: str, *args: str | Path) -> list[str]:
    """``streamer ARGS`` with the backend replaced (see :mod:`faults.fakecli`)."""
    return [sys.executable, "-m", "faults.fakecli", backend, *map(str, args)]


def run(cmd: Sequence[str], cwd: Path, timeout: float = 120.0, env: dict[str, str] | None = None, **popen: Any) -> subprocess.CompletedProcess[str]:
    """Run to completion; a child still running after ``timeout`` is killed and fails the test as a hang."""
    try:
        return subprocess.run(
            list(cmd), cwd=cwd, env=env or cli_env(), capture_output=True, text=True, timeout=timeout, **popen
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"hang: {' '.join(map(str, cmd))} still running after {timeout} s\nstderr: {exc.stderr!r}") from None


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "error" in line.lower()]


class RunResult(Protocol):
    """What a finished ``streamer`` run leaves: a CompletedProcess, an in-process run, a LiveProcess."""

    @property
    def returncode(self) -> int | None: ...

    @property
    def stdout(self) -> str: ...

    @property
    def stderr(self) -> str: ...


def assert_one_clear_line(result: RunResult) -> str:
    """Failed (exit > 0, not a signal), no traceback, exactly one line saying ``error``: returns it."""
    assert result.returncode is not None and result.returncode > 0, f"expected a clean failure, got exit {result.returncode}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = error_lines(result.stderr)
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n{result.stderr}"
    assert lines[0].startswith("streamer: "), lines[0]
    return lines[0]


@dataclass
class Line:
    text: str
    at: float
    """``time.monotonic()`` when the line arrived."""


@dataclass
class LiveProcess:
    """A child whose stdout and stderr lines are collected as they come, with arrival times."""

    cmd: Sequence[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=cli_env)
    proc: subprocess.Popen[str] | None = None
    out: list[Line] = field(default_factory=list)
    err: list[Line] = field(default_factory=list)
    started_at: float = 0.0
    ended_at: float | None = None

    def start(self) -> "LiveProcess":
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            list(self.cmd), cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
        )
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._pump, args=(stream, sink), daemon=True).start()
        return self

    @staticmethod
    def _pump(stream: Any, sink: list[Line]) -> None:
        for text in iter(stream.readline, ""):
            sink.append(Line(text.rstrip("\n"), time.monotonic()))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.returncode

    @property
    def stderr(self) -> str:
        return "\n".join(line.text for line in self.err)

    @property
    def stdout(self) -> str:
        return "\n".join(line.text for line in self.out)

    def wait_for_line(self, needle: str, timeout: float, stream: str = "err") -> Line:
        lines = self.err if stream == "err" else self.out
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(lines):
                if needle in line.text:
                    return line
            if self.poll() is not None:
                time.sleep(0.2)  # let the readers finish
                for line in list(lines):
                    if needle in line.text:
                        return line
                raise AssertionError(f"exited ({self.returncode}) before printing {needle!r}:\n{self.stderr}")
            time.sleep(0.02)
        raise AssertionError(f"no {needle!r} within {timeout} s; stderr so far:\n{self.stderr}")

    def poll(self) -> int | None:
        assert self.proc is not None
        code = self.proc.poll()
        if code is not None and self.ended_at is None:
            self.ended_at = time.monotonic()
        return code

    def wait(self, timeout: float) -> int:
        """Exit code; kills the child and fails the test as a hang after ``timeout``."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.poll()
            if code is not None:
                time.sleep(0.1)  # the readers drain the pipes
                return code
            time.sleep(0.01)
        self.kill()
        raise AssertionError(f"hang: {' '.join(map(str, self.cmd))} still running after {timeout} s\nstderr:\n{self.stderr}")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def __enter__(self) -> "LiveProcess":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"{what}: not reached within {timeout} s")


@dataclass
class Sample:
    at: float
    rss: int
    threads: int


class ResourceSampler:
    """Samples a process's resident memory and thread count (psutil) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="resource-sampler")

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                with self.process.oneshot():
                    self.samples.append(Sample(time.monotonic(), self.process.memory_info().rss, self.process.num_threads()))
            except psutil.Error:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "ResourceSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def between(self, start: float, end: float) -> list[Sample]:
        return [s for s in self.samples if start <= s.at <= end]


def call_with_deadline(fn: Callable[[], Any], deadline_s: float) -> Any:
    """``fn()`` on a helper thread; a call still running after ``deadline_s`` fails the test as a hang
    (instead of hanging the suite).  Exceptions are re-raised here."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name="deadline-call")
    thread.start()
    thread.join(deadline_s)
    assert not thread.is_alive(), f"hang: still running after {deadline_s} s"
    error = box.get("error")
    if isinstance(error, BaseException):
        raise error
    return box.get("result")
